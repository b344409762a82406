"""`deadrelu patch`: rewrite a model's ReLUs to LeakyReLU or PReLU, keeping every trained weight.

A thin shell over `deadrelu.fixes.patch.patch_model`: it parses the flags, finds the report that
`--only dead|flagged` decides from, calls `patch_model` (which checks the slope-0 patch and raises
`OutputCheckError`, exit 4, when it fails), prints the result's view
(`deadrelu.views.notebook.patch_renderable`), writes OUT and `--json` (the result's `to_dict()`
under the command's header, `deadrelu.commands._common.result_document`).
"""

from __future__ import annotations

from deadrelu.commands._common import (
    EXIT_OK,
    INPUT_FILE,
    OUTPUT_FILE,
    add_selection_flags,
    load_from_args,
    number,
    output_model,
    report_from_args,
    result_document,
    selection_options,
)
from deadrelu.commands._retrain import add_retrain_flags, check_retrain_flags, retrain_from_args, show_comparison

ORDER = 40


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "patch",
        parents=[parents["model"], parents["data"], parents["common"]],
        help="rewrite ReLUs to LeakyReLU or PReLU, keeping the weights",
        description="Rewrite the ReLU sites of MODEL to LeakyReLU or PReLU. Every trained weight is kept, and "
        "the output loads with plain keras.models.load_model. A check verifies that the same patch with "
        "slope 0 reproduces the original outputs (on --data, or synthetic inputs); if it does not, nothing "
        "is written (exit 4). --only dead|flagged decides from a scan of --data or from --report.",
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
        "--report", type=INPUT_FILE, metavar="SCAN.json", help="a report of this model from 'deadrelu scan --json'"
    )
    parser.add_argument(
        "--json", type=OUTPUT_FILE, metavar="PATH", help="write a JSON summary of the patch (and retraining) here"
    )
    add_selection_flags(parser, "patch")
    add_retrain_flags(parser)
    return parser


def run(args, output) -> int:
    check_retrain_flags(args)
    out_path = resolve_output(args)
    loaded = load_from_args(args, output)
    result = make_patch(args, output, loaded)
    if not result.changed:
        return nothing_patched(result, output)
    comparison = None
    if args.retrain:
        # The patched model is trained in place, so OUT holds the retrained model.
        comparison = retrain_from_args(args, output, loaded.model, {f"patched ({args.to})": result.model})
    save(result, loaded, args, out_path, comparison)
    show(result, args, output, out_path)
    if comparison is not None:
        show_comparison(comparison, args, output)
    return EXIT_OK


def resolve_output(args) -> str:
    """Checks the flags that need no model, and returns OUT: fails fast, before TensorFlow loads."""
    from deadrelu.errors import UsageError
    from deadrelu.io.saving import model_output_path

    if args.only in ("dead", "flagged") and not (args.data or args.report):
        raise UsageError(
            f"--only {args.only} decides from a scan: pass --data x.npz (scanned first) "
            "or --report scan.json (from 'deadrelu scan --json')"
        )
    if args.alpha is not None and args.to != "leaky":
        raise UsageError("--alpha is the LeakyReLU slope; with --to prelu use --alpha-init")
    if args.alpha_init is not None and args.to != "prelu":
        raise UsageError("--alpha-init is the initial PReLU slope; with --to leaky use --alpha")
    return model_output_path(args.model, args.output, args.to, force=args.force)


def make_patch(args, output, loaded):
    """Finds the report if --only needs one (or --report gives one), and calls `patch_model`.

    Returns:
        The `PatchResult`.

    Raises:
        OutputCheckError: The slope-0 patch does not reproduce the original outputs (exit 4).
    """
    from deadrelu.fixes.patch import patch_model

    # --only dead/flagged decide from a scan; otherwise a report is read only when given (its dead counts are shown).
    needs_report = args.report or args.only in ("dead", "flagged")
    report = report_from_args(args, output, loaded) if needs_report else None
    slopes = {"alpha": args.alpha} if args.alpha is not None else {}
    if args.alpha_init is not None:
        slopes["alpha_init"] = args.alpha_init
    return patch_model(
        loaded.model,
        args.to,
        **slopes,
        prelu_shared_axes=None if args.prelu_shared_axes == "none" else "channel",
        **selection_options(args),
        report=report,
        data=args.data,
        batch_size=args.batch_size,
        samples=args.samples,
        rescale=args.rescale,
        skip_bad_images=args.skip_bad_images,
    )


def nothing_patched(result, output) -> int:
    """No site was rewritten: say why and write nothing.

    Returns:
        0 when no site was selected (nothing to do).

    Raises:
        UnsupportedModelError: Sites were selected but none can be rewritten (exit 2).
    """
    from deadrelu.errors import UnsupportedModelError

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


def save(result, loaded, args, out_path: str, comparison) -> None:
    """Writes OUT (atomically), then the --json: the header and `result.to_dict()`."""
    from deadrelu.io.saving import save_model

    notes: list[str] = []
    save_model(result.model, out_path, force=args.force, notes=notes)
    result.notes.extend(notes)
    if args.json:
        from deadrelu.io.files import write_json

        retrain = comparison.to_dict() if comparison is not None else None
        write_json(args.json, result_document("patch", loaded, result, output_path=out_path, retrain=retrain))


def show(result, args, output, out_path: str) -> None:
    """The result's view (every rewrite, the kept sites, the check), its notes, and where the files went."""
    from deadrelu.views.notebook import patch_renderable

    output.out.print(patch_renderable(result, rows=None, notes=False))
    for note in result.notes:
        output.note(note)
    output.out.print(f"wrote {out_path}", markup=False)
    if args.json:
        output.note(f"wrote summary {args.json}", style="dim")
