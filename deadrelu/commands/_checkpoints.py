"""`deadrelu scan` given several checkpoints: a thin shell over `deadrelu.checkpoints.scan_checkpoints`.

MODEL may be followed by more files, or be a folder of checkpoints or a quoted glob pattern
(`deadrelu.io.checkpoints.is_checkpoint_set`). Each checkpoint is scanned on the same data; the
output is the monitor's timeline table with a column naming each file, `--json` the document of
`CheckpointScan.to_dict()` (schema `deadrelu/checkpoints@2`), `--plot` the timeline figure,
`--html` one page, `--tensorboard` each checkpoint's summaries at its epoch. `--fail-on` gates on
the last checkpoint. Standard library only at import time.
"""

from __future__ import annotations

import sys

from deadrelu.commands._common import (
    EXIT_GATE,
    EXIT_OK,
    INPUT_MODEL,
    OUTPUT_FILE,
    check_paths,
    data_options,
    writes_here,
)


def add_checkpoint_flags(parser) -> None:
    """More MODELs after the first (checkpoints), and `--html`."""
    parser.add_argument(
        "more_models",
        nargs="*",
        type=INPUT_MODEL,
        metavar="MODEL",
        help="more checkpoints, scanned in the order given after the first; MODEL may also be a folder of "
        "checkpoints or a quoted pattern such as 'ckpt/*.keras' (sorted by the epoch in the names)",
    )
    parser.add_argument(
        "--html",
        type=OUTPUT_FILE,
        metavar="PATH",
        help="also write one self-contained HTML page: the report, or with several checkpoints their timeline",
    )


def run_checkpoints(args, output, strategy) -> int:
    """Scans the checkpoints MODEL names (and MORE), shows the timeline, writes the outputs."""
    from deadrelu.checkpoints import scan_checkpoints
    from deadrelu.errors import UsageError
    from deadrelu.io.checkpoints import checkpoint_files

    for flag, given in (
        ("--why", args.why),
        ("--plot-dir", args.plot_dir),
        ("--tensorboard-step", args.tensorboard_step),
    ):
        if given:
            raise UsageError(
                f"{flag} applies to one model, not to several checkpoints: scan one checkpoint for it "
                "(with several, --tensorboard writes each at its epoch, --plot draws the timeline)"
            )
    if args.tensorboard:
        from deadrelu.views.tensorboard import require_tensorboard

        require_tensorboard("--tensorboard")
    given = args.model if not args.more_models else [args.model, *args.more_models]
    files = checkpoint_files(given)
    # The files a folder or a pattern stands for are checked as inputs too: no output may be one.
    args.model, args.more_models = files[0].path, [f.path for f in files[1:]]
    check_paths(args)
    writes_here(strategy, args, output, ("json", "plot", "tensorboard", "html"))
    output.note(f"scanning {len(files)} checkpoints, epochs {_epochs(files)}", style="dim")
    with output.progress("scanning checkpoints", unit="checkpoints") as (on_start, on_batch):
        on_start(len(files))
        result = scan_checkpoints(
            files,
            args.data,
            args.labels,
            batch_size=args.batch_size,
            gradients=args.gradients,
            loss=args.loss,
            **data_options(args),
            dying_threshold=args.dying_threshold,
            flag_threshold=args.flag_threshold,
            dormant=getattr(args, "dormant", None),
            custom_objects=args.custom_objects,
            architecture=args.architecture,
            unsafe=args.unsafe,
            input_shape=args.input_shape,
            on_checkpoint=lambda checkpoint: on_batch(1),
            strategy=strategy,
        )
    _say_notes(result, output)
    _show(result, args, output)
    _write(result, args, output)
    return _gate(result, args, output)


def _epochs(files) -> str:
    epochs = [f.epoch for f in files]
    return f"{epochs[0]}–{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])


def _say_notes(result, output) -> None:
    """The repairs made while loading and the reports' notes, each once; then the scan's own notes."""
    said: set[str] = set()
    for checkpoint in result:
        for repair in checkpoint.report.model.get("repairs") or []:
            if repair not in said:
                said.add(repair)
                output.note(f"repaired while loading: {repair}", style="dim")
        for note in checkpoint.report.notes:
            if note not in said:
                said.add(note)
                output.note(note, style="bold yellow" if "synthetic" in note else "yellow")
    for note in result.notes:
        output.note(note)


def _show(result, args, output) -> None:
    from deadrelu.views.checkpoints import checkpoint_table, summary_line

    if args.format == "json":
        import json

        sys.stdout.write(json.dumps(result.to_dict(), indent=1) + "\n")
    elif args.format == "markdown":
        from deadrelu.views.table import to_markdown

        sys.stdout.write(to_markdown(checkpoint_table(result)) + "\n" + summary_line(result) + "\n")
    else:
        from deadrelu.views.table import to_rich

        output.out.print(to_rich(checkpoint_table(result)))
        output.out.print(summary_line(result))


def _write(result, args, output) -> None:
    if args.json:
        result.to_json(args.json)
    if args.plot:
        result.plot(args.plot)
    if args.html:
        result.write_html(args.html)
    for path, what in (
        (args.json, "checkpoint reports and timeline"),
        (args.plot, "timeline figure"),
        (args.html, "page"),
    ):
        if path:
            output.note(f"wrote {what} {path}", style="dim")
    if args.tensorboard:
        from deadrelu.views.tensorboard import SummaryWriter

        with SummaryWriter(args.tensorboard) as writer:
            for checkpoint in result:
                # Keras's TensorBoard callback logs epoch e (counted from 1) at step e - 1: the same step.
                writer.write(checkpoint.report, step=checkpoint.epoch - 1)
        output.note(
            f"wrote TensorBoard summaries into {writer.path} (one step per checkpoint: its epoch − 1, as Keras's "
            "TensorBoard callback steps epochs)",
            style="dim",
        )


def _gate(result, args, output) -> int:
    """--fail-on, on the last checkpoint: its dead fraction, or its divergence whatever FRACTION."""
    fail_on = args.fail_on
    last = result.checkpoints[-1].report
    if fail_on is not None and last.diverged:
        output.note(
            "the last checkpoint has diverged (NaN/inf): it fails --fail-on whatever the fraction", style="bold red"
        )
        return EXIT_GATE
    if fail_on is not None and last.dead_fraction > fail_on:
        output.note(
            f"dead fraction {last.dead_fraction:.1%} at the last checkpoint exceeds --fail-on {fail_on:.1%}",
            style="bold red",
        )
        return EXIT_GATE
    return EXIT_OK
