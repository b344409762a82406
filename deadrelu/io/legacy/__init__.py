"""Reading what Keras 2 and tf.keras wrote, for `deadrelu.io.loading`.

* `config_repairs`: rewrites a stored model config so that Keras 3 can rebuild it;
* `h5_weights`: copies stored weights onto the rebuilt model, by layer name;
* `lambda_bytecode`: rebuilds the Python functions of Lambda layers, from other Python versions;
* `newer_keras`: fits a config saved by a newer Keras 3 to the installed one (settings it lacks);
* `savedmodel`: reads tf.keras SavedModel directories as data, into the legacy HDF5 layout;
* `tf_ops`: rebuilds the TensorFlow ops tf.keras stored as `TFOpLambda` layers;
* `training_config`: compiles the model from the training configuration stored with it.

These modules import Keras, TensorFlow and h5py inside functions only (`tf_ops`, which defines a
layer class, is itself imported only while loading): `import deadrelu` stays light.
"""

from __future__ import annotations


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first line of an exception's message, shortened: enough to recognise it."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
