"""`deadrelu prune`: remove dead ReLU units, for a smaller model that computes the same outputs."""

from __future__ import annotations

import dataclasses
import os

from deadrelu.commands._common import (
    EXIT_GATE,
    EXIT_OK,
    INPUT_FILE,
    OUTPUT_FILE,
    add_strategy_flags,
    data_options,
    load_from_args,
    number,
    output_model,
    positive_int,
    report_from_args,
    require_scan_source,
    strategy_scope,
    writes_here,
)
from deadrelu.commands._retrain import add_retrain_flags, check_retrain_flags, retrain_from_args, show_comparison

ORDER = 55

# Samples `predict` is timed on (the first of --data), and the interleaved rounds.
TIMING_SAMPLES = 2048
TIMING_ROUNDS = 5


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "prune",
        parents=[parents["model"], parents["data"], parents["common"]],
        help="remove dead units: a smaller model, same outputs",
        description="Remove the dead ReLU units of MODEL: their incoming weights, bias and BatchNormalization "
        "channel, and the inputs through which every later layer read them. The outputs are compared "
        "on the data and nothing is written unless they agree (exit 2 otherwise, or 3 when they "
        "differ on the data this run found the units dead on: a bug). Prints what was "
        "removed, what stayed and why, and what it saves: parameters, file size, predict time.",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=output_model(lambda args: "pruned"),
        metavar="OUT",
        help="where to write (.keras, or .h5); default <model>_pruned.keras beside MODEL",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument(
        "--report",
        type=INPUT_FILE,
        metavar="SCAN.json",
        help="take the dead units from this report ('deadrelu scan --json'); the outputs are "
        "compared on --data, or on the data file the report names",
    )
    parser.add_argument(
        "--dormant",
        type=number,
        metavar="TAU",
        help="also remove units whose dormancy (ReDo score) is at most TAU, each replaced by its "
        "mean output; the outputs change, so the loss and metrics are measured before and "
        "after (needs labels: --labels or the data file's 'y')",
    )
    parser.add_argument(
        "--site", dest="layers", metavar="REGEX", help="only prune sites whose path matches REGEX (re.search)"
    )
    parser.add_argument(
        "--only",
        choices=("all", "dead", "flagged"),
        default="all",
        help="prune every site with dead units (default), or only flagged ones",
    )
    parser.add_argument(
        "--tolerance",
        type=number,
        default=1e-5,
        metavar="F",
        help="largest output difference accepted, times max(1, output scale) (default 1e-5)",
    )
    parser.add_argument("--json", type=OUTPUT_FILE, metavar="PATH", help="write a JSON summary of the pruning here")
    parser.add_argument(
        "--fail-if-nothing",
        action="store_true",
        help="exit 1 when no unit is dead (default: say so, write nothing, exit 0)",
    )
    parser.add_argument(
        "--timing-rounds",
        type=positive_int,
        default=TIMING_ROUNDS,
        metavar="N",
        help=f"interleaved predict rounds timing both models (default {TIMING_ROUNDS})",
    )
    parser.add_argument("--no-timing", action="store_true", help="do not time predict of both models")
    add_retrain_flags(parser)
    add_strategy_flags(parser)
    return parser


@dataclasses.dataclass
class PruneRun:
    """What one `deadrelu prune` produced: the input, the result, and the evidence.

    Attributes:
        loaded: The input, a `deadrelu.loading.LoadedModel`.
        result: The `deadrelu.PruneResult`.
        output: Where the pruned model goes.
        after: A scan of the pruned model on the same data (None when nothing was pruned).
        cost: A `deadrelu.model_utils.CostComparison` of both models, or None.
        retrain: The `deadrelu.retrain.Comparison` of --retrain, or None.
        notes: One-line remarks for the user.
    """

    loaded: object
    result: object
    output: str = ""
    after: object = None
    cost: object = None
    retrain: object = None
    notes: list = dataclasses.field(default_factory=list)


def run(args, output) -> int:
    check_retrain_flags(args)
    out_path = resolve_output(args)
    with strategy_scope(args, output) as strategy:  # before TensorFlow starts its devices
        return _run(args, output, out_path, strategy)


def _run(args, output, out_path: str, strategy) -> int:
    chief = writes_here(strategy, args, output, ("output", "json", "curves"))
    pruned = make_prune(args, output, out_path, strategy)
    if pruned.result.model is None:
        return nothing_pruned(pruned, args, output)
    rescan(pruned, args, output)
    if not args.no_timing:
        measure(pruned, args, output)
    if args.retrain:
        # The pruned model is trained in place, so OUT holds the retrained model.
        pruned.retrain = retrain_from_args(args, output, pruned.loaded.model, {"pruned": pruned.result.model})
    if chief:
        save(pruned, args, output)
    show(pruned, args, output, wrote=chief)
    if pruned.retrain is not None:
        show_comparison(pruned.retrain, args, output)
    return EXIT_OK


def resolve_output(args) -> str:
    """Checks the flags that need no model and returns OUT: fails fast, before TensorFlow loads."""
    from deadrelu.errors import UsageError
    from deadrelu.saving import model_output_path

    require_scan_source(args, "prune")
    if args.dormant is not None and args.dormant < 0:
        raise UsageError(f"--dormant is a dormancy threshold ≥ 0, e.g. 0.1 (got {args.dormant:g})")
    return model_output_path(args.model, args.output, "pruned", force=args.force)


def make_prune(args, output, out_path: str = "", strategy=None) -> PruneRun:
    """Loads MODEL, scans it (or reads --report), and prunes a copy of it (the check included).

    Raises:
        PruneCheckError: The outputs differ beyond the tolerance, with units from --report (of other
            data?) or a layer Keras computes wrongly (exit 2; nothing is written).
        PruneSelfCheckError: They differ on the data this run found the units dead on: a bug (exit 3).
    """
    from deadrelu.pruner import PruneCheckError, check_failure, prune

    loaded = load_from_args(args, output)
    report = report_from_args(args, output, loaded, strategy)
    options = {"batch_size": args.batch_size, **data_options(args)}
    try:
        with output.progress("pruning"):
            result = prune(
                loaded.model,
                report,
                data=args.data,
                labels=args.labels,
                dormant=args.dormant,
                layers=args.layers,
                only=args.only,
                validation_data=args.validation_data,
                validation_labels=args.validation_labels,
                loss=args.loss,
                tolerance=args.tolerance,
                strategy=strategy,
                **options,
            )
    except PruneCheckError as error:
        if args.report or error.cause != "data":
            raise
        # The units come from this run's scan of this very data, where they output 0.
        raise check_failure(error.result, same_data=True) from None
    return PruneRun(loaded=loaded, result=result, output=out_path, notes=list(result.notes))


def nothing_pruned(pruned: PruneRun, args, output) -> int:
    """No unit was removed: say why and write nothing (but the --json summary).

    Returns:
        0 when the selected sites have no dead (or dormant) units; 1 then with --fail-if-nothing.

    Raises:
        UnsupportedModelError: There are such units but none can be removed exactly (exit 2).
    """
    from deadrelu.errors import UnsupportedModelError

    show(pruned, args, output)
    result = pruned.result
    if result.candidates:
        units = sum(len(units) for units in result.candidates.values())
        path = next(iter(result.skipped), None)
        first = f" (e.g. {path}: {result.skipped[path]})" if path else ""
        raise UnsupportedModelError(
            f"nothing pruned: none of the {units:,} selected units can be removed exactly{first}; nothing was written"
        )
    if args.json:
        from deadrelu.files import write_json

        write_json(args.json, summary_dict(pruned))
        output.note(f"wrote summary {args.json}", style="dim")
    return EXIT_GATE if args.fail_if_nothing else EXIT_OK


def rescan(pruned: PruneRun, args, output) -> None:
    """Scans the pruned model on the same data: the pruned sites should have no dead unit left."""
    from deadrelu.scanner import scan

    data = args.data or (pruned.result.report.data or {}).get("source")
    with output.progress("rescanning") as (on_start, on_batch):
        pruned.after = scan(
            pruned.result.model,
            data,
            batch_size=args.batch_size,
            **data_options(args),
            on_start=on_start,
            on_batch=on_batch,
        )


def measure(pruned: PruneRun, args, output) -> None:
    """Parameters, file size (saved as OUT is) and predict time of both models, side by side."""
    from deadrelu.data import load_data
    from deadrelu.model_utils import compare_cost

    model = pruned.loaded.model
    data = args.data or (pruned.result.report.data or {}).get("source")
    samples = min(filter(None, (args.samples, TIMING_SAMPLES)))
    x = next(iter(load_data(data, model, **{**data_options(args), "samples": samples}).batches(samples)))
    suffix = os.path.splitext(pruned.output)[1] or ".keras"
    with output.progress("timing predict"):
        pruned.cost = compare_cost(
            model, pruned.result.model, x, batch_size=args.batch_size, rounds=args.timing_rounds, file_suffix=suffix
        )


def save(pruned: PruneRun, args, output) -> None:
    """Writes OUT (atomically) and the --json summary."""
    from deadrelu.saving import save_model

    notes: list[str] = []
    save_model(pruned.result.model, pruned.output, force=args.force, notes=notes)
    pruned.notes.extend(notes)
    if args.json:
        from deadrelu.files import write_json

        write_json(args.json, summary_dict(pruned))


def summary_dict(pruned: PruneRun) -> dict:
    """The --json summary: input, output, per-site removal, layers, the checks, what it saves."""
    from deadrelu.report import tool_info

    loaded, result = pruned.loaded, pruned.result
    after = {s.path: s for s in pruned.after.sites} if pruned.after is not None else {}
    sites = []
    for site in result.report.sites:
        if not result.candidates.get(site.path) and not result.removed.get(site.path):
            continue
        entry = {
            "path": site.path,
            "units": site.units,
            "dead_before": len(site.dead),
            "candidates": result.candidates.get(site.path, []),
            "removed": result.removed.get(site.path, []),
            "kept": result.kept.get(site.path, []),
            "reason": result.skipped.get(site.path),
        }
        if site.path in after:
            entry["units_after"] = after[site.path].units
            entry["dead_after"] = len(after[site.path].dead)
        sites.append(entry)
    written = pruned.output if result.model is not None else None
    summary = result.to_dict()
    for key in ("removed", "kept", "skipped", "candidates"):
        summary.pop(key)
    return {
        "schema": "deadrelu/prune@1",
        "tool": tool_info(),
        "model": {"path": loaded.path, "name": loaded.model.name, "sha256": loaded.sha256, "format": loaded.format},
        "output": {"path": written, "format": None if written is None else os.path.splitext(written)[1].lstrip(".")},
        "data": dict(result.report.data),
        "sites": sites,
        **summary,
        "summary_before": result.report.summary,
        "summary_after": pruned.after.summary if pruned.after is not None else None,
        "cost": pruned.cost.to_dict() if pruned.cost is not None else None,
        "notes": pruned.notes,
        **({"retrain": pruned.retrain.to_dict()} if pruned.retrain is not None else {}),
    }


def show(pruned: PruneRun, args, output, *, wrote: bool = True) -> None:
    """The per-site table, the checks, what it saves, and where the files went."""
    from rich.table import Table
    from rich.text import Text

    from deadrelu.render import shorten

    result = pruned.result
    after = {s.path: s for s in pruned.after.sites} if pruned.after is not None else {}
    rows = [site for site in result.report.sites if result.candidates.get(site.path) or result.removed.get(site.path)]
    if not rows:
        what = f"no dead or dormant (≤ {result.dormant:g}) units" if result.dormant is not None else "no dead units"
        output.out.print(f"{what}: nothing to prune; nothing written", markup=False)
        return
    title = "pruned units" + (f" (dead, and dormant ≤ {result.dormant:g})" if result.dormant is not None else "")
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("site path", overflow="fold")
    table.add_column("units", justify="right")
    table.add_column("dead", justify="right")
    if result.dormant is not None:
        table.add_column("selected", justify="right")
    table.add_column("removed", justify="right")
    if after:
        table.add_column("units after", justify="right")
        table.add_column("dead after", justify="right")
    table.add_column("kept: reason", overflow="fold")
    for site in rows:
        removed = len(result.removed.get(site.path, []))
        cells = [
            Text(shorten(site.path)),
            f"{site.units:,}",
            Text(f"{len(site.dead):,}", style="red" if site.dead else ""),
        ]
        if result.dormant is not None:
            cells.append(f"{len(result.candidates.get(site.path, [])):,}")
        cells.append(Text(f"{removed:,}", style="green" if removed else "dim"))
        if after:
            now = after.get(site.path)
            cells.append("–" if now is None else f"{now.units:,}")
            dead = None if now is None else len(now.dead)
            cells.append(Text("–" if dead is None else f"{dead:,}", style="yellow" if dead else "green"))
        cells.append(Text(result.skipped.get(site.path, ""), style="yellow"))
        table.add_row(*cells)
    output.out.print(table)
    for note in pruned.notes:
        output.note(note)
    if result.model is None:
        return
    _show_checks(result, output)
    before, now = result.params_before, result.params_after
    line = f"parameters: {before:,} → {now:,} ({_change(before, now)})"
    cost = pruned.cost
    if cost is not None and cost.file_bytes is not None:
        a, b = cost.file_bytes
        line += f"; file size ({os.path.splitext(pruned.output)[1]}): {_size(a)} → {_size(b)} ({_change(a, b)})"
    output.out.print(line, markup=False)
    if cost is not None:
        a, b = cost.predict_median
        output.out.print(
            f"predict on {cost.samples:,} samples: {1000 * a:.1f} ms → {1000 * b:.1f} ms "
            f"(×{cost.predict_ratio:.2f}, paired median of {len(cost.predict_seconds[0])} interleaved "
            "rounds)",
            markup=False,
        )
    summary = result.report.summary
    line = f"dead units: {summary['dead']:,} of {summary['units']:,}"
    if pruned.after is not None:
        line += f" → {pruned.after.summary['dead']:,} of {pruned.after.summary['units']:,}"
    output.out.print(f"{line}; {result.units_removed:,} units removed", markup=False)
    if not wrote:
        return
    output.out.print(f"wrote {pruned.output}", markup=False)
    if args.json:
        output.note(f"wrote summary {args.json}", style="dim")


def _show_checks(result, output) -> None:
    from rich.text import Text

    check = result.check
    exact = result.dormant is None
    if check is not None:
        verdict = "outputs unchanged" if exact else "outputs changed (--dormant replaces units by their mean)"
        limit = f"tolerance {check.limit(result.tolerance):.3g}" if exact else "not enforced with --dormant"
        output.out.print(
            Text(
                f"{verdict}: max |Δ| = {check.max_abs_diff:.3g} on {check.samples:,} samples ({limit})",
                style="green" if exact else "yellow",
            )
        )
    held_out = result.validation_check
    if held_out is not None:
        fine = held_out.within(result.tolerance)
        text = f"on --validation-data: max |Δ| = {held_out.max_abs_diff:.3g} on {held_out.samples:,} samples"
        if not fine and exact:
            text += " — units dead on --data fire on this data, and the pruned model differs there"
        output.out.print(Text(text, style="green" if fine else "yellow"))
    if result.metrics_before is not None:
        from rich.table import Table

        table = Table(title=f"loss and metrics on the {result.metrics_data}", title_justify="left", header_style="bold")
        for column in ("metric", "original", "pruned"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name, value in result.metrics_before.items():
            table.add_row(name, f"{value:.4f}", f"{result.metrics_after.get(name, float('nan')):.4f}")
        output.out.print(table)


def _change(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "–"


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"
