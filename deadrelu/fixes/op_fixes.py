"""What `patch` and `revive` can do with op-level sites, and why not where they cannot.

An op-level site is a ReLU applied as a function call (`deadrelu.engine.interception`). The probe's first pass
learns how its layer applies it (`Site.applied_in`, `Site.fed_by`), and that decides:

- `patch` replaces it only where the replacement is exact: a layer's custom `activation` that is
  exactly one ReLU of its input is rewritten like a fused activation (`Dense(activation=lambda t:
  ops.relu(t))` → `Dense(activation='linear')` → LeakyReLU/PReLU), an `Activation` layer's or a
  `Lambda`'s like an `Activation('relu')` layer (replaced by the new activation layers). A ReLU
  inside `call` code is Python deadrelu cannot rewrite;
- `revive` re-initialises its units where it knows their incoming weights: the same activation
  cases (the Dense/Conv itself, or the one feeding the `Activation`/`Lambda` layer), and a layer
  whose `call` returns the ReLU of a Dense/Conv it calls (`return ops.relu(self.dense(x))`: the
  Dense's units are the site's units, and the layer's output is the site's output).

Everything else is left as it was, with the reason. Importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deadrelu.engine.sites import KIND_ACTIVATION, KIND_FUSED, KIND_OP_PREFIX, Site, SiteMap


def with_op_sites(model, site_map: SiteMap, data: Any = None) -> tuple[SiteMap, list[str]]:
    """`site_map` with the op-level sites added, when the model runs code of its own.

    Finding them runs one sample through the model and traces the probe's step
    (`deadrelu.engine.probe.find_all_sites`); a model made of Keras's own layers only is left as it is.

    Args:
        model: The `keras.Model`.
        site_map: Its layer-level sites (`find_sites(model)`).
        data: Inputs to run the sample from (anything `deadrelu.scan` takes); None: a synthetic one.

    Returns:
        The site map to select from, and notes (why op-level sites were not looked for).
    """
    from deadrelu.engine.probe import find_all_sites
    from deadrelu.errors import DataError

    if not site_map.custom_code:
        return site_map, []
    try:
        return find_all_sites(model, data), []
    except DataError as exc:
        return site_map, [f"ReLUs applied as function calls were not looked for ({exc})"]


def patch_twin(site: Site) -> tuple[Site | None, str | None]:
    """The layer-level site `deadrelu.fixes.rewriter.Rewriter` rewrites in place of an op-level one.

    Args:
        site: An op-level site.

    Returns:
        `(twin, None)`: the same site as a "fused" or "activation" site of the same layer; or
        `(None, reason)` when no exact rewrite exists.
    """
    import keras

    layer, cls = site.layer, site.layer_class
    if site.applied_in == "function" and isinstance(layer, keras.layers.Lambda):
        return dataclasses.replace(site, kind=KIND_ACTIVATION), None
    if site.applied_in == "activation":
        if isinstance(layer, keras.layers.Activation):
            return dataclasses.replace(site, kind=KIND_ACTIVATION), None
        try:
            settable = "activation" in layer.get_config()
        except Exception:  # noqa: BLE001 - a custom layer without a working get_config
            settable = False
        if settable:
            return dataclasses.replace(site, kind=KIND_FUSED), None
        return None, (
            f"applied by the activation of {cls} '{layer.name}', whose config has no 'activation' to "
            "set; give the layer an `activation` argument in get_config(), or apply a LeakyReLU yourself"
        )
    where = f"{cls}.call" if site.applied_in == "call" else f"{cls}'s {site.applied_in}"
    return None, (
        f"applied inside {where} (Python code), which deadrelu cannot rewrite; write it there as "
        "keras.ops.leaky_relu(x, negative_slope=0.01), or apply a keras.layers.LeakyReLU/PReLU"
    )


def old_text(site: Site) -> str:
    """How a patch summary names what an op-level site was, e.g. "Dense(activation=<lambda>): op:relu"."""
    attribute = site.applied_in if site.applied_in in ("activation", "function") else None
    if attribute is None:
        return f"{site.layer_class}.call: {site.kind}"
    fn = getattr(site.layer, attribute, None)
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return f"{site.layer_class}({attribute}={name}): {site.kind}"


def revive_twin(site: Site) -> tuple[Site | None, Any, str | None]:
    """What `revive` edits for an op-level site's units.

    Args:
        site: An op-level site.

    Returns:
        `(twin, producer, None)`: `twin` is the site as `deadrelu.fixes.graph.LayerGraph.find_owner` reads
        it ("fused": the layer's own units; "activation": the units of the Dense/Conv feeding it),
        or, with `producer` set, the site itself, whose units are `producer`'s (a layer whose
        `call` returns `relu(producer(x))`); or `(None, None, reason)`.
    """
    import keras

    from deadrelu.fixes.graph import is_linear, weighted_kind

    layer, cls = site.layer, site.layer_class
    if site.applied_in == "activation" and weighted_kind(layer) is not None:
        return dataclasses.replace(site, kind=KIND_FUSED), None, None
    if (site.applied_in == "activation" and isinstance(layer, keras.layers.Activation)) or (
        site.applied_in == "function" and isinstance(layer, keras.layers.Lambda)
    ):
        return dataclasses.replace(site, kind=KIND_ACTIVATION), None, None
    producer = site.fed_by
    if site.applied_in == "activation":
        reason = f"applied by the activation of {cls} '{layer.name}', which has no per-unit incoming weights"
    elif producer is None:
        reason = (
            f"applied inside {cls}.call to something other than the output of a Dense/Conv that the call "
            "returns: revive cannot tell which weights make its units"
        )
    elif weighted_kind(producer) is None:
        reason = f"fed by {type(producer).__name__} '{producer.name}', which has no per-unit incoming weights"
    elif not is_linear(producer):
        reason = f"fed by {type(producer).__name__} '{producer.name}', which applies its own activation first"
    else:
        return site, producer, None
    return None, None, reason


def actions(site, rebuildable: bool) -> set[str]:
    """Which of "revive" and "patch" can act on a reported site, judged from the report alone.

    Args:
        site: A `deadrelu.report.SiteReport` (its kind, layer class and params).
        rebuildable: Whether the model is Sequential or Functional (neither command edits a
            subclassed model's own graph).

    Returns:
        A subset of {"revive", "patch"}; either may still leave single sites for reasons of the
        graph around them (a ReLU after `Add`, a unit read by a `Lambda`), which they say.
    """
    if not rebuildable or site.params.get("time_steps"):
        return set()  # a subclassed model, or a SimpleRNN's recurrence
    if not site.kind.startswith(KIND_OP_PREFIX):
        return {"revive", "patch"}
    applied_in = site.params.get("applied_in")
    found = set()
    if applied_in in ("activation", "function"):
        found.add("patch")
        if site.layer in ("Activation", "Lambda") or _weighted_class(site.layer):
            found.add("revive")
    elif applied_in == "call" and site.params.get("fed_by"):
        found.add("revive")
    return found


def _weighted_class(name: str) -> bool:
    return name == "Dense" or name.startswith(("Conv", "DepthwiseConv", "SeparableConv"))
