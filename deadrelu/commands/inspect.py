"""`deadrelu inspect`: list a model's ReLU sites and other activations, without data."""

from __future__ import annotations

from deadrelu.commands._common import EXIT_OK, load_from_args

ORDER = 20


def register(subparsers, parents):
    return subparsers.add_parser("inspect", parents=[parents["model"], parents["common"]],
                                 help="list the ReLU sites, without data")


def run(args, output) -> int:
    from deadrelu.render import inspect_table
    from deadrelu.sites import find_sites

    loaded = load_from_args(args)
    site_map = find_sites(loaded.model)
    output.out.print(inspect_table(site_map, loaded.repairs))
    output.out.print(f"{loaded.model.name}: {len(site_map.sites)} ReLU sites, {len(site_map.others)} other "
                     f"activations (format {loaded.format})")
    return EXIT_OK
