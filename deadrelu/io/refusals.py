"""Why Keras cannot rebuild a model file, said as a `ModelLoadError` that tells how to fix it.

`deadrelu.io.loading` rebuilds stored configurations with Keras 3. When Keras refuses, its error
is read here (`explain`): a class the file uses that is not part of Keras (pass `custom_objects`),
a lambda Keras's safe mode refuses (pass `unsafe`), weights that do not fit the configuration, or
Keras's own reason in one line. Only the errors Keras raises for such a file are explained
(`rebuild_errors`); anything else is a bug in deadrelu and propagates (exit 3).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator

from deadrelu.errors import InternalError, ModelLoadError
from deadrelu.io.legacy import first_line

# What Keras raises for a stored configuration or weights it cannot rebuild: ValueError for most of
# its checks (unknown classes, shapes that do not fit, lambdas refused by safe mode), TypeError for
# arguments a class does not take, KeyError / IndexError / RuntimeError for a graph configuration
# that does not hold together (a missing key, an inbound node or layer that is not there),
# NotImplementedError for what the backend lacks, OSError for weights h5py cannot read.
_REBUILD_ERRORS = (ValueError, TypeError, KeyError, IndexError, RuntimeError, NotImplementedError, OSError)
# What Python code stored in the file (a lambda, a custom layer) raises when Keras runs it to
# rebuild the model: a name a Keras 2 lambda expects, an API TensorFlow has since removed, ...
_STORED_CODE_ERRORS = (NameError, AttributeError, ImportError, ArithmeticError, AssertionError)


def rebuild_errors(*, stored_code: bool) -> tuple[type[BaseException], ...]:
    """The exceptions that mean "Keras cannot rebuild this file", not a bug in deadrelu.

    Args:
        stored_code: Whether code from outside Keras runs while the model is rebuilt (`unsafe`
            lambdas, `custom_objects`): its errors are the file's too.

    Returns:
        The exception classes; on TensorFlow also `tf.errors.OpError` (an op run while building).
    """
    errors = _REBUILD_ERRORS + (_STORED_CODE_ERRORS if stored_code else ())
    tf = sys.modules.get("tensorflow")  # never imported for this: only a loaded TensorFlow runs ops
    op_error = getattr(getattr(tf, "errors", None), "OpError", None)
    return errors + (op_error,) if isinstance(op_error, type) else errors


@contextlib.contextmanager
def explained(path: str, *, stored_code: bool) -> Iterator[None]:
    """Turns an error Keras raises while rebuilding a model into a `ModelLoadError` (see `explain`).

    Only what Keras (or code stored in the file) raises for a file it cannot rebuild is the file's
    fault (`rebuild_errors`); anything else — an `InternalError`, a `ZeroDivisionError`, an
    `AttributeError` where no stored code runs — is a bug and propagates (exit 3). A
    `ModelLoadError` passes unchanged: a rebuilt lambda may raise one when Keras traces it.

    Args:
        path: The model file (for the message).
        stored_code: Whether code from outside Keras runs while the model is rebuilt (`unsafe`
            lambdas, `custom_objects`).

    Example:
        >>> with explained(path, stored_code=False):
        ...     model = keras.saving.deserialize_keras_object(config)
    """
    try:
        yield
    except (ModelLoadError, InternalError):
        raise
    except rebuild_errors(stored_code=stored_code) as exc:
        raise explain(exc, path) from exc


def explain(exc: BaseException, path: str) -> ModelLoadError:
    """Turns a raw Keras deserialization error into a message that says how to fix it.

    Args:
        exc: What Keras raised.
        path: The model file.

    Returns:
        The `ModelLoadError` to raise: a class the file uses that Keras lacks, a lambda refused by
        safe mode, weights that do not fit the configuration, or Keras's own reason.
    """
    text = str(exc)
    kinds = "layer|object|activation|loss|metric|initializer|regularizer|constraint"
    missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text) or re.search(
        rf"Unknown (?:{kinds})\S*:? '?([\w>.]+)", text
    )
    if missing:
        return ModelLoadError(
            f"{path} uses '{missing.group(1)}', which is not part of Keras; pass the Python file "
            'that defines it with `custom_objects="module.py"`'
        )
    if "lambda" in text.lower() and "safe_mode" in text:
        return ModelLoadError(
            f"{path} holds Python code (a lambda) that deadrelu does not run by default; "
            "if you trust the file, pass `unsafe=True`"
        )
    # Keras 3 reports weights that do not fit the configuration as "A total of N objects could not
    # be loaded. Example error message for object <Dense name=d, ...>:" and the cause below it.
    mismatch = re.search(
        r"could not be loaded\. Example error message for object <(\w+) name=([^,>]+)[^>]*>:\s*(.+?)"
        r"(?:\s*Target variable:|\n\s*\n|$)",
        text,
        re.S,
    )
    if mismatch:
        cause = " ".join(mismatch[3].split()).rstrip(".")
        return ModelLoadError(
            f"the weights in {path} do not fit the model its configuration describes (layer "
            f"'{mismatch[2]}', {mismatch[1]}): {first_line(cause)}; the configuration and the weights "
            "come from different models: save the model again with model.save()"
        )
    innermost = text.split("Exception encountered:")[-1].strip() or type(exc).__name__
    lines = [line.strip() for line in innermost.splitlines() if line.strip()]
    head = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else innermost  # the cause follows
    return ModelLoadError(f"Keras 3 cannot rebuild the model in {path}: {first_line(head)}")


def lambda_backend_hint(exc: ModelLoadError, functions: dict, path: str) -> ModelLoadError:
    """`exc`, or on JAX / PyTorch with stored lambdas, an error saying they may need TensorFlow.

    Keras 2 lambdas often call TensorFlow (`tf.*`, `K.*`), which fails on other backends: Keras
    then leaves the layers after the Lambda unbuilt, and the weights seem not to fit.

    Args:
        exc: The error rebuilding the model or loading its weights raised.
        functions: The file's stored lambdas (`ConfigRepair.functions`).
        path: The model file.

    Returns:
        The error to raise.
    """
    from deadrelu.backends import TENSORFLOW, loaded

    backend = loaded()
    if not functions or backend in (None, TENSORFLOW):
        return exc
    return ModelLoadError(
        f"{path} cannot be rebuilt on {backend}: its Lambda layers hold Keras 2 code, which often calls "
        f"TensorFlow (tf.*, K.*); rerun with KERAS_BACKEND=tensorflow (on {backend}: {exc})"
    )
