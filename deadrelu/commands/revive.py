"""`deadrelu revive`: re-initialise dead ReLU units (ReDo) without changing the model's outputs."""

from __future__ import annotations

import dataclasses

from deadrelu.commands._common import (
    EXIT_OK,
    INPUT_FILE,
    OUTPUT_FILE,
    add_strategy_flags,
    data_options,
    load_from_args,
    non_negative_int,
    output_model,
    positive_int,
    report_from_args,
    require_scan_source,
    strategy_scope,
    writes_here,
)
from deadrelu.commands._retrain import add_retrain_flags, check_retrain_flags, retrain_from_args, show_comparison

ORDER = 50

# Outputs may differ by float rounding only (BatchNormalization's folded constants); more is a bug.
TOLERANCE = 1e-4


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "revive",
        parents=[parents["model"], parents["data"], parents["common"]],
        help="re-initialise dead units (ReDo), outputs unchanged",
        description="Re-initialise the dead ReLU units of MODEL (ReDo, Sokar et al. 2023): fresh incoming weights "
        "from each layer's own initializer, zero outgoing weights, so the outputs stay the same while "
        "the units fire again. Checks the outputs on --data, rescans, and writes OUT.",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=output_model(lambda args: "revived"),
        metavar="OUT",
        help="where to write (.keras, or .h5); default <model>_revived.keras beside MODEL",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--seed", type=non_negative_int, metavar="N", help="seed of the new weights (default: random)")
    parser.add_argument(
        "--scale",
        choices=("initializer", "live"),
        default="initializer",
        help="new weights as the layer's initializer draws them (default, as in ReDo), or "
        "rescaled to the norm of the layer's live units",
    )
    parser.add_argument(
        "--report",
        type=INPUT_FILE,
        metavar="SCAN.json",
        help="take the dead units from this report ('deadrelu scan --json') instead of scanning",
    )
    parser.add_argument(
        "--site", action="append", dest="sites", metavar="PATH", help="only revive this site (repeat for several)"
    )
    parser.add_argument("--json", type=OUTPUT_FILE, metavar="PATH", help="write a JSON summary of the revival here")
    parser.add_argument(
        "--check-samples",
        type=positive_int,
        default=None,
        metavar="N",
        help="compare outputs on the first N samples only (default: all of --data)",
    )
    add_retrain_flags(parser)
    add_strategy_flags(parser)
    return parser


@dataclasses.dataclass
class ReviveRun:
    """What one `deadrelu revive` produced: the input, the revived model, and the evidence.

    Attributes:
        loaded: The input, a `deadrelu.loading.LoadedModel`.
        model: The revived copy.
        result: The `deadrelu.revive.ReviveResult`.
        before: The report the dead units came from.
        after: A scan of the revived model on the same data (None without --data).
        max_diff: Largest |Δ| between the outputs of MODEL and the revived model (None without --data).
        samples: Samples the outputs were compared on.
        output: Where the revived model goes.
        notes: One-line remarks for the user.
    """

    loaded: object
    model: object
    result: object
    before: object
    after: object = None
    max_diff: float | None = None
    samples: int = 0
    output: str = ""
    notes: list = dataclasses.field(default_factory=list)
    retrain: object = None  # the deadrelu.retrain.Comparison of --retrain


def run(args, output) -> int:
    check_retrain_flags(args)
    out_path = resolve_output(args)
    with strategy_scope(args, output) as strategy:  # before TensorFlow starts its devices
        return _run(args, output, out_path, strategy)


def _run(args, output, out_path: str, strategy) -> int:
    chief = writes_here(strategy, args, output, ("output", "json", "curves"))
    revived = make_revival(args, output, out_path, strategy)
    if not revived.result.units_revived:
        return nothing_revived(revived, args, output)
    check_outputs(revived, args)
    rescan(revived, args, output)
    if args.retrain:
        # The revived copy is trained in place, so OUT holds the retrained model.
        revived.retrain = retrain_from_args(args, output, revived.loaded.model, {"revived": revived.model})
    if chief:
        save(revived, args, output)
    show(revived, args, output, wrote=chief)
    if revived.retrain is not None:
        show_comparison(revived.retrain, args, output)
    return EXIT_OK


def resolve_output(args) -> str:
    """Checks the flags that need no model and returns OUT: fails fast, before TensorFlow loads."""
    from deadrelu.saving import model_output_path

    require_scan_source(args, "revive")
    return model_output_path(args.model, args.output, "revived", force=args.force)


def make_revival(args, output, out_path: str = "", strategy=None) -> ReviveRun:
    """Loads MODEL, scans it (or reads --report), and revives a copy of it."""
    from deadrelu.model_utils import copy_model
    from deadrelu.reviver import revive_in_place

    loaded = load_from_args(args, output)
    report = report_from_args(args, output, loaded, strategy)
    with output.progress("reviving"):
        model = copy_model(loaded.model)
        # With data, revived units that still do not fire on it get a second draw.
        result = revive_in_place(
            model,
            report,
            seed=args.seed,
            scale=args.scale,
            sites=args.sites,
            data=args.data or None,
            batch_size=args.batch_size,
            scan_options={"samples": args.samples, "rescale": args.rescale},
            strategy=strategy,
        )
    return ReviveRun(
        loaded=loaded, model=model, result=result, before=report, output=out_path, notes=list(result.notes)
    )


def check_outputs(revived: ReviveRun, args) -> None:
    """Compares the outputs of MODEL and the revived model on --data (inference mode).

    Raises:
        UnsupportedModelError: They differ, and Keras misplaces a bias in the model (exit 2).
        UsageError: They differ on --data, and the units came from --report (exit 2).
        InternalError: They differ on the data the units were found dead on, in this run (exit 3).
    """
    if not args.data:
        revived.notes.append("no --data: the outputs were not compared")
        return
    from deadrelu.bias_axis import compare_as_scanned, describe
    from deadrelu.data import load_data
    from deadrelu.errors import InternalError, UnsupportedModelError, UsageError

    samples = min(filter(None, (args.samples, args.check_samples)), default=None)
    data = load_data(args.data, revived.loaded.model, **{**data_options(args), "samples": samples})
    check, affected = compare_as_scanned(revived.loaded.model, revived.model, data.batches(args.batch_size))
    revived.max_diff, revived.samples = check.max_abs_diff, check.samples
    if affected:
        revived.notes.append(f"{describe(affected)}: the outputs were compared as the scan ran the model")
    if revived.max_diff <= TOLERANCE:
        return
    differ = (
        f"the revival changed the outputs (max |Δ| = {revived.max_diff:.3g} on {revived.samples} samples, "
        f"tolerance {TOLERANCE:g})"
    )
    if affected:
        raise UnsupportedModelError(
            f"{differ}: {describe(affected)}, and new weights there change what such a layer computes; revive only "
            "other sites (--site PATH) or revive on another backend (KERAS_BACKEND=jax); nothing was written"
        )
    if args.report:
        raise UsageError(
            f"{differ}: the units of --report are not all dead on --data (was it made on other data?); revive from "
            "a scan of --data (leave out --report); nothing was written"
        )
    # Units dead on this very data output 0 on it: cutting them off cannot change the outputs.
    raise InternalError(f"{differ} on the data the units were found dead on: a bug in deadrelu; nothing was written")


def rescan(revived: ReviveRun, args, output) -> None:
    """Scans the revived model on the same data: the revived units should fire now."""
    if not args.data:
        return
    from deadrelu.scanner import scan

    with output.progress("rescanning") as (on_start, on_batch):
        revived.after = scan(
            revived.model,
            args.data,
            batch_size=args.batch_size,
            **data_options(args),
            on_start=on_start,
            on_batch=on_batch,
        )


def nothing_revived(revived: ReviveRun, args, output) -> int:
    """No unit was re-initialised: say why and write nothing.

    Returns:
        0 when the selected sites have no dead units (nothing to do).

    Raises:
        UnsupportedModelError: There are dead units but none can be re-initialised (exit 2).
    """
    from deadrelu.errors import UnsupportedModelError

    show(revived, args, output, wrote=False)
    selected = [s for s in revived.before.sites if s.dead and (not args.sites or s.path in args.sites)]
    if selected:
        dead = sum(len(s.dead) for s in selected)
        path = next(s.path for s in selected if s.path in revived.result.skipped) if revived.result.skipped else None
        first = f" (e.g. {path}: {revived.result.skipped[path]})" if path else ""
        raise UnsupportedModelError(
            f"nothing revived: none of the {dead:,} dead units can be re-initialised{first}; nothing was written"
        )
    which = "the selected sites have no dead units" if args.sites else "no dead units"
    output.out.print(f"nothing revived: {which}; nothing was written", markup=False)
    return EXIT_OK


def save(revived: ReviveRun, args, output) -> None:
    """Writes OUT (atomically) and the --json summary."""
    from deadrelu.saving import save_model

    notes: list[str] = []
    save_model(revived.model, revived.output, force=args.force, notes=notes)
    revived.notes.extend(notes)
    if args.json:
        from deadrelu.files import write_json

        write_json(args.json, summary_dict(revived))


def summary_dict(revived: ReviveRun) -> dict:
    """The --json summary: input, output, per-site revival, the output check, dead before/after."""
    from deadrelu.report import tool_info

    loaded = revived.loaded
    after = {s.path: s for s in revived.after.sites} if revived.after is not None else {}
    sites = []
    for site in revived.before.sites:
        entry = {
            "path": site.path,
            "units": site.units,
            "dead_before": len(site.dead),
            "revived": revived.result.revived.get(site.path, []),
            "skipped": revived.result.skipped.get(site.path),
        }
        if site.path in after:
            entry["dead_after"] = len(after[site.path].dead)
        sites.append(entry)
    return {
        "schema": "deadrelu/revive@1",
        "tool": tool_info(),
        "model": {"path": loaded.path, "name": loaded.model.name, "sha256": loaded.sha256, "format": loaded.format},
        "output": {"path": revived.output, "format": "keras" if revived.output.endswith(".keras") else "h5"},
        "data": dict(revived.before.data),
        "sites": sites,
        "summary_before": revived.before.summary,
        "summary_after": revived.after.summary if revived.after is not None else None,
        "units_revived": revived.result.units_revived,
        "outputs_check": {"max_abs_diff": revived.max_diff, "samples": revived.samples, "tolerance": TOLERANCE},
        "modified_entries": {path: int(mask.sum()) for path, mask in revived.result.reinitialized.items()},
        "notes": revived.notes,
        **({"retrain": revived.retrain.to_dict()} if revived.retrain is not None else {}),
    }


def show(revived: ReviveRun, args, output, *, wrote: bool = True) -> None:
    """The per-site table, the output check, dead before → after, and where the files went."""
    from rich.table import Table
    from rich.text import Text

    from deadrelu.render import shorten

    result = revived.result
    after = {s.path: s for s in revived.after.sites} if revived.after is not None else {}
    rows = [site for site in revived.before.sites if site.dead]
    if rows:
        table = Table(title="revived units (ReDo)", title_justify="left", header_style="bold")
        table.add_column("site path", overflow="fold")
        table.add_column("units", justify="right")
        table.add_column("dead before", justify="right")
        table.add_column("revived", justify="right")
        if after:
            table.add_column("dead after", justify="right")
        table.add_column("skipped: reason", overflow="fold")
        for site in rows:
            count = len(result.revived.get(site.path, []))
            cells = [
                Text(shorten(site.path)),
                f"{site.units:,}",
                Text(f"{len(site.dead):,}", style="red"),
                Text(f"{count:,}", style="green" if count else "dim"),
            ]
            if after:
                dead = len(after[site.path].dead) if site.path in after else None
                cells.append(Text("–" if dead is None else f"{dead:,}", style="yellow" if dead else "green"))
            reason = result.skipped.get(site.path, "")
            if not reason and args.sites and site.path not in args.sites:
                reason = "not selected (--site)"
            cells.append(Text(reason, style="yellow"))
            table.add_row(*cells)
        output.out.print(table)
    elif wrote:
        output.out.print("no dead units: nothing to revive", markup=False)
    for note in revived.notes:
        output.note(note)
    if revived.max_diff is not None:
        output.out.print(
            Text(f"outputs unchanged: max |Δ| = {revived.max_diff:.3g} on {revived.samples:,} samples", style="green")
        )
    before = revived.before.summary
    line = f"dead units: {before['dead']:,} of {before['units']:,} ({100 * before['dead_fraction']:.1f}%)"
    if revived.after is not None:
        s = revived.after.summary
        line += f" → {s['dead']:,} ({100 * s['dead_fraction']:.1f}%)"
    output.out.print(f"{line}; {result.units_revived:,} revived", markup=False)
    if not wrote:
        return
    output.out.print(f"wrote {revived.output}", markup=False)
    if args.json:
        output.note(f"wrote summary {args.json}", style="dim")
