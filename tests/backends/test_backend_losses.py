"""`deadrelu.engine.losses.per_sample_loss` on this backend: each sample's loss, eagerly and compiled.

Expected values are computed in numpy from the losses' formulas, so a wrong label conversion
(sparse ↔ one-hot), a wrong reduction axis or a loss weight left out shows as a wrong number.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from deadrelu.engine.losses import per_sample_loss

N, CLASSES = 6, 4


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _compiled(fn, backend: str):
    """`fn` compiled as the probe's step is on this backend (TensorFlow: tf.function, JAX: jax.jit)."""
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, autograph=False)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn  # PyTorch runs eagerly


def _run(fn, y_true, y_pred, compiled: bool, backend: str) -> np.ndarray:
    t = keras.ops.convert_to_tensor
    fn = _compiled(fn, backend) if compiled else fn
    return np.asarray(keras.ops.convert_to_numpy(fn(t(y_true), t(y_pred))), np.float64)


def _classifier():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(CLASSES, activation="softmax")])


rng = np.random.default_rng(0)
PROBS = _softmax(rng.normal(size=(N, CLASSES))).astype("float32")
IDS = rng.integers(0, CLASSES, size=N)
ONE_HOT = np.eye(CLASSES, dtype="float32")[IDS]
CROSS_ENTROPY = -np.log(PROBS[np.arange(N), IDS].astype(np.float64))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize(
    "loss, labels",
    [
        ("categorical_crossentropy", ONE_HOT),
        ("categorical_crossentropy", IDS),  # class ids: one-hot inside the step
        ("categorical_crossentropy", IDS[:, None].astype("float32")),
        ("sparse_categorical_crossentropy", IDS),
        ("sparse_categorical_crossentropy", ONE_HOT),  # one-hot: argmax inside the step
        (keras.losses.CategoricalCrossentropy(), IDS),
    ],
    ids=["cce-onehot", "cce-ids", "cce-ids-column", "scce-ids", "scce-onehot", "cce-object-ids"],
)
def test_cross_entropy_per_sample(backend, loss, labels, compiled):
    fn = per_sample_loss(_classifier(), loss, labels)
    np.testing.assert_allclose(_run(fn, labels, PROBS, compiled, backend), CROSS_ENTROPY, rtol=1e-5)


def test_label_smoothing_is_kept(backend):
    fn = per_sample_loss(_classifier(), keras.losses.CategoricalCrossentropy(label_smoothing=0.2), IDS)
    smoothed = ONE_HOT * 0.8 + 0.2 / CLASSES
    expected = -(smoothed * np.log(PROBS.astype(np.float64))).sum(axis=-1)
    np.testing.assert_allclose(_run(fn, IDS, PROBS, True, backend), expected, rtol=1e-5)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_regression_labels_get_the_output_axis(backend, compiled):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    y_pred = rng.normal(size=(N, 1)).astype("float32")
    y_true = rng.normal(size=(N,)).astype("float32")  # (N,) for an (N, 1) output, as fit takes them
    fn = per_sample_loss(model, "mse", y_true)
    expected = (y_true.astype(np.float64) - y_pred[:, 0]) ** 2
    np.testing.assert_allclose(_run(fn, y_true, y_pred, compiled, backend), expected, rtol=1e-5)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_sequence_outputs_average_over_time(backend, compiled):
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.Dense(2)])
    y_pred = rng.normal(size=(N, 5, 2)).astype("float32")
    y_true = rng.normal(size=(N, 5, 2)).astype("float32")
    fn = per_sample_loss(model, "mae", y_true)
    expected = np.abs(y_true.astype(np.float64) - y_pred).mean(axis=(1, 2))
    np.testing.assert_allclose(_run(fn, y_true, y_pred, compiled, backend), expected, rtol=1e-5)


def test_several_outputs_are_weighted_as_compiled(backend):
    inp = keras.Input((3,))
    model = keras.Model(
        inp,
        {
            "cls": keras.layers.Dense(CLASSES, activation="softmax", name="cls")(inp),
            "reg": keras.layers.Dense(1, name="reg")(inp),
        },
    )
    model.compile(loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"}, loss_weights={"cls": 0.5, "reg": 2.0})
    reg_pred = rng.normal(size=(N, 1)).astype("float32")
    reg_true = rng.normal(size=(N, 1)).astype("float32")
    fn = per_sample_loss(model, None, {"cls": IDS, "reg": reg_true})
    t = keras.ops.convert_to_tensor
    step = _compiled(lambda yt, yp: fn(yt, yp), backend)
    values = step({"cls": t(IDS), "reg": t(reg_true)}, {"cls": t(PROBS), "reg": t(reg_pred)})
    expected = 0.5 * CROSS_ENTROPY + 2.0 * ((reg_true - reg_pred)[:, 0].astype(np.float64) ** 2)
    np.testing.assert_allclose(np.asarray(keras.ops.convert_to_numpy(values)), expected, rtol=1e-5)


def test_matches_keras_own_per_sample_losses(backend):
    """The same numbers as `keras.losses` with `reduction=None` on this backend."""
    fn = per_sample_loss(_classifier(), "categorical_crossentropy", IDS)
    keras_values = keras.losses.CategoricalCrossentropy(reduction=None)(ONE_HOT, PROBS)
    np.testing.assert_allclose(
        _run(fn, IDS, PROBS, False, backend), keras.ops.convert_to_numpy(keras_values), rtol=1e-6
    )
