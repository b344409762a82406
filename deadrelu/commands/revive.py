"""`deadrelu revive`: re-initialise dead ReLU units (ReDo) without changing the model's outputs.

A shell over `deadrelu.revive_model`: the flags become its keywords, its result is printed
(`deadrelu.views.notebook.revive_renderable`, the view a notebook shows) and written as `--json`
(`ReviveResult.to_dict()` under the header). Its output check is the library's: a failure is an
`OutputCheckError`, exit 4, and nothing is written; with `--dormant TAU` the outputs change by
design and the check reports by how much instead. The command adds what only it does: a rescan
of the revived model, `--retrain`, and writing OUT (on the chief only, under several workers).
"""

from __future__ import annotations

from deadrelu.commands._common import (
    EXIT_OK,
    INPUT_FILE,
    OUTPUT_FILE,
    add_selection_flags,
    add_strategy_flags,
    data_options,
    load_from_args,
    non_negative_int,
    output_model,
    positive_int,
    report_from_args,
    require_scan_source,
    result_document,
    selection_options,
    strategy_scope,
    writes_here,
)
from deadrelu.commands._retrain import add_retrain_flags, check_retrain_flags, retrain_from_args, show_comparison
from deadrelu.commands.scan import add_dormant_flag

ORDER = 50


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "revive",
        parents=[parents["model"], parents["data"], parents["common"]],
        help="re-initialise dead units (ReDo), outputs unchanged",
        description="Re-initialise the dead ReLU units of MODEL (ReDo, Sokar et al. 2023): fresh incoming weights "
        "from each layer's own initializer, zero outgoing weights, so the outputs stay the same while "
        "the units fire again. Checks the outputs on the data, rescans, and writes OUT.",
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
    add_dormant_flag(
        parser,
        "ReDo proper: re-initialise the τ-dormant units (mean |output| / the site's mean ≤ TAU, dead units "
        "included), e.g. 0.1; the outputs then change by their removed contribution, which is measured "
        "and reported (max |Δ|, share of changed predictions), not refused",
    )
    parser.add_argument(
        "--report",
        type=INPUT_FILE,
        metavar="SCAN.json",
        help="take the dead units from this report ('deadrelu scan --json') instead of scanning; the outputs "
        "are checked on --data, else on the report's data file if it is there",
    )
    parser.add_argument("--json", type=OUTPUT_FILE, metavar="PATH", help="write a JSON summary of the revival here")
    parser.add_argument(
        "--check-samples",
        type=positive_int,
        default=None,
        metavar="N",
        help="compare outputs on the first N samples only (default: all of the data)",
    )
    add_selection_flags(parser, "revive")
    add_retrain_flags(parser)
    add_strategy_flags(parser)
    return parser


def run(args, output) -> int:
    check_retrain_flags(args)
    out_path = resolve_output(args)
    with strategy_scope(args, output) as strategy:  # before TensorFlow starts its devices
        return _run(args, output, out_path, strategy)


def _run(args, output, out_path: str, strategy) -> int:
    chief = writes_here(strategy, args, output, ("output", "json", "curves"))
    loaded = load_from_args(args, output)
    result = make_revival(args, output, loaded, strategy)
    if not result.units_revived:
        return nothing_revived(result, args, output)
    after = rescan(result, args, output)
    retrain = None
    if args.retrain:
        # The revived model is trained in place, so OUT holds the retrained model.
        retrain = retrain_from_args(args, output, loaded.model, {"revived": result.model})
    if chief:
        save(result, args, output, loaded, out_path, after=after, retrain=retrain)
    show(result, args, output, after=after, wrote=out_path if chief else None)
    if retrain is not None:
        show_comparison(retrain, args, output)
    return EXIT_OK


def resolve_output(args) -> str:
    """Checks the flags that need no model and returns OUT: fails fast, before TensorFlow loads."""
    from deadrelu.io.saving import model_output_path

    require_scan_source(args, "revive")
    return model_output_path(args.model, args.output, "revived", force=args.force)


def make_revival(args, output, loaded, strategy=None):
    """`deadrelu.revive_model` on MODEL with the flags: from --report (checked on --data), or a scan of --data.

    Returns:
        The `ReviveResult`.

    Raises:
        OutputCheckError: The outputs of MODEL and the revived copy differ on the data (exit 4).
    """
    from deadrelu.fixes.revive import revive_model

    options = {
        "seed": args.seed,
        "scale": args.scale,
        "dormant": args.dormant,
        **selection_options(args),
        "batch_size": args.batch_size,
        **data_options(args),
        "check_samples": args.check_samples,
        "strategy": strategy,
    }
    if args.report:
        report = report_from_args(args, output, loaded, strategy)  # read back, not scanned
        with output.progress("reviving"):
            return revive_model(loaded.model, report, data=args.data, **options)
    with output.progress("scanning") as (on_start, on_batch):
        return revive_model(loaded.model, args.data, on_start=on_start, on_batch=on_batch, **options)


def rescan(result, args, output):
    """A scan of the revived model on --data: the revived units should fire now (None without --data)."""
    if not args.data:
        return None
    from deadrelu.engine.scanner import scan

    with output.progress("rescanning") as (on_start, on_batch):
        return scan(
            result.model,
            args.data,
            batch_size=args.batch_size,
            **data_options(args),
            dormant=args.dormant,
            on_start=on_start,
            on_batch=on_batch,
        )


def nothing_revived(result, args, output) -> int:
    """No unit was re-initialised: say why and write nothing.

    Returns:
        0 when the selected sites have no dead units (nothing to do).

    Raises:
        UnsupportedModelError: There are dead units but none can be re-initialised (exit 2).
    """
    from deadrelu.errors import UnsupportedModelError

    show(result, args, output)
    if result.skipped:
        dead_by_path = {site.path: len(site.dead) for site in result.report.sites}
        dead = sum(dead_by_path.get(path, 0) for path in result.skipped)
        path, reason = next(iter(result.skipped.items()))
        raise UnsupportedModelError(
            f"nothing revived: none of the {dead:,} dead units can be re-initialised (e.g. {path}: {reason}); "
            "nothing was written"
        )
    selected = args.sites or args.layers or args.only not in (None, "all")
    kind = "dead" if args.dormant is None else f"dead or dormant (≤ {args.dormant:g})"
    which = f"the selected sites have no {kind} units" if selected else f"no {kind} units"
    output.out.print(f"nothing revived: {which}; nothing was written", markup=False)
    return EXIT_OK


def save(result, args, output, loaded, out_path: str, *, after=None, retrain=None) -> None:
    """Writes OUT (atomically) and the --json summary: `result.to_dict()` under its header."""
    from deadrelu.io.saving import save_model

    save_model(result.model, out_path, force=args.force, notes=result.notes)
    if args.json:
        from deadrelu.io.files import write_json

        document = result_document(
            "revive",
            loaded,
            result,
            output_path=out_path,
            summary_after=after.summary if after is not None else None,
            dead_after={site.path: len(site.dead) for site in after.sites} if after is not None else None,
            retrain=retrain.to_dict() if retrain is not None else None,
        )
        write_json(args.json, document)


def show(result, args, output, *, after=None, wrote: str | None = None) -> None:
    """The result's view (every site with dead units, the check, dead before → after), its notes, the files."""
    from deadrelu.views.notebook import revive_renderable

    output.out.print(revive_renderable(result, rows=None, after=after, notes=False))
    for note in result.notes:
        output.note(note)
    if wrote:
        output.out.print(f"wrote {wrote}", markup=False)
        if args.json:
            output.note(f"wrote summary {args.json}", style="dim")
