"""Model rebuilds: the same graph made again from the layers' configs, some layers changed.

`Rebuilder` rebuilds a Sequential or Functional model layer by layer with Keras's own layers: each
layer from its config, nested models by the same rules, shared layers once (so they stay shared);
then every weight is copied from the old layers to their new twins. Subclasses decide what a layer
becomes, what follows it, the input shapes of nested models and the new weights:

- `Rewriter` (behind `deadrelu.patch`): a selected site becomes the built-in activation layers that
  compute the same function with a negative slope (see `deadrelu.fixes.patch` for the exact rewrite of
  caps and thresholds);
- `deadrelu.fixes.prune` makes layers with fewer units and copies the remaining weights.

Importing this module is cheap: Keras is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from deadrelu._keras_compat import (
    child_layers,
    declared_dtype,
    first_call_output_shape,
    is_functional,
    keras_history,
    sequential_layers,
)
from deadrelu.engine.sites import KIND_ACTIVATION, KIND_FUSED, Site
from deadrelu.errors import UnsupportedModelError, UsageError

LEAKY, PRELU = "leaky", "prelu"


class Rebuilder:
    """Rebuilds a model layer by layer from the layers' configs, then copies the weights.

    Functional models go through `keras.models.clone_model` with a `clone_function` (new layers
    from each layer's config) and a `call_function` (layers in `post` applied after a new layer).
    `call_function` does not apply to Sequential models, so their layer list is rebuilt here.
    Nested models are rebuilt by the same `clone_function`, so both kinds nest in any order.

    Subclasses override `new_layer` (what a leaf layer becomes), `changes` (whether a subclassed
    sub-model holds a layer that must change), `input_shape` (a nested model's input shapes) and
    `new_values` (the new layer's weights).

    Args:
        model: A Sequential or Functional `keras.Model` (`rebuildable`).

    Attributes:
        memo: Per `id(old layer)`, its new twin (keeps sharing intact).
        post: Per `id(new layer)`, layers applied after it, in order.
        pairs: `(old, new)` layers whose weights carry over.
        notes: One-line remarks for the user.

    Example:
        >>> new_model = Rebuilder(model).run()  # an exact copy, built from configs
    """

    def __init__(self, model):
        self.model = model
        self.memo: dict[int, object] = {}
        self.post: dict[int, list] = {}
        self.pairs: list[tuple[object, object]] = []
        self.notes: list[str] = []

    def run(self):
        """Rebuilds the model and copies its weights.

        Returns:
            The new `keras.Model`.
        """
        new = self._clone(self.model)
        self._copy_weights()
        return new

    # -- hooks -----------------------------------------------------------------------------

    def new_layer(self, layer):
        """The new twin of a leaf layer. Defaults to a copy from its config (`plain_clone`)."""
        return self.plain_clone(layer)

    def changes(self, model) -> bool:
        """Whether a sub-model that cannot be rebuilt (subclassed) holds a layer that must change."""
        return False

    def unchanged_message(self, model) -> str:
        """Why a subclassed sub-model holding a layer that must change stops the rebuild."""
        return f"{model.name!r} (a sub-model) is a subclassed model: it cannot be rebuilt layer by layer"

    def input_shape(self, tensor) -> tuple:
        """The batch shape of a rebuilt model's input, given the old input tensor. Defaults to its shape."""
        return tuple(tensor.shape)

    def new_values(self, old, new) -> list[tuple[object, object, object]]:
        """What each of the new layer's variables receives.

        Returns:
            `(old variable or None, new variable, value)` triples. Defaults to every old weight,
            matched to the new one by name (by order where names repeat).
        """
        old_weights, new_weights = old.weights, new.weights
        if len(old_weights) != len(new_weights):
            raise RuntimeError(
                f"layer {old.name!r} has {len(old_weights)} weights but its rebuilt copy {len(new_weights)}"
            )
        old_names = [w.name for w in old_weights]
        if len(set(old_names)) == len(old_names) and sorted(old_names) == sorted(w.name for w in new_weights):
            by_name = {w.name: w for w in new_weights}
            targets = [by_name[name] for name in old_names]
        else:  # names repeat inside the layer (wrappers): same class, same config, same order
            targets = new_weights
        return [(source, target, source.numpy()) for source, target in zip(old_weights, targets)]

    # -- the rebuild -----------------------------------------------------------------------

    # Called by clone_model for every layer (and by us for Sequential layers).
    def _clone(self, layer):
        import keras

        key = id(layer)
        if key in self.memo:
            return self.memo[key]
        if isinstance(layer, keras.Model):
            if not rebuildable(layer):
                if self.changes(layer):
                    raise UnsupportedModelError(self.unchanged_message(layer))
                new = self.plain_clone(layer)
            elif isinstance(layer, keras.Sequential):
                new = self._sequential(layer)
            else:
                new = self._functional(layer)
        else:
            new = self.new_layer(layer)
        self.memo[key] = new
        return new

    def _call(self, layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        for extra in self.post.get(id(layer), ()):
            outputs = extra(outputs)
        return outputs

    def _functional(self, model):
        import keras

        # Our own Input tensors: clone_model would name them after the tensors ("keras_tensor_3")
        # instead of after the input layers.
        inputs = keras.tree.map_structure(
            lambda x: keras.Input(batch_shape=self.input_shape(x), dtype=x.dtype, name=_input_name(x)), model.input
        )
        new = keras.models.clone_model(
            model, input_tensors=inputs, clone_function=self._clone, call_function=self._call
        )
        new.trainable = model.trainable
        return new

    def _sequential(self, model):
        import keras

        new_layers = []
        for layer in model.layers:
            new = self._clone(layer)
            new_layers.append(new)
            new_layers.extend(self.post.get(id(new), ()))
        first = next(iter(sequential_layers(model)), None)
        if isinstance(first, keras.layers.InputLayer):
            shape = self.input_shape(first.output) if getattr(first, "output", None) is not None else first.batch_shape
            new_layers.insert(0, keras.Input(batch_shape=shape, dtype=declared_dtype(first), name=first.name))
        new = keras.Sequential(new_layers, name=model.name, trainable=model.trainable)
        if model.compiled:
            try:
                new.compile_from_config(model.get_compile_config())
            except Exception as exc:  # noqa: BLE001 - compiling is a courtesy, the weights are what matter
                self.notes.append(
                    f"could not carry over the compile settings of {model.name!r} ({exc}); "
                    "compile the new model before training it"
                )
        return new

    def plain_clone(self, layer, config: dict | None = None):
        """A new layer of the same class from `config` (defaults to the layer's own), weights to carry over."""
        try:
            new = layer.__class__.from_config(layer.get_config() if config is None else config)
        except Exception as exc:
            raise UnsupportedModelError(
                f"cannot rebuild layer {layer.name!r} ({type(layer).__name__}) from its config ({exc}); "
                "give it a get_config() that returns its constructor arguments"
            ) from exc
        self.pairs.append((layer, new))
        return new

    def _copy_weights(self) -> None:
        """Gives every new layer its weights (`new_values`); every old weight must have been used."""
        copied = set()
        for old, new in self.pairs:
            for source, target, value in self.new_values(old, new):
                if tuple(np.shape(value)) != tuple(target.shape):
                    where = source.path if source is not None else f"{new.name}/{target.name}"
                    raise RuntimeError(f"weight {where} has shape {np.shape(value)} but its copy {target.shape}")
                target.assign(value)
                if source is not None:
                    copied.add(id(source))
        missing = [w.path for w in self.model.weights if id(w) not in copied]
        if missing:
            raise RuntimeError(f"{len(missing)} weights were not carried over, e.g. {missing[:3]}")


class Rewriter(Rebuilder):
    """Rebuilds a model with the selected sites rewritten to LeakyReLU or PReLU (`deadrelu.patch`).

    Args:
        model: A Sequential or Functional `keras.Model` (`rebuildable`).
        selected: The sites to rewrite.
        to: `LEAKY` or `PRELU`.
        alpha: Negative slope of the leaky rewrite.
        alpha_init: Initial PReLU slope.
        shared_axes: "channel" (one PReLU alpha per channel) or None (one per element).

    Attributes:
        rewrites: Per `id(old site layer)`, the fields of its `deadrelu.fixes.patch.Rewrite`: `path`,
            `kind`, `layer`, `old`, `new`, `new_layers`.
        skipped: Per site path, why the selected site was left as it was.
        notes: One-line remarks for the user.

    Example:
        >>> rewriter = Rewriter(model, sites, to=LEAKY, alpha=0.01, alpha_init=0.25, shared_axes="channel")
        >>> patched = rewriter.run()
    """

    def __init__(
        self, model, selected: Iterable[Site], *, to: str, alpha: float, alpha_init: float, shared_axes: str | None
    ):
        super().__init__(model)
        self.to, self.alpha, self.alpha_init, self.shared_axes = to, alpha, alpha_init, shared_axes
        selected = list(selected)
        self.sites = {id(site.layer): site for site in selected if site.recurrent is None}
        self.rewrites: dict[int, dict] = {}
        self.skipped: dict[str, str] = {}
        self.taken = set(_all_names(model))
        # Recurrent layers (and the Bidirectional wrappers holding them) whose cell activation becomes leaky.
        self.recurrent: dict[int, list[Site]] = {}
        for site in selected:
            if site.recurrent is None:
                continue
            if to != LEAKY:
                self.skipped[site.path] = (
                    f"the {site.layer_class} layer's activation runs inside its cell, where no layer can follow "
                    "it, so it cannot learn a slope per unit (PReLU); --to leaky sets it to LeakyReLU"
                )
                continue
            self.recurrent.setdefault(id(_recurrent_owner(model, site.layer)), []).append(site)

    def run(self):
        """Rebuilds the model and copies its weights.

        Returns:
            The new `keras.Model`; `rewrites`, `skipped` and `notes` say what was done.
        """
        new = self._clone(self.model)
        for site in self.sites.values():
            if id(site.layer) not in self.rewrites:
                self.skipped[site.path] = self._skip_reason(site)
        self._copy_weights()
        return new

    def new_layer(self, layer):
        if id(layer) in self.recurrent:
            return self._rewrite_recurrent(layer, self.recurrent[id(layer)])
        site = self.sites.get(id(layer))
        return self.plain_clone(layer) if site is None else self._rewrite(layer, site)

    def changes(self, model) -> bool:
        sites = [*self.sites.values(), *(site for sites in self.recurrent.values() for site in sites)]
        return any(_contains(model, site.layer) for site in sites)

    def _rewrite_recurrent(self, layer, sites: list[Site]):
        """A SimpleRNN, GRU or LSTM (or the Bidirectional holding it) whose cell activation is
        `LeakyReLU(negative_slope=alpha)`: the cell applies it where it applied the ReLU (an LSTM to
        its candidate and its cell state alike), with the same weights; it loads in plain Keras."""
        import keras

        leaky = keras.layers.LeakyReLU(negative_slope=self.alpha, name=self._unique(f"{sites[0].layer.name}_leaky"))
        config = layer.get_config()
        if layer is sites[0].layer:
            config["activation"] = leaky
        else:  # Bidirectional: both directions run the wrapped layer's config (or the given backward one)
            for key in ("layer", "backward_layer"):
                if isinstance(config.get(key), dict):
                    config[key]["config"]["activation"] = keras.saving.serialize_keras_object(leaky)
            wrapped = {s.layer.name for s in sites}
            both = {layer.forward_layer.name, layer.backward_layer.name}
            if wrapped != both:
                self.notes.append(
                    f"{layer.name}: both directions of the Bidirectional layer were made leaky "
                    "(they share one activation setting)"
                )
        new = self.plain_clone(layer, config)
        for site in sites:
            inner = site.layer
            self.rewrites[id(inner)] = {
                "path": site.path,
                "kind": site.kind,
                "layer": site.layer_class,
                "old": f"{site.layer_class}(activation={site.activation!r})",
                "new": f"{site.layer_class}(activation=LeakyReLU(negative_slope={self.alpha:g}))",
                "new_layers": [new.name],
            }
        roles = {site.role for site in sites if site.role is not None}
        if "candidate" in roles and "state" not in roles and isinstance(sites[0].layer, keras.layers.LSTM):
            self.notes.append(
                f"{sites[0].layer.name}: an LSTM applies one activation to its candidate and its cell state, "
                "so both are leaky now"
            )
        return new

    def unchanged_message(self, model) -> str:
        return subclassed_message(model).replace("is a subclassed model", "(a sub-model) is a subclassed model", 1)

    def _rewrite(self, layer, site: Site):
        """The new layer taking `layer`'s place; its trailing activation layers go to `self.post`."""
        if site.kind == KIND_FUSED:
            config = layer.get_config()
            config["activation"] = "linear"
            new = self.plain_clone(layer, config)
            chain = self._chain(layer, site, keep_name=False)
            self.post[id(new)] = chain
            old = f"{site.layer_class}(activation={site.activation!r})"
            new_text = f"{site.layer_class}(activation='linear') → " + " → ".join(self._describe(c) for c in chain)
        else:
            chain = self._chain(layer, site, keep_name=True)
            new, self.post[id(chain[0])] = chain[0], chain[1:]
            old = (
                f"Activation({site.activation!r})"
                if site.kind == KIND_ACTIVATION
                else f"ReLU({_relu_args(site.max_value, None, site.threshold)})"
            )
            new_text = " → ".join(self._describe(c) for c in chain)
        self.rewrites[id(layer)] = {
            "path": site.path,
            "kind": site.kind,
            "layer": site.layer_class,
            "old": old,
            "new": new_text,
            "new_layers": [c.name for c in chain],
        }
        return new

    def _chain(self, layer, site: Site, *, keep_name: bool) -> list:
        """The built-in activation layers equivalent to the site with a negative slope."""
        import keras

        cap, threshold = site.max_value, site.threshold
        plain = cap is None and not threshold
        common = {"dtype": layer.dtype_policy, "trainable": layer.trainable}
        name = layer.name if keep_name else self._unique(f"{layer.name}_{self.to}")
        if self.to == LEAKY:
            if plain:
                return [keras.layers.LeakyReLU(negative_slope=self.alpha, name=name, **common)]
            return [
                keras.layers.ReLU(max_value=cap, negative_slope=self.alpha, threshold=threshold, name=name, **common)
            ]
        prelu = keras.layers.PReLU(
            alpha_initializer=keras.initializers.Constant(self.alpha_init),
            shared_axes=self._shared_axes(layer, site),
            name=name,
            **common,
        )
        if plain:
            return [prelu]
        # Identity below the threshold (shifted by it), the site's cap above: PReLU then scales
        # only what lies below the threshold. See the module docstring.
        clip = keras.layers.ReLU(
            max_value=cap, negative_slope=1.0, threshold=threshold, name=self._unique(f"{layer.name}_clip"), **common
        )
        return [clip, prelu]

    def _shared_axes(self, layer, site: Site) -> list[int] | None:
        shape = _output_shape(layer)
        if self.shared_axes is None:
            if any(dim is None for dim in shape[1:]):
                raise UsageError(
                    f"one PReLU alpha per element needs a fixed output shape, but {site.path!r} outputs "
                    f"{tuple(shape)}; use prelu_shared_axes='channel' (--prelu-shared-axes channel)"
                )
            return None
        rank = len(shape)
        channel = rank - 1 if site.channel_axis == -1 else site.channel_axis
        axes = [axis for axis in range(1, rank) if axis != channel]
        return axes or None

    def _describe(self, layer) -> str:
        return _describe(layer, self.shared_axes)

    def _unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self.taken:
            candidate, n = f"{name}_{n}", n + 1
        self.taken.add(candidate)
        return candidate

    def _skip_reason(self, site: Site) -> str:
        holder = site.path.rsplit("/", 2)[-2] if "/" in site.path else self.model.name
        return (
            f"it sits inside {holder!r}, a layer that is not a Sequential or Functional model, "
            "so its activation cannot be followed by a new layer"
        )


# -- helpers --------------------------------------------------------------------------------


def _recurrent_owner(model, layer):
    """The layer of the model's graph that holds a recurrent site's layer: itself, or the
    `Bidirectional` wrapper whose forward or backward layer it is."""
    for candidate in child_layers(model, recursive=True):
        if type(candidate).__name__ == "Bidirectional" and layer in (candidate.forward_layer, candidate.backward_layer):
            return candidate
    return layer


def rebuildable(model) -> bool:
    """True for a model the rewriter can rebuild: Sequential or Functional, not subclassed."""
    return is_functional(model)


def subclassed_message(model) -> str:
    """Why a subclassed model cannot be patched, and what to do instead."""
    return (
        f"{model.name!r} is a subclassed model ({type(model).__name__}): its call() is Python code, so "
        "deadrelu cannot rebuild it with new activation layers. Build it in code with "
        "activation=keras.layers.LeakyReLU(negative_slope=0.01) (or PReLU layers) and copy the weights "
        "over, or use 'deadrelu scan' / 'deadrelu revive', which work on subclassed models"
    )


def _all_names(model) -> Iterable[str]:
    """Every layer name in the model, nested ones included (new names must not collide)."""
    stack, seen = [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer.name
        stack.extend(sequential_layers(layer))
        stack.extend(child_layers(layer))


def _input_name(tensor) -> str | None:
    history = keras_history(tensor)
    return getattr(history.operation, "name", None) if history is not None else None


def _contains(container, layer) -> bool:
    return any(child is layer for child in child_layers(container, recursive=True))


def _output_shape(layer) -> tuple:
    """Shape (batch axis included) of the layer's output in the original graph."""
    try:
        return first_call_output_shape(layer)
    except (AttributeError, IndexError):
        pass
    try:
        return tuple(layer.output.shape)
    except Exception:  # noqa: BLE001 - a layer never called
        raise UnsupportedModelError(
            f"layer {layer.name!r} has never been called, so its output shape is unknown; build the model "
            "(call it on an input, or give it an Input) before patching it"
        ) from None


def _relu_args(cap, slope, threshold) -> str:
    parts = []
    if cap is not None:
        parts.append(f"max_value={cap:g}")
    if slope is not None:
        parts.append(f"negative_slope={slope:g}")
    if threshold:
        parts.append(f"threshold={threshold:g}")
    return ", ".join(parts)


def _describe(layer, shared_axes: str | None) -> str:
    """A short description of a new activation layer, e.g. "PReLU(alpha_init=0.25, per channel) 'x_prelu'"."""
    import keras

    if isinstance(layer, keras.layers.PReLU):
        init = getattr(layer.alpha_initializer, "value", None)
        per = "per channel" if shared_axes == "channel" else "per element"
        text = f"PReLU(alpha_init={init:g}, {per})" if init is not None else f"PReLU({per})"
    elif isinstance(layer, keras.layers.LeakyReLU):
        text = f"LeakyReLU(negative_slope={layer.negative_slope:g})"
    else:
        text = f"ReLU({_relu_args(layer.max_value, layer.negative_slope, layer.threshold)})"
    return f"{text} {layer.name!r}"
