"""The fused statistics kernel: deadrelu's own TensorFlow CPU ops, built once on the user's machine.

On TensorFlow, a site's per-unit statistics written with TensorFlow's ops take four or five passes
over the activations (a sign, two sums over positions, a max-pool; more for gradients), and on a
CPU those passes cost a scan about a third of a forward pass. `site_stats.cc` computes them all in
one pass, and a site's pre-activation statistics (`deadrelu_preact_stats`: per unit the maximum,
minimum, and float64 sums of z and z²) in another. In the forward step, a layer-level site whose
ReLU is Keras's own (channels last) is applied by `deadrelu_relu_site_stats`, which reads z once for
the ReLU's output and both sets of statistics (reading z beside the output took two passes more and
TensorFlow's fusion of the layer's bias and ReLU). It is compiled against the installed TensorFlow
with the machine's C++ compiler the first time a scan needs it (once: about 10 s on 2 cores), then
loaded from the cache; `deadrelu.kernel.build` holds the compiler, the cache key, the lock between
two processes building at once and the record of a failed build. `python -m deadrelu.kernel build`
builds it ahead of time (for images and CI), `python -m deadrelu.kernel status` says where it stands.

Without a compiler, or when the build fails, deadrelu says so once (a `RuntimeWarning`; the command
line prints it after its work) and uses TensorFlow's ops: the same numbers, slower — a NaN or ±inf
output (a diverged model) included: both count it in `non_finite` and read it as zero everywhere
else. A failed build is recorded and not tried again until the source, the compiler or TensorFlow
changes. The kernel is used on CPUs only (no GPU visible to TensorFlow), and never on the JAX and
PyTorch backends (their steps reduce with `keras.ops`).

Environment:
    DEADRELU_KERNEL: "auto" (build and use it when possible) or "off" (TensorFlow's ops only; on
        JAX, `jax.jit`'s default compiler options, see `deadrelu.engine.steps_jax`). Defaults to "auto".
    DEADRELU_CACHE_DIR: Where the built library is kept. Defaults to `$XDG_CACHE_HOME/deadrelu`,
        else `~/.cache/deadrelu`.
    CXX: The C++ compiler. Defaults to `c++`, else `g++`, else `clang++`, whichever is found.

Example:
    >>> import deadrelu.kernel as kernel
    >>> kernel.status()
    'built: /home/me/.cache/deadrelu/site_stats-3f2a….so'
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import deadrelu.kernel.build as build
from deadrelu.kernel.build import BuildError

MODES = ("auto", "off")


class Loaded(NamedTuple):
    """The loaded library: its op module, its path, and whether this call built it."""

    module: Any
    path: Path
    built: bool


def mode() -> str:
    """`DEADRELU_KERNEL`, checked: "auto" (the default) or "off".

    Raises:
        UsageError: `DEADRELU_KERNEL` is neither "auto" nor "off".
    """
    value = os.environ.get("DEADRELU_KERNEL", "auto").strip().lower() or "auto"
    if value not in MODES:
        from deadrelu.errors import UsageError

        raise UsageError(f"DEADRELU_KERNEL={value!r} is not one of {', '.join(MODES)}: unset it or set it to 'off'")
    return value


def enabled() -> bool:
    """Whether the kernel should be used: TensorFlow is the backend and `DEADRELU_KERNEL` is not "off".

    Cheap (builds nothing): the probe calls it to decide, `ops()` then builds or loads.

    Raises:
        UsageError: `DEADRELU_KERNEL` is neither "auto" nor "off".
    """
    if mode() == "off":
        return False
    import keras

    return keras.backend.backend() == "tensorflow"


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU: the kernel's ops are CPU ops, so scans there use TensorFlow's."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def ops() -> Any | None:
    """The loaded op module, or None.

    Its ops, all on float32 `[samples, positions, units]` (units last) and `valid` (`[samples]` of 1
    and 0 for padding rows, or an empty tensor: every row counts), one number per unit out:
    `deadrelu_site_stats(output, valid, cap=, capped=)` → (fires, sample_fires, sum_abs, max,
    saturated, non_finite); `deadrelu_grad_stats(output, grad, valid, cap=, capped=)` → (grad_abs,
    grad_nonzero); `deadrelu_preact_stats(z, valid)` → (pre_max float32, pre_min float32, pre_sum
    float64, pre_sumsq float64), NaN, ±inf and subnormal z read as 0, -inf/+inf/0/0 without rows,
    the same bits on every run and thread count; `deadrelu_relu_site_stats(z, valid, threshold=,
    cap=, capped=)` on z [samples, ..., units] → (a, then the six of `deadrelu_site_stats` on a, then
    the four of `deadrelu_preact_stats` on z), a being Keras's relu of z (z's shape, bit for bit as
    TensorFlow computes it, NaN and ±inf included; padding rows get theirs too).

    None when `enabled()` is false, when TensorFlow sees a GPU (the ops are CPU ops), or when
    the kernel could not be built (`status()` says why; a `RuntimeWarning` says it once).
    """
    if off_reason() is not None:
        return None
    return _load()[0]


def status() -> str:
    """One line on the kernel: "built: PATH", "off: …" or "unavailable: …", with the reason.

    Builds the kernel if a scan would and the cache has none (`python -m deadrelu.kernel status`
    reports without building).

    Example:
        >>> kernel.status()
        'off: DEADRELU_KERNEL=off (TensorFlow's ops are used)'
    """
    off = off_reason()
    if off is not None:
        return f"off: {off} (TensorFlow's ops are used)"
    module, reason = _load()
    return f"built: {reason}" if module is not None else f"unavailable: {reason}"


def off_reason() -> str | None:
    """Why scans here do not use the kernel (another backend, `DEADRELU_KERNEL=off`, a GPU), or None.

    Raises:
        UsageError: `DEADRELU_KERNEL` is neither "auto" nor "off".
    """
    if not enabled():
        import keras

        backend = keras.backend.backend()
        return "DEADRELU_KERNEL=off" if backend == "tensorflow" else f"the Keras backend is {backend}"
    if gpu_visible():
        return "TensorFlow sees a GPU, and the kernel is for CPUs"
    return None


def load(*, retry: bool = False) -> Loaded:
    """Loads the kernel's library, building it first when the cache has none.

    Whether scans use it is `ops()`'s decision; this loads it wherever TensorFlow runs (a test of
    the ops themselves, `python -m deadrelu.kernel build`).

    Args:
        retry: Build even when a failed build is recorded for this source, compiler and TensorFlow.

    Returns:
        A `Loaded` (module, path, whether this call built it).

    Raises:
        BuildError: It cannot be built, or a failed build is recorded (without `retry`), or the
            library does not load.
    """
    import tensorflow as tf

    path, built = build.ensure_built(tf, retry=retry)
    try:
        return Loaded(_load_library(tf, path), path, built)
    except tf.errors.OpError:
        path.unlink(missing_ok=True)  # a damaged file in the cache: build it anew
    path, built = build.ensure_built(tf, retry=retry)
    try:
        return Loaded(_load_library(tf, path), path, built)
    except tf.errors.OpError as error:
        raise BuildError(f"{path} does not load: {_first_line(error)}") from None


@functools.cache
def _load_library(tf, path: Path) -> Any:
    # TensorFlow registers the ops process-wide: one load per file and process.
    library = tf.load_op_library(str(path))
    _register_relu_gradient(tf)
    return library


def _register_relu_gradient(tf) -> None:
    """Gives `deadrelu_relu_site_stats` the gradient of the ReLU it applies (once per process).

    Its output `a` is Keras's ReLU of z, so ∂a/∂z is TensorFlow's own `ReluGrad` on `a` (1 where
    a > 0), and a bias folded into the op (z = input + bias) gets `BiasAddGrad` of that: the
    gradient step may then apply a plain ReLU site by the kernel under a tape, and the weights'
    gradients are those of the model's own ReLU and bias. The statistics outputs have no gradient.
    Only sites without a threshold or cap are fused under a tape (see
    `deadrelu.engine.instrumentation.plain_relu`), where this is the exact derivative.
    """

    def relu_site_stats_grad(op, grad_a, *_):
        grad_z = tf.raw_ops.ReluGrad(gradients=grad_a, features=op.outputs[0])
        # A folded bias gets BiasAdd's own gradient (a BatchNormalization's shift: the same sums).
        folded = op.inputs[2].shape.num_elements() != 0
        grad_bias = tf.raw_ops.BiasAddGrad(out_backprop=grad_z, data_format="NHWC") if folded else None
        return grad_z, None, grad_bias

    with contextlib.suppress(KeyError):  # registered already (another cached library path in this process)
        tf.RegisterGradient("DeadreluReluSiteStats")(relu_site_stats_grad)


# Once per process: the first scan that needs the kernel builds or loads it, later ones reuse it.
@functools.cache
def _load() -> tuple[Any | None, str]:
    """`load()`, or why not: (module or None, path or reason)."""
    try:
        loaded = load()
    except (OSError, BuildError) as error:
        # Any failure leaves TensorFlow's ops, which give the same numbers. The command line says
        # so after its work (`failure`), so that an error of the user's input stays one line.
        reason = _first_line(error)
        warnings.warn(f"deadrelu: {unavailable_note(reason)}", RuntimeWarning, stacklevel=2)
        return None, reason
    return loaded.module, str(loaded.path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def failure() -> str | None:
    """Why this process could not build or load the kernel, if a scan tried to; else None.

    Never builds anything (the command line asks after its work, to print `unavailable_note`).
    """
    if _load.cache_info().currsize == 0:
        return None
    module, reason = _load()
    return None if module is not None else reason


def unavailable_note(reason: str) -> str:
    """The one line that tells a user the scan ran on TensorFlow's ops, why, and how to retry."""
    return (
        f"the fused statistics kernel is unavailable ({reason}); the scan used TensorFlow's ops "
        f"(the same numbers, slower). {build.RETRY_HINT}; DEADRELU_KERNEL=off silences this"
    )
