"""Bad input never crashes: the test matrix of issue 12 (parts 2, 3 and 5).

- Bad data, one case per kind × (command line: exit 2, one line on stderr, no traceback;
  library: `DataError` with the same fix-it line).
- In-memory data the library gets (lists of text, tensors, generators of text, ...): a
  `DataError`, or it works.
- Streams (tf.data batched, unbatched and infinite; PyDataset; generators) × `samples`: exactly
  that many samples scanned, with the statistics of a scan of the same samples as an array.
- Keyword arguments of every public function: a `UsageError` naming the keyword in backticks;
  the command line names the flag.
"""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np
import pytest

import deadrelu
from deadrelu.errors import DataError, UsageError

RNG = np.random.default_rng(12)
X = RNG.normal(size=(20, 4)).astype(np.float32)  # the MLP's data
Y = np.eye(3, dtype=np.float32)[np.arange(20) % 3]  # one-hot, for categorical crossentropy
IMAGES = RNG.normal(size=(50, 6, 6, 1)).astype(np.float32)  # the CNN's data
CLASSES = RNG.integers(0, 3, 50)  # sparse labels


# -- models ------------------------------------------------------------------------------------


def _mlp():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")]
    )
    model.compile(loss="categorical_crossentropy")
    return model


def _cnn():
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"mlp": (model, path of its .keras), "cnn": (...)}."""
    folder = tmp_path_factory.mktemp("models")
    built = {}
    for name, make in (("mlp", _mlp), ("cnn", _cnn)):
        model = make()
        path = folder / f"{name}.keras"
        model.save(path)
        built[name] = (model, path)
    return built


# -- bad data files: each is (model, builder of --data and flags, what the one line says) ---------


def _npy(array, allow_pickle=False):
    def make(tmp):
        np.save(tmp / "x.npy", array, allow_pickle=allow_pickle)
        return tmp / "x.npy"

    return make


def _bytes(name, content):
    def make(tmp):
        (tmp / name).write_bytes(content)
        return tmp / name

    return make


def _npz(**arrays):
    def make(tmp):
        np.savez(tmp / "d.npz", **arrays)
        return tmp / "d.npz"

    return make


def _damaged_npz(tmp):
    np.savez(tmp / "d.npz", x=np.arange(400, dtype=np.float32).reshape(100, 4))
    content = bytearray((tmp / "d.npz").read_bytes())
    content[content.find(b"NUMPY") + 300] ^= 0xFF  # inside the array's data: its CRC no longer matches
    (tmp / "d.npz").write_bytes(bytes(content))
    return tmp / "d.npz"


def _truncated_npy(tmp):
    np.save(tmp / "x.npy", X)
    (tmp / "x.npy").write_bytes((tmp / "x.npy").read_bytes()[:150])
    return tmp / "x.npy"


def _h5(key="x", **datasets):
    def make(tmp):
        import h5py

        with h5py.File(tmp / "d.h5", "w") as f:
            for name, value in datasets.items():
                f.create_dataset(name, data=value)
        return f"{tmp / 'd.h5'}:{key}" if key else tmp / "d.h5"

    return make


def _csv(text):
    return _bytes("x.csv", text.encode())


def _images(*contents):
    """A folder: a valid image for each None, else a file with these bytes."""

    def make(tmp):
        from PIL import Image

        folder = tmp / "images"
        folder.mkdir()
        for i, content in enumerate(contents):
            if content is None:
                Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
            elif content == "truncated":
                Image.fromarray(RNG.integers(0, 256, (30, 30), dtype=np.uint8)).save(folder / "full.png")
                (folder / f"{i}.png").write_bytes((folder / "full.png").read_bytes()[:200])
                (folder / "full.png").unlink()
            else:
                (folder / f"{i}.jpg").write_bytes(content)
        return folder

    return make


def _with_labels(labels, data=X, labels_file=False):
    """An .npz of x and y, or (labels_file) x.npz and y.npy apart."""

    def make(tmp):
        if labels_file:
            np.savez(tmp / "d.npz", x=data)
            np.save(tmp / "y.npy", labels)
            return tmp / "d.npz", ["--labels", tmp / "y.npy"]
        np.savez(tmp / "d.npz", x=data, y=labels)
        return tmp / "d.npz"

    return make


def _fifo(tmp):
    os.mkfifo(tmp / "x.npy")
    return tmp / "x.npy"


BAD_FILES = {
    # .npy
    "npy of text": ("mlp", _npy(np.array([["a"] * 4] * 5)), r"the data holds text \(dtype <U1\).*numbers"),
    "npy of objects": (
        "mlp",
        _npy(np.array([[1, 2, 3, 4], [1]], dtype=object), allow_pickle=True),
        r"holds Python objects.*pad them",
    ),
    "npy complex": ("mlp", _npy(X + 1j), r"complex numbers \(dtype complex64\).*imaginary part"),
    "npy empty": ("mlp", _npy(np.zeros((0, 4), np.float32)), r"holds no samples"),
    "npy 0-d": ("mlp", _npy(np.array(3.0)), r"is a single value \(a 0-d array\), not samples"),
    "npy dates": ("mlp", _npy(np.zeros((5, 4), "datetime64[s]")), r"holds dates"),
    "npy records": ("mlp", _npy(np.zeros(5, dtype=[("a", "f4"), ("b", "f4")])), r"records of a structured array"),
    "npy wrong rank": ("mlp", _npy(X.reshape(20, 2, 2)), r"shape \(2, 2\) but the model takes \(4,\)"),
    "npy one-dimensional": ("mlp", _npy(X[:, 0]), r"one-dimensional \(20 values\).*\(samples, 4\)"),
    "npy wrong width": ("mlp", _npy(X[:, :3]), r"shape \(3,\) but the model takes \(4,\)"),
    "npy NaN": ("mlp", _npy(np.where(np.arange(20)[:, None] == 3, np.nan, X)), r"NaN or inf values, first at sample 3"),
    "npy beyond float32": ("mlp", _npy(np.full((5, 4), 1e300)), r"NaN or inf.*float32 range"),
    "npy truncated": ("mlp", _truncated_npy, r"is truncated"),
    "npy random bytes": ("mlp", _bytes("x.npy", os.urandom(300)), r"not a valid \.npy file"),
    "npy zero bytes": ("mlp", _bytes("x.npy", b""), r"is empty \(0 bytes\)"),
    "npy FIFO": ("mlp", _fifo, r"not a regular file|FIFO"),
    "npy with a key": ("mlp", lambda tmp: f"{_npy(X)(tmp)}:x", r"holds one array, so it takes no ':x'"),
    # .npz
    "npz random bytes": ("mlp", _bytes("x.npz", os.urandom(300)), r"not a valid \.npz archive"),
    "npz damaged": ("mlp", _damaged_npz, r"is damaged \(Bad CRC-32"),
    "npz several arrays, no x": ("mlp", _npz(a=X, b=X), r"holds 2 arrays \(a, b\) and none is named 'x'.*d\.npz:a"),
    "npz no arrays": ("mlp", _npz(), r"holds no arrays"),
    "npz zero bytes": ("mlp", _bytes("x.npz", b""), r"is empty \(0 bytes\)"),
    "npz of objects": ("mlp", _npz(x=np.array([[1, 2], [3]], dtype=object)), r"d\.npz:x holds Python objects"),
    "npz of text": ("mlp", _npz(x=np.array([["a"] * 4] * 3)), r"holds text"),
    "npz wrong key": ("mlp", lambda tmp: f"{_npz(x=X)(tmp)}:nokey", r"no array named 'nokey'.*it holds x"),
    # .h5
    "h5 group, not dataset": ("mlp", _h5(key="grp", **{"grp/inner": X}), r"'grp' in .* is a group.*:grp/inner"),
    "h5 scalar": ("mlp", _h5(x=3.0), r"single value"),
    "h5 of text": ("mlp", _h5(x=np.array([b"ab"] * 4)), r"holds text"),
    "h5 several, no x": ("mlp", _h5(key=None, a=X, b=X), r"holds 2 arrays \(a, b\)"),
    "h5 random bytes": ("mlp", _bytes("x.h5", os.urandom(600)), r"not an HDF5 file"),
    # .csv
    "csv text cell": ("mlp", _csv("a,b,c,d\n1,2,3,4\n5,x,7,8\n"), r"line 3, column 2 is 'x' rather than a number"),
    "csv empty cell": ("mlp", _csv("1,2,3,4\n1,,3,4\n"), r"line 2, column 2 is empty"),
    "csv ragged": ("mlp", _csv("1,2,3,4\n5,6,7\n"), r"line 2 has 3 cells where the lines before have 4"),
    "csv header only": ("mlp", _csv("a,b,c,d\n"), r"holds no rows of numbers"),
    "csv not UTF-8": ("mlp", _bytes("x.csv", b"\xff\xfe\x00\x01garbage\n"), r"not a text \.csv file"),
    "csv with semicolons": ("mlp", _csv("1;2;3;4\n5;6;7;8\n"), r"'5;6;7;8' rather than a number.*separated by commas"),
    "csv wrong width": ("mlp", _csv("1,2,3\n4,5,6\n"), r"shape \(3,\) but the model takes \(4,\)"),
    # images
    "image broken": ("cnn", _images(None, b"not an image"), r"cannot read the image .*1\.jpg"),
    "images of zero bytes": ("cnn", _images(b"", b""), r"cannot read the image .*0\.jpg \(an empty file\)"),
    "image truncated": ("cnn", _images(None, "truncated"), r"cannot read the image .*1\.png \(image file is trunc"),
    "image folder empty": ("cnn", _images(), r"no images \(\.png"),
    "images for a non-image model": ("mlp", _images(None), r"needs a model with one image input"),
    # labels (with gradients)
    "labels of text": ("mlp", _with_labels(np.array(["cat"] * 20)), r"the labels hold text.*class ids"),
    "labels of text, own file": (
        "mlp",
        _with_labels(np.array(["cat"] * 20), labels_file=True),
        r"the labels hold text",
    ),
    "labels NaN": (
        "mlp",
        _with_labels(np.where(np.arange(20)[:, None] == 4, np.nan, Y)),
        r"the labels hold NaN or inf values, first at sample 4",
    ),
    "labels complex": ("mlp", _with_labels(Y + 0j), r"the labels hold complex numbers"),
    "labels fewer": ("mlp", _with_labels(Y[:5]), r"there are 5 labels for 20 samples"),
    "labels of objects": (
        "mlp",
        _with_labels(np.array([[1], [1, 2]] * 10, dtype=object)),
        r"d\.npz:y holds Python objects",
    ),
    "labels more": (
        "mlp",
        _with_labels(np.eye(3)[np.arange(25) % 3], labels_file=True),
        r"there are 25 labels for 20 samples",
    ),
    "labels 0-d": ("mlp", _with_labels(np.array(1.0), labels_file=True), r"the labels are a single value"),
    "one-hot labels too wide": (
        "mlp",
        _with_labels(np.eye(5)[np.arange(20) % 5]),
        r"the labels have 5 columns but the model's output has 3 units",
    ),
    "sparse labels out of range": (
        "cnn",
        _with_labels(np.array([0, 1, 7, 2, 1]), data=IMAGES[:5]),
        r"label value of 7",
    ),
    # paths
    "missing file": ("mlp", lambda tmp: tmp / "nope.npy", r"not found"),
    "unsupported format": ("mlp", _bytes("x.txt", b"1,2,3,4\n"), r"unsupported data format"),
}
_LABELLED = {name for name in BAD_FILES if "label" in name}


def _build(case, tmp):
    model_key, make, pattern = BAD_FILES[case]
    built = make(tmp)
    data, extra = built if isinstance(built, tuple) else (built, [])
    if case in _LABELLED:
        extra = [*extra, "--gradients"]
    return model_key, data, extra, pattern


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("deadrelu: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_data_file_is_exit_2_with_one_line(case, models, tmp_path, run_cli):
    model_key, data, extra, pattern = _build(case, tmp_path)
    code, _, err = run_cli(["scan", models[model_key][1], "--data", data, "--quiet", *extra])
    assert code == 2, err
    assert re.search(pattern, _one_error_line(err)), err


@pytest.mark.parametrize("case", [name for name in BAD_FILES if name != "npy FIFO"])
def test_bad_data_file_is_a_data_error(case, models, tmp_path):
    model_key, data, extra, pattern = _build(case, tmp_path)
    options = {"gradients": "--gradients" in extra}
    if "--labels" in extra:
        options["labels"] = extra[extra.index("--labels") + 1]
    with pytest.raises(DataError, match=pattern):
        deadrelu.scan(models[model_key][0], os.fspath(data) if not isinstance(data, str) else data, **options)


@pytest.mark.parametrize("command", [["revive", "-o", "{out}"], ["patch", "--to", "leaky", "-o", "{out}"]])
@pytest.mark.parametrize("case", ["npy of text", "npz several arrays, no x", "image broken", "npz random bytes"])
def test_revive_and_patch_refuse_bad_data_alike(command, case, models, tmp_path, run_cli):
    model_key, data, _, pattern = _build(case, tmp_path)
    out = tmp_path / "out.keras"
    argv = [command[0], models[model_key][1], "--data", data, *[a.format(out=out) for a in command[1:]], "--quiet"]
    code, _, err = run_cli(argv)
    assert code == 2 and re.search(pattern, _one_error_line(err)), err
    assert not out.exists()


@pytest.mark.parametrize(
    "model_key, data, labels, pattern",
    [
        ("mlp", X, np.eye(5)[np.arange(20) % 5], r"the labels have 5 columns but the model's output has 3 units"),
        ("mlp", X, np.arange(20) % 7, r"the labels hold the class id 6, but the model's output has 3 units"),
        ("cnn", IMAGES[:20], np.arange(20) % 7 - 1, r"the labels hold the class id -1"),
        ("mlp", X, np.array(["cat"] * 20), r"the labels hold text"),
    ],
)
def test_retrain_refuses_labels_that_do_not_fit(model_key, data, labels, pattern, models, tmp_path, run_cli):
    np.savez(tmp_path / "d.npz", x=data, y=labels)
    out = tmp_path / "out.keras"
    code, _, err = run_cli(
        [
            "patch",
            models[model_key][1],
            "--to",
            "leaky",
            "--data",
            tmp_path / "d.npz",
            "--retrain",
            "--epochs",
            "1",
            "--validation-split",
            "0.25",
            "-o",
            out,
            "--quiet",
        ]
    )
    assert code == 2 and re.search(pattern, _one_error_line(err)), err
    assert not out.exists()


def test_labels_beside_the_data_matter_only_when_used(models, tmp_path):
    np.savez(tmp_path / "fewer.npz", x=X, y=Y[:19])
    np.savez(tmp_path / "objects.npz", x=X, y=np.array([[1], [1, 2]] * 10, dtype=object))
    for name, pattern in (("fewer", "there are 19 labels for 20 samples"), ("objects", "holds Python objects")):
        path = str(tmp_path / f"{name}.npz")
        assert deadrelu.scan(models["mlp"][0], path).data["samples"] == 20  # no gradients: the labels are not read
        with pytest.raises(DataError, match=pattern):
            deadrelu.scan(models["mlp"][0], path, gradients=True)


def test_a_csv_with_a_byte_order_mark_keeps_its_first_row(models, tmp_path):
    (tmp_path / "x.csv").write_bytes(b"\xef\xbb\xbf" + "\n".join(",".join(map(str, row)) for row in X).encode())
    report = deadrelu.scan(models["mlp"][0], str(tmp_path / "x.csv"))
    assert report.data["samples"] == 20 and _fires(report) == _fires(deadrelu.scan(models["mlp"][0], X))


def test_pickled_is_never_said_of_random_bytes(models, tmp_path, run_cli):
    (tmp_path / "x.npz").write_bytes(os.urandom(400))
    code, _, err = run_cli(["scan", models["mlp"][1], "--data", tmp_path / "x.npz"])
    assert code == 2 and "pickle" not in err.replace(str(tmp_path), "") and not zipfile.is_zipfile(tmp_path / "x.npz")


def test_the_only_array_of_an_npz_is_used_and_named(models, tmp_path, run_cli):
    np.savez(tmp_path / "one.npz", features=X)
    report = deadrelu.scan(models["mlp"][0], str(tmp_path / "one.npz"))
    assert report.data["samples"] == 20
    expected = f"data: used 'features', the only array in {tmp_path / 'one.npz'}"
    assert [n for n in report.notes if "features" in n] == [expected]
    code, _, err = run_cli(["scan", models["mlp"][1], "--data", tmp_path / "one.npz"])
    assert code == 0 and "used 'features', the only array" in err


def test_skip_bad_images_skips_with_a_count(models, tmp_path, run_cli):
    folder = _images(None, b"junk", None, b"")(tmp_path)
    line = _one_error_line(run_cli(["scan", models["cnn"][1], "--data", folder])[2])
    assert "pass --skip-bad-images" in line
    with pytest.raises(DataError, match=r"pass `skip_bad_images=True`"):
        deadrelu.scan(models["cnn"][0], str(folder))
    report = deadrelu.scan(models["cnn"][0], str(folder), skip_bad_images=True)
    assert report.data["samples"] == 2
    assert "skipped 2 unreadable images in" in " ".join(report.notes) and "(first: 1.jpg)" in " ".join(report.notes)
    code, _, err = run_cli(["scan", models["cnn"][1], "--data", folder, "--skip-bad-images"])
    assert code == 0 and "skipped 2 unreadable images" in err
    (tmp_path / "all_bad").mkdir()
    with pytest.raises(DataError, match="none of the 2 images"):
        deadrelu.scan(models["cnn"][0], str(_images(b"", b"x")(tmp_path / "all_bad")), skip_bad_images=True)


def test_rescale_of_data_already_in_0_1_warns_once(models, tmp_path, run_cli):
    scaled = np.abs(X) / np.abs(X).max()
    report = deadrelu.scan(models["mlp"][0], scaled, rescale=1 / 255)
    warning = [n for n in report.notes if n.startswith("max input after rescale is 0.0039:")]
    assert len(warning) == 1 and "the data may already be scaled" in warning[0]
    pixels = (scaled * 255).astype(np.uint8)
    assert not any("already be scaled" in n for n in deadrelu.scan(models["mlp"][0], pixels, rescale=1 / 255).notes)
    np.save(tmp_path / "x.npy", scaled)
    code, _, err = run_cli(["scan", models["mlp"][1], "--data", tmp_path / "x.npy", "--rescale", "1/255"])
    assert code == 0 and "max input after rescale is 0.0039: the data may already be scaled; drop --rescale" in err


# -- in-memory data (library) -------------------------------------------------------------------


def _generator(items):
    yield from items


class _NoLength:
    """A PyDataset-like object with neither __len__ nor num_batches."""

    def __getitem__(self, index):
        return X[:4]

    def on_epoch_end(self):
        pass

    @property
    def num_batches(self):
        raise NotImplementedError


def _tf(make):
    def build():
        import tensorflow as tf

        return make(tf)

    return build


BAD_OBJECTS = {
    "list of text": (lambda: ["a", "b"], DataError, r"holds text"),
    "ragged list": (lambda: [[1, 2, 3, 4], [1]], DataError, r"cannot be made into one array.*pad them"),
    "object array": (lambda: np.array([[1.0] * 4, [2.0] * 4], dtype=object), DataError, r"astype\('float32'\)"),
    "complex array": (lambda: X + 1j, DataError, r"complex numbers"),
    "empty array": (lambda: X[:0], DataError, r"holds no samples"),
    "a number": (lambda: 3.0, DataError, r"single value"),
    "a set": (lambda: {1, 2}, DataError, r"is a set; pass a numpy array"),
    "an object": (lambda: object(), DataError, r"cannot read data of type object; pass a numpy array"),
    "dict of an unknown input": (lambda: {"foo": X}, DataError, r"names the input 'foo'.*key the arrays"),
    "two arrays for one input": (lambda: [X, X], DataError, r"2 arrays but the model has 1 input"),
    "dataset of text": (
        _tf(lambda tf: tf.data.Dataset.from_tensor_slices(np.array([["a"] * 4] * 4)).batch(2)),
        DataError,
        r"holds text",
    ),
    "dataset of complex": (
        _tf(lambda tf: tf.data.Dataset.from_tensor_slices(X + 1j).batch(2)),
        DataError,
        r"complex numbers",
    ),
    "dataset of ragged tensors": (
        _tf(lambda tf: tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1.0], [2.0, 3.0]])).batch(2)),
        DataError,
        r"RaggedTensors.*padded_batch",
    ),
    "infinite dataset": (
        _tf(lambda tf: tf.data.Dataset.from_tensor_slices(X).batch(4).repeat()),
        DataError,
        r"infinite.*pass `samples`",
    ),
    "generator of text": (lambda: _generator([np.array([["a"] * 4] * 2)]), DataError, r"holds text"),
    "generator of samples of two shapes": (
        lambda: _generator([X[0], X[1, :3]]),
        DataError,
        r"differ in shape|shape \(3,\)",
    ),
    "generator of NaN": (
        lambda: _generator([X[:4], np.full((4, 4), np.nan)]),
        DataError,
        r"NaN or inf values, first at sample 4",
    ),
    "empty generator": (lambda: _generator([]), DataError, r"holds no samples"),
    "PyDataset without a length": (lambda: _NoLength(), DataError, r"neither `__len__` nor `num_batches`"),
    "labels beside a dataset": (
        _tf(lambda tf: (tf.data.Dataset.from_tensor_slices(X).batch(4), Y)),
        DataError,
        r"brings its own labels.*\(inputs, labels\)",
    ),
    "gradients, dataset without labels": (
        _tf(lambda tf: (tf.data.Dataset.from_tensor_slices(X).batch(4), "grad")),
        UsageError,
        r"needs labels.*\(inputs, labels\) pairs",
    ),
    "labels of text, in memory": (lambda: (X, np.array(["cat"] * 20)), DataError, r"the labels hold text"),
}


@pytest.mark.parametrize("case", list(BAD_OBJECTS))
def test_bad_data_in_memory_is_a_data_error(case, models):
    make, error, pattern = BAD_OBJECTS[case]
    data = make()
    options = {}
    if isinstance(data, tuple):
        data, labels = data
        grad_only = isinstance(labels, str) and labels == "grad"
        options = {"gradients": True} if grad_only else {"labels": labels, "gradients": True}
    with pytest.raises(error, match=pattern):
        deadrelu.scan(models["mlp"][0], data, **options)


@pytest.fixture(scope="module")
def two_outputs():
    import keras

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(3, name="cls")(hidden), keras.layers.Dense(1, name="reg")(hidden)])
    model.compile(loss={"cls": "mse", "reg": "mse"})
    return model


@pytest.mark.parametrize(
    "labels, pattern",
    [
        ({"cls": Y, "bad": X[:, :1]}, r"the labels name the output 'bad', but the model's outputs are cls, reg"),
        ({"cls": Y}, r"no labels for the output 'reg'"),
        (
            {"cls": np.eye(5)[np.arange(20) % 5], "reg": X[:, :1]},
            r"labels of output 'cls' have 5 columns but that output",
        ),
        ({"cls": Y, "reg": np.array(["a"] * 20)}, r"the labels 'reg' hold text"),
        ({"cls": Y[:10], "reg": X[:, :1]}, r"different numbers of samples \(10, 20\); .* every output"),
    ],
)
def test_labels_of_several_outputs(labels, pattern, two_outputs):
    with pytest.raises(DataError, match=pattern):
        deadrelu.scan(two_outputs, X, labels=labels, gradients=True)


GOOD_OBJECTS = {
    "list of lists of numbers": lambda: X.tolist(),
    "tf.Tensor": _tf(lambda tf: tf.constant(X)),
    "bool array": lambda: X > 0,
    "float16 array": lambda: X.astype(np.float16),
    "big-endian floats": lambda: X.astype(">f4"),
    "iterator of a list": lambda: iter([X[:10], X[10:]]),
}


@pytest.mark.parametrize("case", list(GOOD_OBJECTS))
def test_data_that_works_gives_the_array_statistics(case, models):
    data = GOOD_OBJECTS[case]()
    reference = np.asarray(data if not hasattr(data, "numpy") else data.numpy()) if case != "iterator of a list" else X
    report = deadrelu.scan(models["mlp"][0], data)
    assert report.data["samples"] == 20
    assert _fires(report) == _fires(deadrelu.scan(models["mlp"][0], reference.astype(np.float32)))


# -- streams × samples --------------------------------------------------------------------------


def _fires(report):
    return [site.fires.tolist() for site in report.sites]


class _Batches:
    """A keras.utils.PyDataset of IMAGES: batches of 5, single samples, or an endless cycle."""

    @staticmethod
    def make(*, single=False, endless=False, labels=False):
        import keras

        class Batches(keras.utils.PyDataset):
            @property
            def num_batches(self):
                return None if endless else (50 if single else 10)

            def __getitem__(self, index):
                rows = slice(index % 50, index % 50 + 1) if single else slice(5 * (index % 10), 5 * (index % 10 + 1))
                x, y = IMAGES[rows], CLASSES[rows]
                if single:
                    x, y = x[0], y[0]
                return (x, y) if labels else x

        return Batches()


def _dataset(unbatched=False, endless=False, labels=False):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, CLASSES) if labels else IMAGES)
    dataset = dataset if unbatched else dataset.batch(7)
    return dataset.repeat() if endless else dataset


def _images_generator(single=False, labels=False):
    step = 1 if single else 6
    for start in range(0, 50, step):
        x, y = IMAGES[start : start + step], CLASSES[start : start + step]
        if single:
            x, y = x[0], y[0]
        yield (x, y) if labels else x


STREAMS = {
    "tf.data batched": (lambda **kw: _dataset(**kw), False),
    "tf.data unbatched": (lambda **kw: _dataset(unbatched=True, **kw), False),
    "tf.data repeat()": (lambda **kw: _dataset(endless=True, **kw), True),
    "tf.data unbatched repeat()": (lambda **kw: _dataset(unbatched=True, endless=True, **kw), True),
    "PyDataset": (lambda **kw: _Batches.make(**kw), False),
    "PyDataset of single samples": (lambda **kw: _Batches.make(single=True, **kw), False),
    "PyDataset endless": (lambda **kw: _Batches.make(endless=True, **kw), True),
    "generator": (lambda **kw: _images_generator(**kw), False),
    "generator of single samples": (lambda **kw: _images_generator(single=True, **kw), False),
}


@pytest.fixture(scope="module")
def array_fires(models):
    """The CNN's statistics on the first n samples of IMAGES repeated (as `.repeat()` reads them), as an
    array: the reference, cached by n."""
    cache = {}

    def get(n):
        if n not in cache:
            cache[n] = _fires(deadrelu.scan(models["cnn"][0], np.concatenate([IMAGES] * 6)[:n], batch_size=8))
        return cache[n]

    return get


@pytest.mark.parametrize("samples", [None, 1, 13, 50, 300])
@pytest.mark.parametrize("stream", list(STREAMS))
def test_stream_scans_exactly_samples(stream, samples, models, array_fires):
    make, endless = STREAMS[stream]
    data = make()
    if endless and samples is None:
        with pytest.raises(DataError, match=r"infinite.*`samples`"):
            deadrelu.scan(models["cnn"][0], data)
        return
    report = deadrelu.scan(models["cnn"][0], data, samples=samples, batch_size=8)
    expected = samples if endless else min(samples or 50, 50)
    assert report.data["samples"] == expected
    assert _fires(report) == array_fires(expected)
    said = [n for n in report.notes if "single samples" in n]
    assert len(said) == ("single" in stream or "unbatched" in stream)
    if said:
        assert said[0].endswith("no batch axis); deadrelu batched them, 8 at a time")


@pytest.mark.parametrize(
    "stream",
    ["tf.data batched", "tf.data unbatched repeat()", "PyDataset endless", "generator", "generator of single samples"],
)
def test_stream_labels_give_the_array_loss(stream, models):
    reference = deadrelu.scan(models["cnn"][0], IMAGES[:13], CLASSES[:13], gradients=True)
    report = deadrelu.scan(models["cnn"][0], STREAMS[stream][0](labels=True), samples=13, gradients=True, batch_size=8)
    assert report.data["samples"] == 13 and _fires(report) == _fires(reference)
    assert report.loss == pytest.approx(reference.loss, rel=1e-5)


def test_a_generator_read_twice_replays_what_it_read(models):
    generator = _images_generator()
    first = deadrelu.scan(models["cnn"][0], generator, samples=20)
    second = deadrelu.scan(models["cnn"][0], generator)  # the 20 read before, then the rest
    assert (first.data["samples"], second.data["samples"]) == (20, 50)
    assert _fires(second) == _fires(deadrelu.scan(models["cnn"][0], IMAGES))


def test_the_monitor_reads_a_generator_at_every_check(models):
    import keras

    model = _cnn()
    monitor = deadrelu.DeadReluMonitor(_images_generator(), samples=30, verbose=0, on_dead=None)
    model.fit(IMAGES, CLASSES, epochs=2, batch_size=25, verbose=0, callbacks=[monitor])
    assert [check.epoch for check in monitor.timeline] == [1, 2]
    assert monitor.last_report.data["samples"] == 30
    assert isinstance(model, keras.Model)


# -- keyword arguments of every public function -------------------------------------------------


BAD_KEYWORDS = [
    # (function, keyword, bad value)
    *[("scan", "batch_size", v) for v in (0, -1, 2.5, "8", True, None)],
    *[("scan", "samples", v) for v in (0, -3, 1.5, "10", True)],
    *[("scan", "rescale", v) for v in (0, -1, float("nan"), float("inf"), "1/255", True)],
    *[("scan", "dying_threshold", v) for v in (5, -0.1, float("nan"), "0.1", True)],
    ("scan", "flag_threshold", 1.5),
    ("scan", "saturated_threshold", 2),
    ("scan", "gradients", "yes"),
    ("scan", "skip_bad_images", "no"),
    ("scan", "model", None),
    *[(f, "seed", v) for f in ("revive", "revive_model") for v in (-1, 1.5, "0", True)],
    *[(f, "scale", "big") for f in ("revive", "revive_model")],
    *[(f, "batch_size", 0) for f in ("revive", "revive_model", "patch_model")],
    *[(f, "only", "some") for f in ("revive_model", "patch", "patch_model")],
    *[
        ("revive_model", k, v)
        for k, v in (
            ("data", X),
            ("layers", "("),
            ("in_place", "yes"),
            ("samples", 0),
            ("check_samples", 0),
            ("rescale", 0),
            ("tolerance", -1),
        )
    ],
    *[(f, "to", v) for f in ("patch", "patch_model") for v in ("relu", None, 3)],
    *[("patch", "alpha", v) for v in (-1, float("nan"), "0.1", True)],
    ("patch", "alpha_init", float("inf")),
    ("patch", "prelu_shared_axes", "batch"),
    ("patch", "layers", "("),
    *[("patch_model", k, v) for k, v in (("samples", 0), ("tolerance", -1), ("rescale", 0), ("skip_bad_images", "no"))],
    *[
        ("DeadReluMonitor", k, v)
        for k, v in (
            ("batch_size", 0),
            ("samples", 0),
            ("on_dead", "explode"),
            ("max_dead_fraction", 2),
            ("patience", -1),
            ("dying_threshold", 2),
            ("flag_threshold", -1),
            ("seed", -1),
            ("verbose", "loud"),
            ("check_freq", 0),
            ("rescale", 0),
        )
    ],
]


def _call(function, keyword, value, models):
    model = models["mlp"][0]
    if function == "scan":
        if keyword == "model":
            return deadrelu.scan(value, X)
        return deadrelu.scan(model, X, **{keyword: value})
    if function.startswith("revive"):
        return getattr(deadrelu, function)(model, X, **{keyword: value})
    if function in ("patch", "patch_model"):
        if keyword == "to":
            return getattr(deadrelu, function)(model, value)
        return getattr(deadrelu, function)(model, **{keyword: value})
    return deadrelu.DeadReluMonitor(X, **{keyword: value})


@pytest.mark.parametrize("function, keyword, value", BAD_KEYWORDS, ids=[f"{f}-{k}={v!r}" for f, k, v in BAD_KEYWORDS])
def test_every_public_function_checks_its_keywords(function, keyword, value, models):
    with pytest.raises(UsageError) as raised:
        _call(function, keyword, value, models)
    assert f"`{keyword}" in str(raised.value), str(raised.value)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["scan", "{mlp}", "--samples", "0"], "--samples"),
        (["scan", "{mlp}", "--batch-size", "-2"], "--batch-size"),
        (["scan", "{mlp}", "--rescale", "0"], "--rescale"),
        (["scan", "{mlp}", "--rescale", "nan"], "--rescale"),
        (["scan", "{mlp}", "--dying-threshold", "5"], "--dying-threshold"),
        (["revive", "{dead}", "--data", "{x}", "--seed", "-1", "-o", "{out}", "--quiet"], "--seed"),
        (["patch", "{mlp}", "--to", "leaky", "--alpha", "-1", "-o", "{out}"], "--alpha"),
    ],
)
def test_the_command_line_names_the_flag(argv, flag, models, tmp_path, run_cli):
    import keras

    dead = _mlp()
    dead.layers[0].bias.assign(np.full(8, -100.0, np.float32))  # every unit dead: revive draws new weights
    dead.save(tmp_path / "dead.keras")
    np.save(tmp_path / "x.npy", X)
    paths = {
        "mlp": models["mlp"][1],
        "dead": tmp_path / "dead.keras",
        "x": tmp_path / "x.npy",
        "out": tmp_path / "out.keras",
    }
    code, _, err = run_cli([a.format(**paths) for a in argv])
    line = _one_error_line(err)
    assert code == 2 and flag in line and "`" not in line.split("error: ", 1)[1].split(";")[0], line
    assert not (tmp_path / "out.keras").exists() and isinstance(dead, keras.Model)


@pytest.mark.parametrize("command", ["patch", "revive", "prune"])
def test_skip_bad_images_is_a_data_flag_of_every_command(models, tmp_path, run_cli, command):
    """`--skip-bad-images` reaches the scan of every command that reads data (one shared data flag)."""
    folder = _images(None, b"junk", None, b"")(tmp_path)
    extra = {"patch": ["--to", "leaky", "--only", "dead"], "revive": [], "prune": []}[command]
    argv = [command, models["cnn"][1], "--data", folder, *extra, "-o", tmp_path / "out.keras"]
    assert "pass --skip-bad-images" in _one_error_line(run_cli(argv)[2])
    code, _, err = run_cli([*argv, "--skip-bad-images"])
    assert "skipped 2 unreadable images" in err and "Traceback" not in err, err
    assert code in (0, 2)  # 2 only when the model has nothing the command can change


def test_revive_seed_is_checked_before_any_work(run_cli, tmp_path):
    code, _, err = run_cli(["revive", tmp_path / "missing.keras", "--data", tmp_path / "x.npy", "--seed", "-1"])
    assert code == 2 and "--seed" in err and "at least 0" in err
