"""`deadrelu scan`: measure every ReLU unit of a model on data."""

from __future__ import annotations

import argparse

from deadrelu.commands._checkpoints import add_checkpoint_flags, run_checkpoints
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
    number,
    strategy_scope,
    writes_here,
)

ORDER = 10


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "scan",
        parents=[parents["model"], parents["data"], parents["common"]],
        help="measure every ReLU unit on data",
        description="Measure every ReLU unit of MODEL on data and report dead, dying and saturated units. Given "
        "several checkpoints (files, a folder of them, or a quoted pattern such as 'ckpt/*.keras'), scan each on "
        "the same data and say when units died: a timeline as DeadReluMonitor records it.",
    )
    parser.add_argument("--gradients", action="store_true", help="also measure gradient flow (needs labels)")
    parser.add_argument("--loss", metavar="NAME", help="loss for --gradients (default: the model's stored loss)")
    parser.add_argument(
        "--why",
        action="store_true",
        help="also say why each dead unit died (starved, output_relu, born_dead, killed_in_training, "
        "data_dependent), with its evidence: adds scans of freshly initialised copies of the model",
    )
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
    add_dormant_flag(
        parser,
        "also list each site's τ-dormant units (ReDo: mean |output| / the site's mean ≤ TAU, dead units "
        "included), e.g. 0.1: a column of the table, counts in the summary, `dormant` in the JSON",
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
    add_checkpoint_flags(parser)
    add_strategy_flags(parser)
    return parser


def dormancy_threshold(text: str) -> float:
    """ReDo's τ for `--dormant`: a finite number ≥ 0 (`deadrelu.engine.scanner.dormant_threshold`)."""
    value = number(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a dormancy threshold ≥ 0 such as 0.1, got {text!r}")
    return value


def add_dormant_flag(parser, help_text: str) -> None:
    """`--dormant TAU`, as `scan` and `revive` take it."""
    parser.add_argument("--dormant", type=dormancy_threshold, metavar="TAU", help=help_text)


def run(args, output) -> int:
    with strategy_scope(args, output) as strategy:  # first: before TensorFlow starts its devices
        return _run(args, output, strategy)


def _run(args, output, strategy) -> int:
    from deadrelu.engine.scanner import describe_loaded, scan
    from deadrelu.io.checkpoints import is_checkpoint_set

    if is_checkpoint_set([args.model, *args.more_models]):
        return run_checkpoints(args, output, strategy)

    if args.tensorboard:
        from deadrelu.views.tensorboard import require_tensorboard

        require_tensorboard("--tensorboard")
    writes_here(strategy, args, output, ("json", "plot", "plot_dir", "tensorboard", "html"))
    loaded = load_from_args(args, output)
    with output.progress("scanning", unit="samples") as (on_start, on_batch):
        report = scan(
            loaded.model,
            args.data,
            args.labels,
            batch_size=args.batch_size,
            gradients=args.gradients,
            why=args.why,
            loss=args.loss,
            **data_options(args),
            dying_threshold=args.dying_threshold,
            flag_threshold=args.flag_threshold,
            dormant=args.dormant,
            on_start=on_start,
            on_batch=on_batch,
            model_info=describe_loaded(loaded),
            verbose=0,
            strategy=strategy,
        )
    for note in report.notes:
        output.note(note, style="bold yellow" if "synthetic" in note else "yellow")
    code = emit(report, args, output)
    hint = next_step(report, args, loaded.model)
    if args.html:
        from deadrelu.views.html import write_html

        write_html(report, args.html, next_steps=[hint] if hint else None)  # the terminal's next: line
        output.note(f"wrote HTML report {args.html}", style="dim")
    if args.tensorboard:
        from deadrelu.views.tensorboard import SummaryWriter

        with SummaryWriter(args.tensorboard) as writer:
            writer.write(report, step=args.tensorboard_step)
        output.note(f"wrote TensorBoard summaries into {writer.path} (step {args.tensorboard_step})", style="dim")
    if hint and args.format == "table":
        output.note(hint, style="dim")
    return code


def next_step(report, args, model=None) -> str | None:
    """One line saying which command to run next on what the scan found (real data only).

    Without the cause analysis: for flagged sites, the `revive` and `patch` commands that can act on
    them (`deadrelu.fixes.op_fixes.actions`: none for a subclassed model or ReLUs inside layer
    code, `revive` alone where `patch` cannot rewrite, and it says so when neither can), and that
    `--why` says why the dead units died. With it (`--why`): the recommendation of the
    dominant cause, as a command that reads the model and the data as this scan did (the model's
    flags, `--data`, `--samples`, `--batch-size`, `--rescale`, `--skip-bad-images`).

    Args:
        report: The scan's `Report`.
        args: The scan's parsed arguments.
        model: The loaded model (whether `patch` and `revive` can rebuild it); None: assume they can.

    Returns:
        The line, starting "next: ", or None when there is nothing to suggest.
    """
    import deadrelu.views.why as why

    if report.diverged:
        # Re-initialising or rewriting units cannot repair NaN/inf weights.
        return (
            "next: the model has diverged; revive and patch cannot repair NaN/inf weights: retrain from a "
            "checkpoint before the divergence (a lower learning rate, gradient clipping)"
        )
    if report.data.get("synthetic") or not args.data:
        return None
    can = _actions(report, model)
    if why.has_causes(report):
        return _cause_step(report, args, can) or _fix_step(report, args, can)
    hint = _fix_step(report, args, can)
    return f"{hint}; add --why to see why they died" if hint and report.summary["dead"] else hint


def _actions(report, model) -> dict[str, set[str]]:
    """Per site path, which of "revive" and "patch" can act on it."""
    from deadrelu.fixes.op_fixes import actions
    from deadrelu.fixes.rewriter import rebuildable

    editable = model is None or rebuildable(model)
    return {s.path: actions(s, editable) for s in report.sites}


def _fix_step(report, args, can: dict[str, set[str]]) -> str | None:
    """The revive and patch commands for the flagged sites (a scan without causes)."""
    flagged = [s for s in report.sites if s.flagged]
    if not flagged:
        return None
    revivable = sum(len(s.dead) for s in report.sites if "revive" in can[s.path])
    parts = []
    if any("revive" in can[s.path] for s in flagged):
        dead = report.summary["dead"]
        which = f"{dead:,}" if revivable == dead else f"{revivable:,} of the {dead:,}"
        parts.append(f"{_command('revive', args, data=True)} re-initialises the {which} dead units (ReDo)")
    if any("patch" in can[s.path] for s in flagged):
        parts.append(f"{_command('patch', args, '--to', 'leaky')} rewrites the ReLUs so units cannot die again")
    if not parts:
        where = ", ".join(s.path for s in flagged[:3]) + (", ..." if len(flagged) > 3 else "")
        return (
            f"next: revive and patch cannot change the flagged sites ({where}): they are ReLUs in code "
            "deadrelu cannot edit (a subclassed model's or a layer's call); apply a LeakyReLU there "
            "(keras.ops.leaky_relu) and retrain"
        )
    return "next: " + "; ".join(parts) + "; add --retrain to compare"


def _cause_step(report, args, can: dict[str, set[str]]) -> str | None:
    """The recommendation of the dominant cause as a command (`deadrelu.views.why` reads the causes)."""
    import deadrelu.views.why as why

    top = why.dominant_cause(report)
    if top is None:
        return None
    kind, count = top
    dead = sum(why.cause_counts(report).values())
    who = f"the {dead:,} dead units" if count == dead else f"{count:,} of the {dead:,} dead units"
    sites = [s for s in report.sites if why.site_causes(s).get(kind)]
    revivable = [s for s in sites if "revive" in can[s.path]]
    patchable = [s for s in sites if "patch" in can[s.path]]
    if kind == "killed_in_training" and revivable:
        return (
            f"next: {who} were killed in training: {_command('revive', args, data=True)} re-initialises them "
            f"(ReDo); then train on with a lower learning rate{_learning_rate(why.why_of(report))}"
        )
    if kind == "born_dead" and patchable:
        return (
            f"next: {who} were born dead (dead at initialisation): {_command('patch', args, '--to', 'leaky')} "
            "rewrites the ReLUs so they cannot die; or change the initialiser or the architecture"
        )
    if kind == "output_relu" and patchable:
        chosen = [word for s in patchable for word in ("--site", s.path)]
        return (
            f"next: {who} sit behind a ReLU on a model output, which then predicts a constant: "
            f"{_command('patch', args, '--to', 'leaky', *chosen)} removes it"
        )
    if kind == "starved":
        upstream = _upstream(report, sites)
        if upstream is None:
            return f"next: {who} are starved (their input is constant): fix the layers before them first"
        if "revive" in can.get(upstream, set()):
            fix = _command("revive", args, "--site", upstream, data=True)
            return f"next: {who} are starved by dead units upstream: fix {upstream} first, {fix}; then scan again"
        return f"next: {who} are starved by dead units upstream: fix {upstream} first, then scan again"
    if kind == "data_dependent":
        if args.samples:  # more of the same data
            return (
                f"next: {who} may fire on data the scan did not see: scan more data before acting, "
                f"{_command('scan', args, '--why', data=True, samples=False)} reads all of it"
            )
        more = _command("scan", args, "--why", data=True, data_path="MORE_DATA")
        return (
            f"next: {who} may fire on data the scan did not see: scan more data before acting, {more} "
            f"(MORE_DATA: more than the {report.data.get('samples', 0):,} samples scanned)"
        )
    return None  # a cause that neither command can act on: the summary line says what to do


def _upstream(report, sites) -> str | None:
    """The upstream site to fix first for these starved sites (from their evidence): the earliest, in
    model order, of those whose own dead units are not all starved too (where a chain of starved
    sites begins); else the earliest named."""
    import deadrelu.views.why as why

    named = {
        entry.get("path")
        for site in sites
        for entry in ((getattr(site, "cause_evidence", None) or {}).get("starved") or {}).get("upstream") or []
    }
    order = [s for s in report.sites if s.path in named]
    roots = [s for s in order if why.site_causes(s).get("starved", 0) < len(s.dead)]
    chosen = roots or order
    return chosen[0].path if chosen else next(iter(sorted(p for p in named if p)), None)


def _learning_rate(why: dict | None) -> str:
    """ " (it was 0.05, 50× Adam's default 0.001)", from the training configuration stored in the file."""
    from deadrelu.views.why import is_number

    training = (why or {}).get("training") or {}
    rate, ratio, default = (training.get(k) for k in ("learning_rate", "learning_rate_ratio", "default_learning_rate"))
    if not is_number(rate):
        return ""
    if not is_number(ratio):
        return f" (it was {float(rate):g})"
    optimizer = training.get("optimizer") or "the optimizer"
    default_text = f" {float(default):g}" if is_number(default) else ""
    return f" (it was {float(rate):g}, {float(ratio):.3g}× {optimizer}'s default{default_text})"


def _command(verb: str, args, *extra: str, data: bool = False, samples: bool = True, data_path: str = "") -> str:
    """`deadrelu VERB MODEL ...` in backquotes, reading the model (and the data) as the scan did."""
    import shlex

    words = ["deadrelu", verb, args.model]
    if getattr(args, "custom_objects", None):
        words += ["--custom-objects", args.custom_objects]
    if getattr(args, "architecture", None):
        words += ["--architecture", args.architecture]
    if getattr(args, "unsafe", False):
        words.append("--unsafe")
    if getattr(args, "input_shape", None):
        words += ["--input-shape", ",".join(str(d) for d in args.input_shape)]
    if data:
        words += ["--data", data_path or args.data]
        if samples and args.samples:
            words += ["--samples", str(args.samples)]
        parser = getattr(args, "command_parser", None)
        if parser is None or args.batch_size != parser.get_default("batch_size"):
            words += ["--batch-size", str(args.batch_size)]
        if args.rescale is not None:
            words += ["--rescale", _number(args.rescale)]
        if args.skip_bad_images:
            words.append("--skip-bad-images")
    return f"`{shlex.join([*words, *extra])}`"


def _number(value: float) -> str:
    """A float as `--rescale` reads it back exactly: "1/255" when it is one, else its repr."""
    whole = round(1 / value) if value else 0
    return f"1/{whole}" if whole > 1 and 1.0 / whole == value else repr(value)
