"""`deadrelu inspect`: list a model's ReLU sites and other activations, without data.

ReLUs applied as function calls (op-level sites) are found while the model runs: when the model
runs code of its own, inspect runs one synthetic sample through it and traces the scan's step,
as a scan's first batch does (`deadrelu.engine.probe.find_all_sites`), and says when it cannot.
"""

from __future__ import annotations

from deadrelu.commands._common import EXIT_OK, load_from_args

ORDER = 20


def register(subparsers, parents):
    return subparsers.add_parser(
        "inspect", parents=[parents["model"], parents["common"]], help="list the ReLU sites, without data"
    )


def run(args, output) -> int:
    from deadrelu.engine.sites import find_sites
    from deadrelu.fixes.op_fixes import with_op_sites
    from deadrelu.views.terminal import inspect_table

    loaded = load_from_args(args)
    site_map, notes = with_op_sites(loaded.model, find_sites(loaded.model))
    output.out.print(inspect_table(site_map, loaded.repairs))
    for note in notes + site_map.notes:
        output.note(note)
    ops = sum(site.op_level for site in site_map.sites)
    found = f" ({ops} applied as function calls, found on one synthetic sample)" if ops else ""
    output.out.print(
        f"{loaded.model.name}: {len(site_map.sites)} ReLU sites{found}, {len(site_map.others)} other "
        f"activations (format {loaded.format})"
    )
    return EXIT_OK
