"""What the commands share: exit codes, argument types, flag groups, the check of every path,
loading and showing a report.

`deadrelu.cli` assembles the parser from these; commands import them from here, never from
`deadrelu.cli` (which imports the commands). Standard library only at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterator

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL, EXIT_CHECK = 0, 1, 2, 3, 4
# Ended by Ctrl-C (SIGINT) or by SIGTERM: 128 + the signal's number, as shells report it.
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


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


def positive_number(text: str) -> float:
    """A finite number above 0 (`--rescale`), the rule of `deadrelu.validation.positive_number`."""
    value = number(text)
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0 such as 1/255, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number ≥ 1 (`--samples`, `--batch-size`, `--epochs`)."""
    return _whole_number(text, minimum=1)


def non_negative_int(text: str) -> int:
    """A whole number ≥ 0 (`--seed`)."""
    return _whole_number(text, minimum=0)


def _whole_number(text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got {value}")
    return value


def shape(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape such as 28,28,1, got {text!r}") from None


# -- paths: what a command reads and what it writes ------------------------------------------


@dataclasses.dataclass(frozen=True)
class PathArg:
    """The argparse `type` of every flag that names a file or folder: says what it is to the command.

    `check_paths` finds the path flags of the command that ran by this type and checks them all
    together before the command does any work; tests/test_safety.py fails on a flag that takes
    free text without being declared here or listed there as no path.

    Attributes:
        output: Whether the command writes the path (else it reads it).
        kind: "file"; "model" (an input file or SavedModel folder; the output OUT, which replaces
            an existing file only with --force); "data" (an input `x.npz:key`, `f.h5:group/ds` or
            folder of images); "folder" (an output folder of figures); "logdir" (a TensorBoard log
            folder: only new, uniquely named event files are added to it, so it may be shared
            with other outputs).
        default: For an output: args → the path written when the flag is not given.
    """

    output: bool
    kind: str = "file"
    default: Callable[[argparse.Namespace], str] | None = None

    def __call__(self, text: str) -> str:
        return text


INPUT_FILE = PathArg(output=False)
INPUT_MODEL = PathArg(output=False, kind="model")
INPUT_DATA = PathArg(output=False, kind="data")
OUTPUT_FILE = PathArg(output=True)
OUTPUT_FOLDER = PathArg(output=True, kind="folder")
LOG_FOLDER = PathArg(output=True, kind="logdir")


def output_model(suffix: Callable[[argparse.Namespace], str]) -> PathArg:
    """The type of `-o/--output`: a model file, by default `<model>_<suffix(args)>.keras` beside MODEL."""

    def default(args: argparse.Namespace) -> str:
        from deadrelu.io.saving import default_output_path

        return default_output_path(args.model, suffix(args))

    return PathArg(output=True, kind="model", default=default)


# The names of the figures --plot-dir writes (`deadrelu.views.plots.plot_site_dir`, `site_file_name`).
PLOT_DIR_FIGURES = re.compile(r"(overview|unit_map|active_rates)\.png|site-\d{3,}-[A-Za-z0-9._-]*\.png")


@dataclasses.dataclass(frozen=True)
class _Path:
    """One path of a command line: the flag that gave it, as given, and the file it names."""

    flag: str  # --json, or the name of a positional (model)
    given: str  # as the user wrote it
    target: str  # the file or folder (a data spec's file)
    arg: PathArg

    def __str__(self) -> str:
        return f"{self.flag} {self.given}"


def check_paths(args: argparse.Namespace) -> None:
    """The one check of every path of the command that ran, before it does any work.

    Fills in the default of an output that was not given (OUT), then refuses, each with a
    `UsageError` that names the flags:

    * an output that is an input — the same file once symbolic links and relative spellings are
      resolved, or a hard link to it — or lies inside an input folder (a SavedModel, a folder of
      images), or, for a folder of figures, a figure name that would replace an input. --force
      never lets an output replace an input;
    * two outputs that are the same file;
    * an input that is a FIFO, a socket or a device (reading it could block forever);
    * an output that is a folder or a special file, in a folder that does not exist or takes no
      new files, or that exists (OUT without --force) — see `deadrelu.io.files.check_output_path`.
    """
    from deadrelu.errors import UsageError
    from deadrelu.io.files import check_output_folder, check_output_path, data_file, file_kind

    inputs, outputs = [], []
    # argparse has no public list of a parser's options; `_actions` includes the parents' ones.
    for action in args.command_parser._actions:
        arg = action.type
        if not isinstance(arg, PathArg):
            continue
        value = getattr(args, action.dest, None)
        if not value and arg.default is not None:  # not given, or given as ""
            value = arg.default(args)
            setattr(args, action.dest, value)
        flag = max(action.option_strings, key=len) if action.option_strings else action.dest
        for given in value if isinstance(value, list) else [value]:
            if given:
                path = _Path(flag, given, data_file(given) if arg.kind == "data" else given, arg)
                (outputs if arg.output else inputs).append(path)
    for path in inputs:
        kind = file_kind(path.target)
        if kind is not None:
            raise UsageError(
                f"{path} is {kind}, not a file; deadrelu reads files and folders only (it could "
                "wait forever on a pipe): save the content to a file and pass that"
            )
    for index, out in enumerate(outputs):
        for path in inputs:
            _refuse_overlap(out, path, to_input=True)
        for other in outputs[:index]:
            _refuse_overlap(out, other, to_input=False)
    for out in outputs:
        try:
            if out.arg.kind in ("folder", "logdir"):
                check_output_folder(out.given)
            else:
                check_output_path(out.given, force=out.arg.kind != "model" or bool(getattr(args, "force", False)))
        except UsageError as error:
            raise UsageError(f"{out.flag}: {error}") from None


def _refuse_overlap(out: _Path, other: _Path, *, to_input: bool) -> None:
    """Raises UsageError when writing `out` would replace, or write into, `other`."""
    from deadrelu.errors import UsageError
    from deadrelu.io.files import is_inside, same_file

    if to_input:
        fix = "deadrelu never writes over its inputs, not even with --force: choose another path"
        if same_file(out.target, other.target):
            raise UsageError(f"{out} is the input {other}; {fix}")
        if os.path.isdir(other.target) and is_inside(out.target, other.target):
            raise UsageError(f"{out} is inside the input folder {other}; {fix}")
    elif same_file(out.target, other.target) and "logdir" not in (out.arg.kind, other.arg.kind):
        raise UsageError(f"{other.flag} and {out.flag} are the same file ({out.given}); give each output its own path")
    for folder, file in ((out, other), (other, out)):
        if folder.arg.kind == "folder" and folder.arg.output and _figure_name_in(file.target, folder.target):
            what = "the input" if to_input else "the output"
            raise UsageError(
                f"{folder} would overwrite {what} {file} with a figure of the same name; choose another folder"
            )


def _figure_name_in(path: str, folder: str) -> bool:
    """Whether --plot-dir `folder` would write a figure at `path` (as given, or where its links lead)."""
    folder = os.path.realpath(folder)
    spellings = {
        os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path)),
        os.path.realpath(path),
    }
    return any(os.path.dirname(p) == folder and PLOT_DIR_FIGURES.fullmatch(os.path.basename(p)) for p in spellings)


# -- flag groups ----------------------------------------------------------------------------


def parent_parsers() -> dict[str, argparse.ArgumentParser]:
    """Flag groups shared by several commands: "common", "model" and "data"."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    common.add_argument("--verbose", action="store_true", help="let TensorFlow's own log lines through")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument(
        "model", type=INPUT_MODEL, metavar="MODEL", help="a .keras or .h5 file, or a SavedModel directory"
    )
    model.add_argument(
        "--custom-objects", type=INPUT_FILE, metavar="FILE.py", help="a Python file defining the model's custom classes"
    )
    model.add_argument(
        "--architecture", type=INPUT_FILE, metavar="MODEL.json", help="a Keras JSON config, for a weights-only .h5"
    )
    model.add_argument(
        "--unsafe",
        action="store_true",
        help="run code stored in the file (Lambda layers) and read files it names; only for files you trust",
    )
    model.add_argument("--input-shape", type=shape, metavar="H,W,C", help="input shape, when the file lacks one")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data", type=INPUT_DATA, metavar="PATH", help=".npy, .npz[:key], .h5[:dataset], .csv or a folder of images"
    )
    data.add_argument(
        "--labels", type=INPUT_DATA, metavar="PATH", help="labels (same formats); default the data file's 'y'"
    )
    data.add_argument("--samples", type=positive_int, metavar="N", help="use the first N samples")
    data.add_argument(
        "--batch-size", type=positive_int, default=256, metavar="N", help="samples per step (default 256)"
    )
    data.add_argument("--rescale", type=positive_number, metavar="F", help="multiply inputs by F, e.g. 1/255")
    data.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="with a folder of images: skip unreadable images (counted in a note) instead of refusing",
    )
    return {"common": common, "model": model, "data": data}


def data_options(args: argparse.Namespace) -> dict:
    """The "data" flags as keyword arguments of `deadrelu.scan` / `deadrelu.data.load_data`."""
    return {"samples": args.samples, "rescale": args.rescale, "skip_bad_images": args.skip_bad_images}


def add_selection_flags(parser: argparse.ArgumentParser, verb: str) -> None:
    """--site, --layers and --only: which sites `verb` changes (the same three on patch, revive, prune)."""
    group = parser.add_argument_group("which sites")
    group.add_argument(
        "--site",
        dest="sites",
        action="append",
        metavar="PATH",
        help=f"only {verb} this site (its exact path, as the scan table shows it); repeatable",
    )
    group.add_argument("--layers", metavar="REGEX", help=f"only {verb} sites whose path matches REGEX (re.search)")
    group.add_argument(
        "--only",
        choices=("all", "dead", "flagged"),
        help=f"{verb} every selected site, only those with dead units, or only flagged ones",
    )


def selection_options(args: argparse.Namespace) -> dict:
    """--site, --layers and --only as the keyword arguments `sites`, `layers`, `only` of the fixing verbs."""
    return {"sites": args.sites, "layers": args.layers, "only": args.only}


def result_document(command: str, loaded, result, *, output_path: str | None = None, **extra) -> dict:
    """A fixing command's --json: its header (schema, tool, model, output) + `result.to_dict()` + `extra`.

    Args:
        command: "patch", "revive" or "prune" (the schema is `deadrelu/<command>@2`).
        loaded: The `LoadedModel` of MODEL.
        result: The library's result (`PatchResult`, `ReviveResult`, `PruneResult`).
        output_path: Where the fixed model was written, if it was.
        **extra: More top-level fields (e.g. `retrain`), each documented in docs/cli.md.
    """
    from deadrelu.report import tool_info

    header = {
        "schema": f"deadrelu/{command}@2",
        "tool": tool_info(),
        "model": {"path": loaded.path, "name": loaded.model.name, "sha256": loaded.sha256, "format": loaded.format},
        "output": None
        if output_path is None
        else {"path": output_path, "format": "keras" if output_path.endswith(".keras") else "h5"},
    }
    return {**header, **result.to_dict(), **{key: value for key, value in extra.items() if value is not None}}


def add_strategy_flags(parser: argparse.ArgumentParser) -> None:
    """--strategy, --distribution and --devices: run on several devices or machines; scan, revive, prune.

    --strategy is TensorFlow's (tf.distribute), --distribution JAX's (keras.distribution); --devices
    says how many devices either uses.
    """
    group = parser.add_argument_group("several devices and machines (tf.distribute; keras.distribution on JAX)")
    group.add_argument(
        "--strategy",
        choices=("mirrored", "multi-worker"),
        help="TensorFlow: mirrored: every local GPU (with --devices N on a CPU-only machine, the CPU split into N "
        "devices); multi-worker: the cluster TF_CONFIG describes, run this command on every worker (only the "
        "chief writes)",
    )
    group.add_argument(
        "--distribution",
        choices=("data-parallel",),
        help="JAX (KERAS_BACKEND=jax): keras.distribution.DataParallel over every JAX device (--devices N: the "
        "first N; on a CPU deadrelu starts JAX with N host devices), each batch split across them",
    )
    group.add_argument(
        "--devices",
        type=positive_int,
        metavar="N",
        help="with --strategy mirrored or --distribution data-parallel: use N devices (GPUs, or CPU devices)",
    )


@contextlib.contextmanager
def strategy_scope(args, output) -> Iterator:
    """Makes the `tf.distribute.Strategy` of --strategy/--devices (None without), says it in one
    line, and enters its scope: the model is then loaded, copied and scanned on its devices.

    With --distribution (JAX), makes the `keras.distribution` instead, says it in one line, and
    makes it the active distribution until the command ends; it yields None (no strategy).

    Enter it first thing in a command's run: logical CPU devices (--devices) can only be made before
    TensorFlow starts its devices, host devices of JAX before JAX starts, and a multi-worker
    strategy before any other TensorFlow work.

    Yields:
        The strategy, or None.

    Raises:
        UsageError: --devices without --strategy mirrored or --distribution; --strategy with
            --distribution; --distribution on another backend than JAX, or with more devices than
            JAX has; multi-worker without a valid TF_CONFIG.
    """
    from deadrelu.errors import UsageError

    name, devices = getattr(args, "strategy", None), getattr(args, "devices", None)
    distribution = getattr(args, "distribution", None)
    if name is not None and distribution is not None:
        raise UsageError(
            f"--strategy {name} is TensorFlow's tf.distribute and --distribution {distribution} JAX's "
            "keras.distribution: give the one of the backend Keras runs on"
        )
    if distribution is not None:
        from deadrelu.engine.mesh import describe as describe_distribution
        from deadrelu.engine.mesh import distribution_from_flags

        with distribution_from_flags(distribution, devices).scope():
            output.note(describe_distribution(), style="dim")
            yield None
        return
    if devices is not None and name != "mirrored":
        raise UsageError(
            f"--devices {devices} needs --strategy mirrored (TensorFlow) or --distribution data-parallel (JAX): "
            "it says how many devices to run on"
        )
    if name is None:
        yield None
        return
    from deadrelu.engine.distribute import describe, scope, strategy_from_flags

    strategy = strategy_from_flags(name, devices)
    output.note(describe(strategy), style="dim")
    with scope(strategy):
        yield strategy


def writes_here(strategy, args, output, flags: tuple[str, ...]) -> bool:
    """Whether this process writes the command's files: on every process but a cluster's non-chief workers.

    On a non-chief worker, says so in one line naming the outputs given (`flags`: dests such as
    "json", "output") and clears them, so that nothing is written there.
    """
    from deadrelu.engine.distribute import is_chief, worker_index

    if strategy is None or is_chief(strategy):
        return True
    given = [name for name in flags if getattr(args, name, None)]
    for name in given:
        setattr(args, name, None)
    shown = ", ".join("--" + name.replace("_", "-") for name in given) or "no file"
    output.note(
        f"worker {worker_index(strategy)} is not the chief: it writes nothing ({shown}: on the chief)", style="dim"
    )
    return False


def add_output_flags(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """--json, --plot, --format, --sort, --top: how a report is shown and saved."""
    if json_flag:
        parser.add_argument("--json", type=OUTPUT_FILE, metavar="PATH", help="write the JSON report here")
    parser.add_argument("--plot", type=OUTPUT_FILE, metavar="PATH", help="save the overview figure (PNG)")
    parser.add_argument(
        "--format", choices=("table", "json", "markdown"), default="table", help="what to print (default: table)"
    )
    parser.add_argument(
        "--sort", choices=("model", "dead"), default="model", help="row order: model order or worst first"
    )
    parser.add_argument("--top", type=positive_int, metavar="N", help="show at most N rows")


def add_plot_dir_flag(parser: argparse.ArgumentParser) -> None:
    """Adds `--plot-dir DIR` (`scan` and `report`)."""
    parser.add_argument(
        "--plot-dir",
        type=OUTPUT_FOLDER,
        metavar="DIR",
        help="also write every figure into DIR: overview, unit map, rate histogram, one per site",
    )


# -- running --------------------------------------------------------------------------------


def load_from_args(args, output=None):
    """Loads the MODEL of a command with its loading flags; returns a `LoadedModel`.

    With `output`, each repair made while loading is said in one dim note.
    """
    from deadrelu.io.loading import load

    options = {
        "custom_objects": args.custom_objects,
        "architecture": args.architecture,
        "unsafe": args.unsafe or None,
        "input_shape": args.input_shape,
    }
    loaded = load(args.model, **{k: v for k, v in options.items() if v is not None})
    if output is not None:
        for repair in loaded.repairs:
            output.note(f"repaired while loading: {repair}", style="dim")
    return loaded


def require_scan_source(args, command: str) -> None:
    """Refuses a command that acts on dead units when neither `--data` nor `--report` says which they are."""
    from deadrelu.errors import UsageError

    if not (args.data or args.report):
        raise UsageError(
            f"{command} needs the data the units are dead on: pass --data x.npz "
            "(or --report scan.json from 'deadrelu scan --json')"
        )


def report_from_args(args, output, loaded, strategy=None):
    """The scan a fixing command acts on: `--report` read back, else a scan of `--data` (with progress).

    A report made on another file is used (its sites are matched by path) and said in a note; the
    scan's own notes (adaptations, synthetic data) are said too.
    """
    from deadrelu.engine.scanner import describe_loaded, scan
    from deadrelu.report import Report

    if args.report:
        report = Report.from_json(args.report)
        sha = (report.model or {}).get("sha256")
        if sha and sha != loaded.sha256:
            output.note(f"{args.report} was made on another file (sha256 differs); its sites are matched by path")
        return report
    with output.progress("scanning") as (on_start, on_batch):
        report = scan(
            loaded.model,
            args.data,
            batch_size=args.batch_size,
            **data_options(args),
            on_start=on_start,
            on_batch=on_batch,
            model_info=describe_loaded(loaded),
            strategy=strategy,
        )
    for note in report.notes:
        output.note(note, style="bold yellow" if "synthetic" in note else "yellow")
    return report


def emit(report, args, output) -> int:
    """Prints a report in the chosen format, writes the requested files, applies --fail-on."""
    if getattr(args, "json", None):
        report.to_json(args.json)
    if args.plot:
        from deadrelu.views.plots import plot_overview

        plot_overview(report, args.plot)
    if getattr(args, "plot_dir", None):
        from deadrelu.views.plots import plot_site_dir

        output.note(f"wrote {len(plot_site_dir(report, args.plot_dir))} figures into {args.plot_dir}", style="dim")
    if args.format == "json":
        import json

        sys.stdout.write(json.dumps(report.to_dict(), indent=1) + "\n")
    elif args.format == "markdown":
        from deadrelu.views.terminal import markdown_table

        sys.stdout.write(markdown_table(report))
    else:
        from deadrelu.views.terminal import layer_gradient_table, site_table, summary_block

        if report.sites:
            output.out.print(site_table(report, sort=args.sort, limit=args.top))
        gradient_table = layer_gradient_table(report)
        if gradient_table is not None:
            output.out.print(gradient_table)
        output.out.print(summary_block(report))  # the findings of --why, then the summary line
    for path, what in ((getattr(args, "json", None), "report"), (args.plot, "figure")):
        if path:
            output.note(f"wrote {what} {path}", style="dim")
    fail_on = getattr(args, "fail_on", None)
    if fail_on is not None and report.diverged:
        # A diverged model fails the gate whatever FRACTION: its non-finite units are not dead,
        # so its dead fraction says nothing of it (`--fail-on 1` gates on divergence alone).
        output.note("the model has diverged (NaN/inf): it fails --fail-on whatever the fraction", style="bold red")
        return EXIT_GATE
    if fail_on is not None and report.dead_fraction > fail_on:
        output.note(f"dead fraction {report.dead_fraction:.1%} exceeds --fail-on {fail_on:.1%}", style="bold red")
        return EXIT_GATE
    return EXIT_OK
