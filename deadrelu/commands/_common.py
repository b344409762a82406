"""What the commands share: exit codes, argument types, flag groups, loading and showing a report.

`deadrelu.cli` assembles the parser from these; commands import them from here, never from
`deadrelu.cli` (which imports the commands). Standard library only at import time.
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


# -- argument types -------------------------------------------------------------------------

def fraction(text: str) -> float:
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def number(text: str) -> float:
    """A float, also written as a ratio such as 1/255."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.5 or 1/255, got {text!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def shape(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape such as 28,28,1, got {text!r}") from None


def plot_dir(text: str) -> str:
    """argparse type of `--plot-dir`: a folder, or a new one whose parent exists (checked before any work).

    The check is `deadrelu.files.check_output_folder`; the folder is created only when the figures
    are written (`deadrelu.plots.plot_site_dir`), so a failed run leaves no empty folder behind.
    """
    from deadrelu.errors import UsageError
    from deadrelu.files import check_output_folder

    try:
        return check_output_folder(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# -- flag groups ----------------------------------------------------------------------------

def parent_parsers() -> dict[str, argparse.ArgumentParser]:
    """Flag groups shared by several commands: "common", "model" and "data"."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    common.add_argument("--verbose", action="store_true", help="let TensorFlow's own log lines through")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("model", metavar="MODEL", help="a .keras or .h5 file, or a SavedModel directory")
    model.add_argument("--custom-objects", metavar="FILE.py", help="a Python file defining the model's custom classes")
    model.add_argument("--architecture", metavar="MODEL.json", help="a Keras JSON config, for a weights-only .h5")
    model.add_argument("--unsafe", action="store_true", help="allow Lambda layers (runs Python code from the file)")
    model.add_argument("--input-shape", type=shape, metavar="H,W,C", help="input shape, when the file lacks one")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", metavar="PATH", help=".npy, .npz[:key], .h5[:dataset], .csv or a folder of images")
    data.add_argument("--labels", metavar="PATH", help="labels (same formats); default the data file's 'y'")
    data.add_argument("--samples", type=positive_int, metavar="N", help="use the first N samples")
    data.add_argument("--batch-size", type=positive_int, default=256, metavar="N",
                      help="samples per step (default 256)")
    data.add_argument("--rescale", type=number, metavar="F", help="multiply inputs by F, e.g. 1/255")
    return {"common": common, "model": model, "data": data}


def add_output_flags(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """--json, --plot, --format, --sort, --top: how a report is shown and saved."""
    if json_flag:
        parser.add_argument("--json", metavar="PATH", help="write the JSON report here")
    parser.add_argument("--plot", metavar="PATH", help="save the overview figure (PNG)")
    parser.add_argument("--format", choices=("table", "json", "markdown"), default="table",
                        help="what to print (default: table)")
    parser.add_argument("--sort", choices=("model", "dead"), default="model",
                        help="row order: model order or worst first")
    parser.add_argument("--top", type=positive_int, metavar="N", help="show at most N rows")


def add_plot_dir_flag(parser: argparse.ArgumentParser) -> None:
    """Adds `--plot-dir DIR` (`scan` and `report`)."""
    parser.add_argument("--plot-dir", type=plot_dir, metavar="DIR",
                        help="also write every figure into DIR: overview, unit map, rate histogram, one per site")


# -- running --------------------------------------------------------------------------------

def load_from_args(args):
    """Loads the MODEL of a command with its loading flags; returns a `LoadedModel`."""
    from deadrelu.loading import load

    options = {"custom_objects": args.custom_objects, "architecture": args.architecture,
               "unsafe": args.unsafe or None, "input_shape": args.input_shape}
    return load(args.model, **{k: v for k, v in options.items() if v is not None})


def emit(report, args, output) -> int:
    """Prints a report in the chosen format, writes the requested files, applies --fail-on."""
    if getattr(args, "json", None):
        report.to_json(args.json)
    if args.plot:
        from deadrelu.plots import plot_overview

        plot_overview(report, args.plot)
    if getattr(args, "plot_dir", None):
        from deadrelu.plots import plot_site_dir

        output.note(f"wrote {len(plot_site_dir(report, args.plot_dir))} figures into {args.plot_dir}", style="dim")
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
