"""`deadrelu patch`: rewrite a model's ReLUs to LeakyReLU or PReLU, keeping every trained weight."""

from __future__ import annotations

import dataclasses

from deadrelu.commands._common import (
    EXIT_OK,
    INPUT_FILE,
    OUTPUT_FILE,
    load_from_args,
    number,
    output_model,
    report_from_args,
)
from deadrelu.commands._retrain import add_retrain_flags, check_retrain_flags, retrain_from_args, show_comparison

ORDER = 40


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "patch",
        parents=[parents["model"], parents["data"], parents["common"]],
        help="rewrite ReLUs to LeakyReLU or PReLU, keeping the weights",
        description="Rewrite the ReLU sites of MODEL to LeakyReLU or PReLU. Every trained weight is kept, and "
        "the output loads with plain keras.models.load_model. A self-check verifies that the same "
        "patch with slope 0 reproduces the original outputs (on --data, or synthetic inputs).",
    )
    parser.add_argument("--to", required=True, choices=("leaky", "prelu"), help="the new activation")
    parser.add_argument(
        "-o",
        "--output",
        type=output_model(lambda args: args.to),
        metavar="OUT",
        help="where to write (.keras, or .h5); default <model>_<to>.keras beside MODEL",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument(
        "--alpha", type=number, metavar="A", help="LeakyReLU negative slope (default 0.01, Maas et al. 2013)"
    )
    parser.add_argument(
        "--alpha-init", type=number, metavar="A", help="initial PReLU slope (default 0.25, He et al. 2015)"
    )
    parser.add_argument(
        "--prelu-shared-axes",
        choices=("channel", "none"),
        default="channel",
        help="one PReLU alpha per channel (default) or per element (none)",
    )
    parser.add_argument(
        "--only",
        choices=("all", "dead", "flagged"),
        default="all",
        help="rewrite every site (default), or only sites with dead units / flagged sites (needs --data or --report)",
    )
    parser.add_argument(
        "--report", type=INPUT_FILE, metavar="SCAN.json", help="a report of this model from 'deadrelu scan --json'"
    )
    parser.add_argument("--layers", metavar="REGEX", help="only sites whose path matches REGEX (re.search)")
    parser.add_argument(
        "--json", type=OUTPUT_FILE, metavar="PATH", help="write a JSON summary of the patch (and retraining) here"
    )
    add_retrain_flags(parser)
    return parser


@dataclasses.dataclass
class PatchRun:
    """What `make_patch` produced: the input, the patched model, and the evidence."""

    loaded: object  # deadrelu.loading.LoadedModel
    result: object  # deadrelu.patch.PatchResult
    check: object  # deadrelu.patch.SelfCheck
    report: object = None  # deadrelu.Report used for --only, if any
    output: str = ""
    comparison: object = None  # deadrelu.retrain.Comparison with --retrain


def run(args, output) -> int:
    check_retrain_flags(args)
    out_path = resolve_output(args)
    patched = make_patch(args, output, out_path)
    if not patched.result.changed:
        return nothing_patched(patched, output)
    if args.retrain:
        # The patched model is trained in place, so OUT holds the retrained model.
        patched.comparison = retrain_from_args(
            args, output, patched.loaded.model, {f"patched ({args.to})": patched.result.model}
        )
    save(patched, args, output)
    show(patched, args, output)
    if patched.comparison is not None:
        show_comparison(patched.comparison, args, output)
    return EXIT_OK


def resolve_output(args) -> str:
    """Checks the flags that need no model, and returns OUT: fails fast, before TensorFlow loads."""
    from deadrelu.errors import UsageError
    from deadrelu.saving import model_output_path

    if args.only != "all" and not (args.data or args.report):
        raise UsageError(
            f"--only {args.only} decides from a scan: pass --data x.npz (scanned first) "
            "or --report scan.json (from 'deadrelu scan --json')"
        )
    if args.alpha is not None and args.to != "leaky":
        raise UsageError("--alpha is the LeakyReLU slope; with --to prelu use --alpha-init")
    if args.alpha_init is not None and args.to != "prelu":
        raise UsageError("--alpha-init is the initial PReLU slope; with --to leaky use --alpha")
    return model_output_path(args.model, args.output, args.to, force=args.force)


def make_patch(args, output, out_path: str = "") -> PatchRun:
    """Loads MODEL, finds the report if --only needs one, patches and self-checks.

    Raises:
        SelfCheckError: The slope-0 patch does not reproduce the original outputs (exit 3).
    """
    from deadrelu.patcher import SelfCheckError, patch_model, patch_self_check

    loaded = load_from_args(args, output)
    # --only dead/flagged decide from a scan; --only all needs none unless a report is given.
    report = report_from_args(args, output, loaded) if args.report or args.only != "all" else None
    options = {
        "prelu_shared_axes": None if args.prelu_shared_axes == "none" else "channel",
        "only": args.only,
        "report": report,
        "layers": args.layers,
    }
    slopes = {"alpha": args.alpha} if args.alpha is not None else {}
    if args.alpha_init is not None:
        slopes["alpha_init"] = args.alpha_init
    result = patch_model(loaded.model, args.to, **slopes, **options)
    if not result.changed:
        return PatchRun(loaded=loaded, result=result, check=None, report=report, output=out_path)
    check = patch_self_check(
        loaded.model,
        args.data,
        to=args.to,
        batch_size=args.batch_size,
        samples=args.samples or 1024,
        synthetic_samples=args.samples or 256,
        rescale=args.rescale,
        **options,
    )
    if not check.passed:
        raise SelfCheckError(
            f"{check.describe()}, above the tolerance {check.tolerance:g}; "
            "the patch would change the model, so nothing was written"
        )
    return PatchRun(loaded=loaded, result=result, check=check, report=report, output=out_path)


def nothing_patched(patched: PatchRun, output) -> int:
    """No site was rewritten: say why and write nothing.

    Returns:
        0 when no site was selected (nothing to do).

    Raises:
        UnsupportedModelError: Sites were selected but none can be rewritten (exit 2).
    """
    from deadrelu.errors import UnsupportedModelError

    result = patched.result
    for note in result.notes:
        if not note.startswith("nothing patched"):
            output.note(note)
    if result.skipped:
        count = len(result.skipped)
        path, reason = next(iter(result.skipped.items()))
        which = f"none of the {count} selected sites can" if count > 1 else "the selected site cannot"
        first = f"{'e.g. ' if count > 1 else ''}{path} is {reason.removeprefix('it sits ')}"
        raise UnsupportedModelError(f"nothing patched: {which} be rewritten ({first}); nothing was written")
    output.out.print("nothing patched: no site selected; nothing was written", markup=False)
    return EXIT_OK


def save(patched: PatchRun, args, output) -> None:
    """Writes OUT (atomically) and the --json summary."""
    from deadrelu.saving import save_model

    notes: list[str] = []
    save_model(patched.result.model, patched.output, force=args.force, notes=notes)
    patched.result.notes.extend(notes)
    if args.json:
        from deadrelu.files import write_json

        write_json(args.json, summary_dict(patched))


def summary_dict(patched: PatchRun) -> dict:
    """The --json summary: input, output, settings, every rewrite and the self-check."""
    from deadrelu.report import tool_info

    loaded = patched.loaded
    return {
        "schema": "deadrelu/patch@1",
        "tool": tool_info(),
        "model": {"path": loaded.path, "name": loaded.model.name, "sha256": loaded.sha256, "format": loaded.format},
        "output": {"path": patched.output, "format": "keras" if patched.output.endswith(".keras") else "h5"},
        **patched.result.to_dict(),
        "self_check": patched.check.to_dict(),
        **({"retrain": patched.comparison.to_dict()} if patched.comparison is not None else {}),
    }


def show(patched: PatchRun, args, output) -> None:
    """The table of rewrites, the self-check line and where the files went."""
    from rich.table import Table
    from rich.text import Text

    result = patched.result
    if result.rewrites:
        with_report = any(r.dead is not None for r in result.rewrites)
        table = Table(
            title=f"{len(result.rewrites)} site{'s' if len(result.rewrites) != 1 else ''} "
            f"rewritten to {'LeakyReLU' if result.to == 'leaky' else 'PReLU'}"
        )
        table.add_column("site")
        table.add_column("kind")
        if with_report:
            table.add_column("dead", justify="right")
        table.add_column("old")
        table.add_column("new")
        for rewrite in result.rewrites:
            row = [rewrite.path, rewrite.kind]
            if with_report:
                row.append(f"{rewrite.dead}/{rewrite.units}" if rewrite.dead is not None else "")
            table.add_row(*(Text(cell) for cell in (*row, rewrite.old, rewrite.new)))
        output.out.print(table)
    if result.kept:
        shown = ", ".join(result.kept[:8]) + (", ..." if len(result.kept) > 8 else "")
        output.out.print(
            f"kept as they were: {len(result.kept)} site{'s' if len(result.kept) != 1 else ''} ({shown})", markup=False
        )
    for note in result.notes:
        output.note(note)
    output.out.print(patched.check.describe(), markup=False)
    output.out.print(f"wrote {patched.output}", markup=False)
    if args.json:
        output.note(f"wrote summary {args.json}", style="dim")
