"""Data sources: every format gives the same statistics as the array it holds."""

from __future__ import annotations

import numpy as np
import pytest

import deadrelu
from deadrelu.data import load_data


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(5)
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, activation="relu"),
        ]
    )


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).integers(0, 256, (23, 6, 6, 1), dtype=np.uint8)


def _fires(report):
    return [site.fires.tolist() for site in report.sites]


@pytest.fixture(scope="module")
def expected(model, images):
    return _fires(deadrelu.scan(model, images.astype(np.float32) / 255, batch_size=5))


def _scan(model, data, **kwargs):
    return deadrelu.scan(model, data, batch_size=5, rescale=1 / 255, **kwargs)


def test_npy_npz_h5_csv_give_the_same_statistics(model, images, expected, tmp_path):
    import h5py

    np.save(tmp_path / "x.npy", images)
    np.savez(tmp_path / "x.npz", other=np.zeros(3), images_b=images, x=images)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("group/pixels", data=images)
    np.savetxt(
        tmp_path / "x.csv",
        images.reshape(23, -1),
        delimiter=",",
        fmt="%d",
        header=",".join(f"p{i}" for i in range(36)),
        comments="",
    )
    assert _fires(_scan(model, str(tmp_path / "x.npy"))) == expected
    assert _fires(_scan(model, str(tmp_path / "x.npz"))) == expected  # default key 'x'
    assert _fires(_scan(model, f"{tmp_path / 'x.npz'}:images_b")) == expected
    assert _fires(_scan(model, f"{tmp_path / 'x.h5'}:group/pixels")) == expected


def test_csv_of_flat_features():
    import keras

    mlp = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu")])
    rows = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.csv")
        np.savetxt(path, rows, delimiter=",", header="a,b,c,d", comments="")
        from_csv = deadrelu.scan(mlp, path)
    assert _fires(from_csv) == _fires(deadrelu.scan(mlp, rows))


def test_folder_of_images_is_resized_to_the_model(model, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    data = load_data(str(tmp_path), model)
    batch = next(data.batches(10))
    assert batch.shape == (4, 6, 6, 1) and batch.dtype == np.float32 and data.samples == 4


def test_samples_limit_and_labels_from_file(model, images, tmp_path):
    np.savez(tmp_path / "xy.npz", x_test=images, y_test=np.arange(23) % 3)
    data = load_data(str(tmp_path / "xy.npz"), model, samples=10)
    assert data.samples == 10 and data.has_labels
    x, y = next(data.batches(100, labels=True))
    assert x.shape[0] == 10 and y.tolist() == (np.arange(10) % 3).tolist()


def test_tf_dataset_and_pydataset_stream(model, images, expected):
    import keras
    import tensorflow as tf

    scaled = images.astype(np.float32) / 255
    dataset = tf.data.Dataset.from_tensor_slices(scaled).batch(4)
    assert _fires(deadrelu.scan(model, dataset)) == expected

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return scaled[index * 8 : (index + 1) * 8]

    assert _fires(deadrelu.scan(model, Batches())) == expected


def test_multi_input_dict():
    import keras

    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    out = keras.layers.Dense(4, activation="relu", name="joint")(keras.layers.Concatenate()([a, b]))
    two = keras.Model({"a": a, "b": b}, out)
    rng = np.random.default_rng(1)
    x = {"a": rng.normal(size=(11, 3)).astype(np.float32), "b": rng.normal(size=(11, 2)).astype(np.float32)}
    report = deadrelu.scan(two, x, batch_size=4)
    joint = np.maximum(
        np.concatenate([x["a"], x["b"]], 1) @ two.get_layer("joint").get_weights()[0]
        + two.get_layer("joint").get_weights()[1],
        0,
    )
    assert report.sites[0].fires.tolist() == (joint != 0).sum(0).tolist()


def _two_input_model():
    """A list-input model: an 4x4 single-channel image and 2 features."""
    import keras

    keras.utils.set_random_seed(3)
    image = keras.Input((4, 4, 1), name="image")
    extra = keras.Input((2,), name="extra")
    flat = keras.layers.Flatten()(image)
    out = keras.layers.Dense(6, activation="relu", name="joint")(keras.layers.Concatenate()([flat, extra]))
    return keras.Model([image, extra], keras.layers.Dense(2, name="head")(out))


def _joint_fires(model, image, extra):
    kernel, bias = model.get_layer("joint").get_weights()
    joint = np.maximum(np.concatenate([image.reshape(len(image), -1), extra], 1) @ kernel + bias, 0)
    return (joint != 0).sum(0).tolist()


def test_multi_input_files_by_input_name_with_per_input_adaptation(tmp_path, capfd):
    """uint8 pixels without their channel axis and float64 features, in an .npz and an HDF5 file
    holding one array per input name: each input adapted on its own, --rescale applied to both."""
    import h5py

    from deadrelu.cli import main

    model = _two_input_model()
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (13, 4, 4), dtype=np.uint8)
    extra = rng.normal(size=(13, 2))
    expected = _joint_fires(model, image.astype(np.float32) / 255, (extra / 255).astype(np.float32))
    report = deadrelu.scan(model, [image, extra], batch_size=4, rescale=1 / 255)
    assert report.sites[0].fires.tolist() == expected
    assert (
        "input 'image': data shape (4, 4) → (4, 4, 1): added the trailing channel axis the model expects"
        in report.notes
    )

    np.savez(tmp_path / "two.npz", extra=extra, image=image, y=np.zeros(13))
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["image"], f["extra"] = image, extra
    model.save(tmp_path / "two.keras")
    for data in ("two.npz", "two.h5"):
        code = main(
            [
                "scan",
                str(tmp_path / "two.keras"),
                "--data",
                str(tmp_path / data),
                "--rescale",
                str(1 / 255),
                "--json",
                str(tmp_path / f"{data}.json"),
                "--quiet",
            ]
        )
        assert code == 0, capfd.readouterr().err
        saved = deadrelu.Report.from_json(str(tmp_path / f"{data}.json"))
        assert saved.sites[0].fires.tolist() == expected


def test_multi_input_data_errors_name_the_inputs(tmp_path, capfd):
    from deadrelu.cli import main

    model = _two_input_model()
    model.save(tmp_path / "two.keras")
    np.savez(tmp_path / "one.npz", x=np.zeros((3, 4, 4, 1)))
    np.savez(tmp_path / "partial.npz", image=np.zeros((3, 4, 4, 1)))
    for data, message in [("one.npz", "has no array named 'image'"), ("partial.npz", "has no array named 'extra'")]:
        assert main(["scan", str(tmp_path / "two.keras"), "--data", str(tmp_path / data)]) == 2
        err = capfd.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "np.savez('x.npz', image=..., extra=...)" in err
    with pytest.raises(deadrelu.DataError, match="but the model has 2 inputs"):
        deadrelu.scan(model, [np.zeros((3, 4, 4, 1))])
    with pytest.raises(deadrelu.DataError, match="no data for the model input 'extra'"):
        deadrelu.scan(model, {"image": np.zeros((3, 4, 4, 1))})
    with pytest.raises(deadrelu.DataError, match="one array per input"):
        deadrelu.scan(model, np.zeros((3, 4, 4, 1)))


def test_integer_inputs_stay_integers(tmp_path):
    """Token ids for an Embedding model are not turned into floats nor rescaled."""
    import keras

    keras.utils.set_random_seed(6)
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(6, activation="relu", name="dense")(h))
    ids = np.random.default_rng(2).integers(0, 50, (17, 5))
    data = load_data(ids, model, rescale=0.5)
    batch = next(data.batches(8))
    assert np.issubdtype(batch.dtype, np.integer) and np.array_equal(batch, ids[:8])
    assert data.notes == ["`rescale` ignored: the model takes integer inputs"]
    report = deadrelu.scan(model, ids, batch_size=8, rescale=0.5)
    expected = np.asarray(model(ids.astype(np.int32), training=False))
    assert report.sites[0].fires.tolist() == (expected != 0).sum(0).tolist()


def test_h5_is_streamed_not_loaded(model, images, tmp_path):
    import h5py

    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("x", data=images)
    data = load_data(str(tmp_path / "big.h5"), model)
    assert isinstance(data.x, h5py.Dataset)  # read slice by slice, never as a whole array
