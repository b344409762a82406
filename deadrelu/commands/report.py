"""`deadrelu report`: render a saved JSON report again — table, figures, HTML — or compare two reports."""

from __future__ import annotations

from deadrelu.commands._common import EXIT_OK, INPUT_FILE, OUTPUT_FILE, add_output_flags, add_plot_dir_flag, emit

ORDER = 30
USES_KERAS = False  # renders JSON: no model, no backend


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "report",
        parents=[parents["common"]],
        help="render a saved JSON report again, or compare two",
        description="Render a saved JSON report again (table, figures, a self-contained HTML page), or compare "
        "it with an earlier one (--compare) to see which units died and which recovered.",
    )
    parser.add_argument(
        "report", type=INPUT_FILE, metavar="REPORT.json", help="a report written by 'deadrelu scan --json'"
    )
    parser.add_argument(
        "--compare",
        type=INPUT_FILE,
        metavar="OLD.json",
        help="an earlier report (e.g. an earlier checkpoint): show newly dead and recovered units",
    )
    parser.add_argument("--html", type=OUTPUT_FILE, metavar="PATH", help="write one self-contained HTML report here")
    parser.add_argument(
        "--json",
        type=OUTPUT_FILE,
        metavar="PATH",
        help="with --compare: write the diff as JSON; otherwise write the report again",
    )
    add_output_flags(parser, json_flag=False)
    add_plot_dir_flag(parser)
    return parser


def run(args, output) -> int:
    from deadrelu.report import Report

    report = Report.from_json(args.report)
    if args.compare:
        return _compare(report, Report.from_json(args.compare), args, output)
    code = emit(report, args, output)
    if args.html:
        _write_html(report, args, output)
    return code


def _compare(report, old, args, output) -> int:
    """Prints (and writes) the diff of two reports; figures and HTML as requested."""
    import json
    import sys

    from deadrelu.compare import compare_reports
    from deadrelu.views.terminal import diff_markdown, diff_summary, diff_table

    diff = compare_reports(report, old)
    if args.json:
        diff.to_json(args.json)
    if args.plot:
        from deadrelu.views.plots import plot_diff

        plot_diff(diff, args.plot)
    if args.plot_dir:
        _write_plot_dir(report, args, output)
    if args.format == "json":
        sys.stdout.write(json.dumps(diff.to_dict(), indent=1) + "\n")
    elif args.format == "markdown":
        sys.stdout.write(diff_markdown(diff))
    else:
        output.out.print(diff_table(diff, limit=args.top))
        output.out.print(
            diff_summary(diff), style="bold red" if diff.summary["newly_dead"] else None, markup=False, highlight=False
        )
        output.out.print(diff.verdict, style="bold", markup=False, highlight=False)  # computed from the counts
    for note in diff.notes:
        output.note(note)
    if args.html:
        _write_html(report, args, output, diff=diff)
    for path, what in ((args.json, "diff"), (args.plot, "diff figure")):
        if path:
            output.note(f"wrote {what} {path}", style="dim")
    return EXIT_OK


def _write_plot_dir(report, args, output) -> None:
    from deadrelu.views.plots import plot_site_dir

    written = plot_site_dir(report, args.plot_dir)
    output.note(f"wrote {len(written)} figures into {args.plot_dir}", style="dim")


def _write_html(report, args, output, diff=None) -> None:
    import os

    from deadrelu.views.html import write_html

    # Two reports of one model (checkpoints) share its name: the page is titled by the files compared.
    title = f"{os.path.basename(args.report)} vs {os.path.basename(args.compare)}" if diff is not None else None
    write_html(report, args.html, diff=diff, title=title)
    output.note(f"wrote HTML report {args.html}", style="dim")
