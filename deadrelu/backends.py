"""Which Keras backend deadrelu runs on: TensorFlow, JAX or PyTorch.

Keras 3 picks its backend once, when it is first imported, from the `KERAS_BACKEND` environment
variable (else `~/.keras/keras.json`, else TensorFlow). The command line decides before that
import (`select`): the backend `KERAS_BACKEND` names when it is set, otherwise TensorFlow, the one
backend every install has; a backend that is asked for but not installed is refused in one line
with the `pip` command that adds it. In Python, deadrelu runs on whatever backend Keras already
uses (`current`).

Importing this module is cheap: it never imports Keras or a backend to check one (it asks
`importlib.util.find_spec`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping

from deadrelu.errors import UsageError

TENSORFLOW = "tensorflow"
JAX = "jax"
TORCH = "torch"

# The backends deadrelu supports, in the order its messages list them.
SUPPORTED = (TENSORFLOW, JAX, TORCH)

DEFAULT = TENSORFLOW

# backend → (the module that must be importable, what installs it)
_REQUIREMENTS = {
    TENSORFLOW: ("tensorflow", "pip install 'deadrelu'"),
    JAX: ("jax", "pip install 'deadrelu[jax]'"),
    TORCH: ("torch", "pip install 'deadrelu[torch]'"),
}


def installed(backend: str) -> bool:
    """Whether `backend`'s package can be imported (checked without importing it).

    Args:
        backend: One of `SUPPORTED`.

    Returns:
        True when the backend's package (`tensorflow`, `jax` or `torch`) is installed.

    Example:
        >>> installed("jax")
        True
    """
    module, _ = _REQUIREMENTS[backend]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed package
        return False


def requested(environ: Mapping[str, str] | None = None) -> str | None:
    """The backend `KERAS_BACKEND` asks for, checked: None when the variable is unset or empty.

    Args:
        environ: The environment to read. Defaults to None (`os.environ`).

    Returns:
        "tensorflow", "jax" or "torch", or None.

    Raises:
        UsageError: `KERAS_BACKEND` names a backend deadrelu does not support, or one that is not
            installed (the message names the `pip` command that installs it).

    Example:
        >>> requested({"KERAS_BACKEND": "jax"})
        'jax'
    """
    environ = os.environ if environ is None else environ
    name = environ.get("KERAS_BACKEND", "").strip()
    if not name:
        return None
    if name not in SUPPORTED:
        raise UsageError(
            f"KERAS_BACKEND={name} is not a backend deadrelu supports; set KERAS_BACKEND to one of "
            f"{', '.join(SUPPORTED)}, or unset it for {DEFAULT}"
        )
    if not installed(name):
        module, command = _REQUIREMENTS[name]
        raise UsageError(
            f"KERAS_BACKEND={name} asks for the {name} backend, but {module} is not installed; "
            f"run `{command}`, or unset KERAS_BACKEND to use {DEFAULT}"
        )
    return name


def select(environ: Mapping[str, str] | None = None) -> str:
    """Chooses the backend of the command line, before Keras is imported; returns its name.

    The backend `KERAS_BACKEND` names when it is set and installed, otherwise TensorFlow; the
    choice is written to `KERAS_BACKEND` so that Keras, imported later, uses it
    (`~/.keras/keras.json` is not read). When Keras is already imported (the command line run
    from Python), its backend is kept and returned.

    Args:
        environ: The environment to read and set. Defaults to None (`os.environ`).

    Returns:
        "tensorflow", "jax" or "torch".

    Raises:
        UsageError: `KERAS_BACKEND` names an unsupported backend, or one that is not installed.

    Example:
        >>> select()   # KERAS_BACKEND unset
        'tensorflow'
    """
    environ = os.environ if environ is None else environ
    backend = requested(environ) or DEFAULT
    if "keras" in sys.modules:
        return current()
    if backend == DEFAULT and not installed(DEFAULT):
        raise UsageError(
            f"no Keras backend is installed; run `{_REQUIREMENTS[DEFAULT][1]}` (TensorFlow), or install "
            f"jax or torch and set KERAS_BACKEND"
        )
    environ["KERAS_BACKEND"] = backend
    return backend


def current() -> str:
    """The backend Keras runs on in this process ("tensorflow", "jax" or "torch").

    Imports Keras if it is not imported yet (which fixes its backend for the process).

    Returns:
        `keras.backend.backend()`.

    Example:
        >>> current()
        'jax'
    """
    import keras

    return keras.backend.backend()


def loaded() -> str | None:
    """The backend of the Keras already imported in this process, or None (never imports Keras).

    Returns:
        "tensorflow", "jax" or "torch", or None when Keras has not been imported.
    """
    if "keras" not in sys.modules:
        return None
    return current()


def require_tensorflow(what: str, error: type[Exception] = UsageError) -> None:
    """Refuses, in one line, a step that needs TensorFlow ops when Keras runs on another backend.

    Args:
        what: What needs TensorFlow, as the message names it ("the TensorFlow op tf.concat ...").
        error: The error to raise, a `deadrelu.errors.DeadReluError` (the command line exits
            with code 2). Defaults to `UsageError`.

    Raises:
        UsageError: (or `error`) Keras runs on JAX or PyTorch; the message says to rerun with
            `KERAS_BACKEND=tensorflow`.

    Example:
        >>> require_tensorflow("the TensorFlow op tf.concat that this file stores", error=ModelLoadError)
    """
    backend = current()
    if backend != TENSORFLOW:
        raise error(f"{what} needs TensorFlow, but Keras runs on {backend}; rerun with KERAS_BACKEND=tensorflow")
