"""`deadrelu scan`: measure every ReLU unit of a model on data."""

from __future__ import annotations

from deadrelu.commands._common import (
    LOG_FOLDER,
    add_output_flags,
    add_plot_dir_flag,
    add_strategy_flags,
    data_options,
    emit,
    fraction,
    load_from_args,
    non_negative_int,
    strategy_scope,
    writes_here,
)

ORDER = 10


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "scan",
        parents=[parents["model"], parents["data"], parents["common"]],
        help="measure every ReLU unit on data",
        description="Measure every ReLU unit of MODEL on data and report dead, dying and saturated units.",
    )
    parser.add_argument("--gradients", action="store_true", help="also measure gradient flow (needs labels)")
    parser.add_argument("--loss", metavar="NAME", help="loss for --gradients (default: the model's stored loss)")
    add_output_flags(parser)
    add_plot_dir_flag(parser)
    parser.add_argument(
        "--fail-on",
        type=fraction,
        metavar="FRACTION",
        help="exit 1 when the model's dead fraction exceeds FRACTION, or when it has diverged (NaN/inf "
        "weights or outputs) whatever FRACTION: a CI gate (--fail-on 1 gates on divergence alone)",
    )
    parser.add_argument(
        "--dying-threshold",
        type=fraction,
        default=0.01,
        metavar="F",
        help="active rate under which a unit is dying (default 0.01)",
    )
    parser.add_argument(
        "--flag-threshold",
        type=fraction,
        default=0.10,
        metavar="F",
        help="dead share from which a site is flagged (default 0.10)",
    )
    parser.add_argument(
        "--tensorboard",
        type=LOG_FOLDER,
        metavar="DIR",
        help="also write TensorBoard summaries (dead fractions, histograms, unit map) to DIR/deadrelu",
    )
    parser.add_argument(
        "--tensorboard-step",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="the step of those summaries (default 0), e.g. the checkpoint's epoch",
    )
    add_strategy_flags(parser)
    return parser


def run(args, output) -> int:
    with strategy_scope(args, output) as strategy:  # first: before TensorFlow starts its devices
        return _run(args, output, strategy)


def _run(args, output, strategy) -> int:
    from deadrelu.engine.scanner import describe_loaded, scan

    if args.tensorboard:
        from deadrelu.views.tensorboard import require_tensorboard

        require_tensorboard("--tensorboard")
    writes_here(strategy, args, output, ("json", "plot", "plot_dir", "tensorboard"))
    loaded = load_from_args(args, output)
    with output.progress("scanning", unit="samples") as (on_start, on_batch):
        report = scan(
            loaded.model,
            args.data,
            args.labels,
            batch_size=args.batch_size,
            gradients=args.gradients,
            loss=args.loss,
            **data_options(args),
            dying_threshold=args.dying_threshold,
            flag_threshold=args.flag_threshold,
            on_start=on_start,
            on_batch=on_batch,
            model_info=describe_loaded(loaded),
            verbose=0,
            strategy=strategy,
        )
    for note in report.notes:
        output.note(note, style="bold yellow" if "synthetic" in note else "yellow")
    code = emit(report, args, output)
    if args.tensorboard:
        from deadrelu.views.tensorboard import SummaryWriter

        with SummaryWriter(args.tensorboard) as writer:
            writer.write(report, step=args.tensorboard_step)
        output.note(f"wrote TensorBoard summaries into {writer.path} (step {args.tensorboard_step})", style="dim")
    hint = next_step(report, args, loaded.model)
    if hint and args.format == "table":
        output.note(hint, style="dim")
    return code


def next_step(report, args, model=None) -> str | None:
    """One line saying which command fixes what the scan found (only for flagged sites on real data).

    It names only the commands that can act on the flagged sites (`deadrelu.fixes.op_fixes.actions`):
    none for a subclassed model or ReLUs inside layer code, `revive` alone where `patch` cannot
    rewrite, and says so when neither can.
    """
    import shlex

    from deadrelu.fixes.op_fixes import actions
    from deadrelu.fixes.rewriter import rebuildable

    if report.diverged:
        # Re-initialising or rewriting units cannot repair NaN/inf weights.
        return (
            "next: the model has diverged; revive and patch cannot repair NaN/inf weights: retrain from a "
            "checkpoint before the divergence (a lower learning rate, gradient clipping)"
        )
    flagged = [s for s in report.sites if s.flagged]
    if not flagged or report.data.get("synthetic") or not args.data:
        return None
    can = {s.path: actions(s, model is None or rebuildable(model)) for s in report.sites}
    revivable = sum(len(s.dead) for s in report.sites if "revive" in can[s.path])
    parts = []
    if any("revive" in can[s.path] for s in flagged):
        revive = ["deadrelu", "revive", args.model, "--data", args.data]
        dead = report.summary["dead"]
        which = f"{dead:,}" if revivable == dead else f"{revivable:,} of the {dead:,}"
        parts.append(f"`{shlex.join(revive)}` re-initialises the {which} dead units (ReDo)")
    if any("patch" in can[s.path] for s in flagged):
        patch = ["deadrelu", "patch", args.model, "--to", "leaky"]
        parts.append(f"`{shlex.join(patch)}` rewrites the ReLUs so units cannot die again")
    if not parts:
        where = ", ".join(s.path for s in flagged[:3]) + (", ..." if len(flagged) > 3 else "")
        return (
            f"next: revive and patch cannot change the flagged sites ({where}): they are ReLUs in code "
            "deadrelu cannot edit (a subclassed model's or a layer's call); apply a LeakyReLU there "
            "(keras.ops.leaky_relu) and retrain"
        )
    return "next: " + "; ".join(parts) + "; add --retrain to compare"
