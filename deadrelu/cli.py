"""The `deadrelu` command line.

Start-up stays light: argparse and the standard library only. TensorFlow is imported inside the
commands, after TensorFlow's own log noise has been routed away from the user's terminal.

Exit codes: 0 done; 1 done but `--fail-on` exceeded; 2 bad input (one line, no traceback);
3 internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Sequence

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"deadrelu: error: {message}; see '{self.prog} --help'\n")
        raise SystemExit(EXIT_INPUT)


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def _number(text: str) -> float:
    """A float, also written as a ratio such as 1/255."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.5 or 1/255, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def _shape(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape such as 28,28,1, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (no TensorFlow import)."""
    from deadrelu import __version__

    parser = _Parser(prog="deadrelu", description="Find, measure and fix dead ReLU units in Keras models.")
    parser.add_argument("--version", action="version", version=f"deadrelu {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    common.add_argument("--verbose", action="store_true", help="let TensorFlow's own log lines through")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    loading = argparse.ArgumentParser(add_help=False)
    loading.add_argument("model", metavar="MODEL", help="a .keras or .h5 file, or a SavedModel directory")
    loading.add_argument("--custom-objects", metavar="FILE.py", help="a Python file defining the model's custom classes")
    loading.add_argument("--architecture", metavar="MODEL.json", help="a Keras JSON config, for a weights-only .h5")
    loading.add_argument("--unsafe", action="store_true", help="allow Lambda layers (runs Python code from the file)")
    loading.add_argument("--input-shape", type=_shape, metavar="H,W,C", help="input shape, when the file lacks one")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", metavar="PATH", help=".npy, .npz[:key], .h5[:dataset], .csv or a folder of images")
    data.add_argument("--labels", metavar="PATH", help="labels (same formats); default the data file's 'y'")
    data.add_argument("--samples", type=_positive_int, metavar="N", help="use the first N samples")
    data.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="samples per step (default 256)")
    data.add_argument("--rescale", type=_number, metavar="F", help="multiply inputs by F, e.g. 1/255")

    scan = commands.add_parser("scan", parents=[loading, data, common], help="measure every ReLU unit on data",
                               description="Measure every ReLU unit of MODEL on data and report dead, dying and "
                                           "saturated units.")
    scan.add_argument("--gradients", action="store_true", help="also measure gradient flow (needs labels)")
    scan.add_argument("--loss", metavar="NAME", help="loss for --gradients (default: the model's stored loss)")
    _add_output_flags(scan)
    scan.add_argument("--fail-on", type=_fraction, metavar="FRACTION",
                      help="exit 1 when the model's dead fraction exceeds FRACTION (a CI gate)")
    scan.add_argument("--dying-threshold", type=_fraction, default=0.01, metavar="F",
                      help="active rate under which a unit is dying (default 0.01)")
    scan.add_argument("--flag-threshold", type=_fraction, default=0.10, metavar="F",
                      help="dead share from which a site is flagged (default 0.10)")
    scan.set_defaults(handler=cmd_scan)

    inspect = commands.add_parser("inspect", parents=[loading, common], help="list the ReLU sites, without data")
    inspect.set_defaults(handler=cmd_inspect)

    report = commands.add_parser("report", parents=[common], help="render a saved JSON report again")
    report.add_argument("report", metavar="REPORT.json")
    _add_output_flags(report, json_flag=False)
    report.set_defaults(handler=cmd_report)
    return parser


def _add_output_flags(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    if json_flag:
        parser.add_argument("--json", metavar="PATH", help="write the JSON report here")
    parser.add_argument("--plot", metavar="PATH", help="save the overview figure (PNG)")
    parser.add_argument("--format", choices=("table", "json", "markdown"), default="table",
                        help="what to print (default: table)")
    parser.add_argument("--sort", choices=("model", "dead"), default="model",
                        help="row order: model order or worst first")
    parser.add_argument("--top", type=_positive_int, metavar="N", help="show at most N rows")


# -- the console ----------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_native_stderr(enabled: bool):
    """Routes everything written to file descriptor 2 (TensorFlow's C++ logging) to /dev/null.

    Python's own `sys.stderr` keeps pointing at the real terminal, so our messages and any
    traceback still show. Needed because TensorFlow prints start-up lines (oneDNN, cudart, absl)
    even with TF_CPP_MIN_LOG_LEVEL=3.
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    real_stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                            errors="replace")
    devnull = os.open(os.devnull, os.O_WRONLY)
    old_sys_stderr = sys.stderr
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = real_stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = old_sys_stderr
        real_stderr.close()


def _silence_python_logs() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)


class Output:
    """Where a command writes: the table to stdout, notes and progress to stderr."""

    def __init__(self, args):
        from rich.console import Console

        # In a pipe rich would fall back to 80 columns and fold the table; give it room instead.
        width = None if sys.stdout.isatty() else 160
        self.out = Console(highlight=False, width=width)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.quiet = getattr(args, "quiet", False)

    def note(self, message: str, style: str = "yellow") -> None:
        if not self.quiet:
            self.err.print(f"deadrelu: {message}", style=style, markup=False, highlight=False)

    @contextlib.contextmanager
    def progress(self, description: str):
        """Yields `(on_start, on_batch)` callbacks; a progress bar only on a terminal."""
        if self.quiet or not self.err.is_terminal:
            yield (lambda total: None), (lambda n: None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=None)
            yield (lambda total: bar.update(task, total=total)), (lambda n: bar.advance(task, n))


# -- commands -------------------------------------------------------------------------------

def _load(args):
    from deadrelu.loading import load

    options = {"custom_objects": args.custom_objects, "architecture": args.architecture,
               "unsafe": args.unsafe or None, "input_shape": args.input_shape}
    return load(args.model, **{k: v for k, v in options.items() if v is not None})


def cmd_scan(args, output: Output) -> int:
    from deadrelu.files import check_output_path
    from deadrelu.scan import describe_loaded, scan

    for path in (args.json, args.plot):
        if path:
            check_output_path(path)
    loaded = _load(args)
    for repair in loaded.repairs:
        output.note(f"repaired while loading: {repair}", style="dim")
    with output.progress("scanning") as (on_start, on_batch):
        report = scan(loaded.model, args.data, args.labels, batch_size=args.batch_size, gradients=args.gradients,
                      loss=args.loss, samples=args.samples, rescale=args.rescale,
                      dying_threshold=args.dying_threshold, flag_threshold=args.flag_threshold,
                      on_start=on_start, on_batch=on_batch, model_info=describe_loaded(loaded))
    for note in report.notes:
        output.note(note, style="bold yellow" if "synthetic" in note else "yellow")
    return _emit(report, args, output)


def cmd_report(args, output: Output) -> int:
    from deadrelu.report import Report

    return _emit(Report.from_json(args.report), args, output)


def _emit(report, args, output: Output) -> int:
    """Prints the report in the chosen format and writes the requested files."""
    if getattr(args, "json", None):
        report.to_json(args.json)
    if args.plot:
        from deadrelu.plots import plot_overview

        plot_overview(report, args.plot)
    if args.format == "json":
        import json

        sys.stdout.write(json.dumps(report.to_dict(), indent=1) + "\n")
    elif args.format == "markdown":
        from deadrelu.render import markdown_table

        sys.stdout.write(markdown_table(report))
    else:
        from deadrelu.render import layer_gradient_table, site_table, summary_text

        if report.sites:
            output.out.print(site_table(report, sort=args.sort, limit=args.top))
        gradient_table = layer_gradient_table(report)
        if gradient_table is not None:
            output.out.print(gradient_table)
        output.out.print(summary_text(report))
    for path, what in ((getattr(args, "json", None), "report"), (args.plot, "figure")):
        if path:
            output.note(f"wrote {what} {path}", style="dim")
    fail_on = getattr(args, "fail_on", None)
    if fail_on is not None and report.dead_fraction > fail_on:
        output.note(f"dead fraction {report.dead_fraction:.1%} exceeds --fail-on {fail_on:.1%}", style="bold red")
        return EXIT_GATE
    return EXIT_OK


def cmd_inspect(args, output: Output) -> int:
    from deadrelu.render import inspect_table
    from deadrelu.sites import find_sites

    loaded = _load(args)
    site_map = find_sites(loaded.model)
    output.out.print(inspect_table(site_map, loaded.repairs))
    output.out.print(f"{loaded.model.name}: {len(site_map.sites)} ReLU sites, {len(site_map.others)} other "
                     f"activations (format {loaded.format})")
    return EXIT_OK


# -- entry point ----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_INPUT
    from deadrelu.errors import DeadReluError

    with quiet_native_stderr(not args.verbose):
        if not args.verbose:
            _silence_python_logs()
        output = Output(args)
        try:
            return args.handler(args, output)
        except DeadReluError as exc:
            if args.debug:
                import traceback

                traceback.print_exc()
            sys.stderr.write(f"deadrelu: error: {exc}\n")
            return EXIT_INPUT
        except KeyboardInterrupt:
            sys.stderr.write("deadrelu: interrupted\n")
            return 130
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if args.debug:
                import traceback

                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            sys.stderr.write(f"deadrelu: internal error: {type(exc).__name__}: {first[:300]} "
                             "(rerun with --debug for the traceback, and please report it)\n")
            return EXIT_INTERNAL


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
