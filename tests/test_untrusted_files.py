"""Model files are untrusted: nothing stored in one runs or is read unless the user passes `--unsafe`.

One harmless proof file per mechanism of attack on a Keras loader (the CVEs Keras has fixed, and
deadrelu's own loading paths beside Keras's). Each payload would leave a trace if it ran: a marker
file created, or the bytes of a secret file read into the weights or printed. Every command that
loads a model (`inspect`, `scan`, `patch`, `revive`, `prune`, `--retrain`) and `deadrelu.load_model`
must refuse each file in one line (exit 2), and afterwards no marker exists and the secret appears
in no output and no written file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import deadrelu
from deadrelu.cli import main
from deadrelu.errors import ModelLoadError

SECRET = "deadrelu-secret-7f3a9c"  # the secret file's text; as float32 bytes it would become weights


# -- the proof files -----------------------------------------------------------------------------


def _base_model():
    import keras

    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden), name="base")


def _dense_node(config: dict, layer: str) -> dict:
    """The (Keras 3) layer entry called `layer` in a functional model config."""
    return next(entry for entry in config["config"]["layers"] if entry["config"]["name"] == layer)


def _rewrite_keras(src: Path, dst: Path, edit=None, *, weights=None, extra=None) -> Path:
    """A copy of a `.keras` archive with its config edited, its weights replaced, or entries added."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename == "config.json" and edit is not None:
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            if info.filename == "model.weights.h5" and weights is not None:
                data = weights.read_bytes()
            out.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            out.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return dst


def _rewrite_h5(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return dst


def _first_kernel(f) -> tuple:
    """(group, name) of the hidden layer's 4×3 kernel in a Keras HDF5 weights file (either layout)."""
    found = []
    f.visititems(lambda name, obj: found.append(name) if getattr(obj, "shape", None) == (4, 3) else None)
    parent, _, name = found[0].rpartition("/")
    return f[parent], name


def _replace_dataset(path: Path, make) -> None:
    """Replaces the first kernel of an HDF5 weights file by `make(group, name, shape, dtype)`."""
    with h5py.File(path, "r+") as f:
        group, name = _first_kernel(f)
        shape, dtype = group[name].shape, group[name].dtype
        del group[name]
        make(group, name, shape, dtype)


class Files:
    """The proof files of one test module, and the traces their payloads would leave."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.marker = folder / "MARKER"
        self.secret = folder / "secret.txt"
        self.secret.write_bytes((SECRET * 64).encode()[:48])  # 48 bytes = a 4×3 float32 kernel
        self.secret_h5 = folder / "secret_store.h5"
        with h5py.File(self.secret_h5, "w") as f:
            f["kernel"] = np.frombuffer(self.secret.read_bytes(), dtype="float32").reshape(4, 3)
        model = _base_model()
        self.good_keras = folder / "good.keras"
        model.save(self.good_keras)
        self.good_h5 = folder / "good.h5"
        model.save(self.good_h5)
        self.probe = folder / "probe.npz"
        rng = np.random.default_rng(0)
        np.savez(self.probe, x=rng.normal(size=(32, 4)).astype("float32"), y=rng.integers(0, 2, 32))
        self.weights_file = folder / "good.weights.h5"
        with zipfile.ZipFile(self.good_keras) as archive:
            self.weights_file.write_bytes(archive.read("model.weights.h5"))
        self.paths: dict[str, Path] = {}

    def add(self, name: str, path: Path) -> None:
        self.paths[name] = path

    def traces(self) -> list[str]:
        """What a payload left behind: the marker file, or the secret in any file of the folder."""
        found = [str(self.marker)] if self.marker.exists() else []
        needle = SECRET.encode()
        sources = {self.secret, self.secret_h5}
        for path in self.folder.rglob("*"):
            if path.is_file() and path not in sources and needle in path.read_bytes():
                found.append(str(path))
        return found


class _OpenOnUnpickle:
    """Unpickling it creates the file at `path` (pickle calls `open(path, "w")`)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tf_op_entry(function: str, args: list) -> dict:
    return {
        "module": "deadrelu.io.legacy.tf_ops",
        "class_name": "TFOpLambda",
        "name": "op",
        "config": {"name": "op", "function": function, "trainable": True, "dtype": "float32"},
        "registered_name": "deadrelu>TFOpLambda",
        "inbound_nodes": [{"args": args, "kwargs": {}}],
    }


def _insert_layer(config: dict, entry: dict) -> None:
    """Adds a layer entry to a functional config (its result unused, as a gadget needs no output)."""
    config["config"]["layers"].insert(1, entry)


def _function(module: str, name: str) -> dict:
    return {"module": module, "class_name": "function", "config": name, "registered_name": name}


def _set_activation(value):
    return lambda config: _dense_node(config, "hidden")["config"].update(activation=value)


def _build(folder: Path) -> Files:
    files = Files(folder)
    marker, secret = str(files.marker), str(files.secret)
    good_keras, good_h5 = files.good_keras, files.good_h5

    # deadrelu's TFOpLambda resolver: tf._os is the os module; tf.io.gfile copies any file.
    files.add(
        "tf op _os.system (.keras)",
        _rewrite_keras(
            good_keras,
            folder / "tfop_system.keras",
            lambda c: _insert_layer(c, _tf_op_entry("_os.system", [f"touch {marker}"])),
        ),
    )
    files.add(
        "tf op io.gfile.copy (.h5)",
        _rewrite_h5(
            good_h5,
            folder / "tfop_copy.h5",
            lambda c: _insert_layer(c, _tf_op_entry("io.gfile.copy", [secret, marker])),
        ),
    )
    files.add(
        "tf op keras load_model (.keras)",
        _rewrite_keras(
            good_keras,
            folder / "tfop_load.keras",
            lambda c: _insert_layer(c, _tf_op_entry("keras.models.load_model", [secret])),
        ),
    )
    # CVE-2024-3660: a Lambda's Python code (Keras 3 form, and Keras 2 bytecode in .h5).
    import keras

    touch = eval(f"lambda x: (__import__('pathlib').Path({marker!r}).touch(), x)[1]")  # the payload, as Keras stores it
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(touch)(inputs))).save(folder / "lambda.keras")
    files.add("Lambda code (.keras)", folder / "lambda.keras")
    # CVE-2025-9905: a Keras 2 .h5 Lambda (marshalled bytecode), which Keras's legacy loader ran.
    import tf_keras

    keras2 = tf_keras.Sequential([tf_keras.layers.InputLayer((4,)), tf_keras.layers.Lambda(touch)])
    keras2.save(folder / "lambda_keras2.h5")
    files.marker.unlink()  # Keras and tf_keras ran the payload while building the models: it is real
    files.add("Lambda bytecode (Keras 2 .h5)", folder / "lambda_keras2.h5")

    def named_function(config):
        lambda_cfg = next(e for e in config["config"]["layers"] if e["class_name"] == "Lambda")["config"]
        lambda_cfg.update(function="system", function_type="function", module="os")

    files.add(
        "Lambda naming os.system (Keras 2 .h5)",
        _rewrite_h5(folder / "lambda_keras2.h5", folder / "lambda_named.h5", named_function),
    )
    # CVE-2025-1550: a config naming any module.
    files.add(
        "module os.system (.keras)",
        _rewrite_keras(good_keras, folder / "os_system.keras", _set_activation(_function("os", "system"))),
    )
    files.add(
        "module builtins.exec (.h5)",
        _rewrite_h5(good_h5, folder / "exec.h5", _set_activation(_function("builtins", "exec"))),
    )
    files.add(
        "top-level subprocess.Popen (.h5)",
        _rewrite_h5(
            good_h5,
            folder / "popen.h5",
            lambda c: c.update(module="subprocess", class_name="Popen", config={"args": ["touch", marker]}),
        ),
    )
    # CVE-2025-9906 / CVE-2025-8747: Keras functions that are not for modelling, as gadgets.
    files.add(
        "gadget enable_unsafe_deserialization (.keras)",
        _rewrite_keras(
            good_keras,
            folder / "unsafe_gadget.keras",
            _set_activation(_function("keras.config", "enable_unsafe_deserialization")),
        ),
    )
    files.add(
        "gadget load_model (.keras)",
        _rewrite_keras(
            good_keras, folder / "load_model.keras", _set_activation(_function("keras.models", "load_model"))
        ),
    )
    files.add(
        "gadget get_file (.keras)",
        _rewrite_keras(good_keras, folder / "get_file.keras", _set_activation(_function("keras.utils", "get_file"))),
    )
    files.add(
        "gadget set_global_attribute (.keras)",
        _rewrite_keras(
            good_keras,
            folder / "global_state.keras",
            _set_activation(_function("keras.src.backend.common.global_state", "set_global_attribute")),
        ),
    )
    files.add(
        "gadget SafeModeScope class (.keras)",
        _rewrite_keras(
            good_keras,
            folder / "scope.keras",
            lambda c: _insert_layer(
                c,
                {
                    "module": "keras.src.saving.serialization_lib",
                    "class_name": "SafeModeScope",
                    "config": {"safe_mode": False},
                    "registered_name": "SafeModeScope",
                },
            ),
        ),
    )
    # CVE-2025-12058: a lookup layer whose vocabulary is a path on the user's machine.
    lookup = {
        "module": "keras.layers",
        "class_name": "StringLookup",
        "config": {"name": "lookup", "vocabulary": secret, "output_mode": "int", "dtype": "int64"},
        "registered_name": None,
        "build_config": {"input_shape": [None, 1]},
    }
    files.add(
        "StringLookup vocabulary path (.keras)",
        _rewrite_keras(good_keras, folder / "lookup.keras", lambda c: _insert_layer(c, lookup)),
    )
    # CVE-2026-1462: TFSMLayer loads (and runs) another SavedModel from a stored path.
    tfsm = {
        "module": "keras.layers",
        "class_name": "TFSMLayer",
        "config": {"name": "tfsm", "filepath": str(folder), "call_endpoint": "serve"},
        "registered_name": None,
    }
    files.add("TFSMLayer (.keras)", _rewrite_keras(good_keras, folder / "tfsm.keras", lambda c: _insert_layer(c, tfsm)))
    # A pickled PyTorch module: torch.load runs the pickle's code (on the torch backend).
    torch_module = {
        "module": "keras.layers",
        "class_name": "TorchModuleWrapper",
        "config": {"name": "torch", "module": "gASVAAAAAAAAAAA="},
        "registered_name": None,
    }
    files.add(
        "TorchModuleWrapper pickle (.keras)",
        _rewrite_keras(good_keras, folder / "torch.keras", lambda c: _insert_layer(c, torch_module)),
    )

    # CVE-2026-1669: HDF5 external storage reads any local file into the weights (deadrelu's reader too).
    external = folder / "external.h5"
    shutil.copy(good_h5, external)
    _replace_dataset(external, lambda g, n, shape, dtype: g.create_dataset(n, shape, dtype, external=[(secret, 0, 48)]))
    files.add("HDF5 external storage (.h5)", external)
    external_keras_weights = folder / "external.weights.h5"
    shutil.copy(files.weights_file, external_keras_weights)
    _replace_dataset(
        external_keras_weights,
        lambda g, n, shape, dtype: g.create_dataset(n, shape, dtype, external=[(secret, 0, 48)]),
    )
    files.add(
        "HDF5 external storage (.keras weights)",
        _rewrite_keras(good_keras, folder / "external.keras", weights=external_keras_weights),
    )
    # Links to another file, or within the file, and virtual datasets (other files' data).
    linked = folder / "external_link.h5"
    shutil.copy(good_h5, linked)
    _replace_dataset(linked, lambda g, n, *_: g.__setitem__(n, h5py.ExternalLink(str(files.secret_h5), "kernel")))
    files.add("HDF5 external link (.h5)", linked)
    soft = folder / "soft_link.h5"
    shutil.copy(good_h5, soft)
    with h5py.File(soft, "r+") as f:
        f["stolen"] = np.zeros((4, 3), "float32")
    _replace_dataset(soft, lambda g, n, *_: g.__setitem__(n, h5py.SoftLink("/stolen")))
    files.add("HDF5 soft link (.h5)", soft)

    def virtual(group, name, shape, dtype):
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(str(files.secret_h5), "kernel", shape=shape)
        group.create_virtual_dataset(name, layout)

    virtual_file = folder / "virtual.h5"
    shutil.copy(good_h5, virtual_file)
    _replace_dataset(virtual_file, virtual)
    files.add("HDF5 virtual dataset (.h5)", virtual_file)
    # CVE-2026-0897: a dataset declaring 64 GiB that stores nothing.
    bomb = folder / "bomb.h5"
    shutil.copy(good_h5, bomb)
    _replace_dataset(bomb, lambda g, n, shape, dtype: g.create_dataset(n, (1 << 17, 1 << 17), "float32", chunks=True))
    files.add("HDF5 shape bomb (.h5)", bomb)
    # Keras before 3.15 reads a `.keras` archive's model.weights.npz with allow_pickle=True.
    pickled = folder / "pickled.keras"
    payload = io.BytesIO()
    np.savez(payload, **{"0": np.array([_OpenOnUnpickle(marker)], dtype=object)})
    with zipfile.ZipFile(good_keras) as archive, zipfile.ZipFile(pickled, "w") as out:
        for info in archive.infolist():
            if info.filename != "model.weights.h5":
                out.writestr(info.filename, archive.read(info))
        out.writestr("model.weights.npz", payload.getvalue())
    files.add("pickle in model.weights.npz (.keras)", pickled)
    # A zip entry that inflates 1000-fold (a zip bomb's first step).
    files.add(
        "zip bomb entry (.keras)",
        _rewrite_keras(good_keras, folder / "zipbomb.keras", extra={"assets/blob": b"\0" * (200 << 20)}),
    )
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    return _build(tmp_path_factory.mktemp("untrusted"))


MECHANISMS = [
    "tf op _os.system (.keras)",
    "tf op io.gfile.copy (.h5)",
    "tf op keras load_model (.keras)",
    "Lambda code (.keras)",
    "Lambda bytecode (Keras 2 .h5)",
    "Lambda naming os.system (Keras 2 .h5)",
    "module os.system (.keras)",
    "module builtins.exec (.h5)",
    "top-level subprocess.Popen (.h5)",
    "gadget enable_unsafe_deserialization (.keras)",
    "gadget load_model (.keras)",
    "gadget get_file (.keras)",
    "gadget set_global_attribute (.keras)",
    "gadget SafeModeScope class (.keras)",
    "StringLookup vocabulary path (.keras)",
    "TFSMLayer (.keras)",
    "TorchModuleWrapper pickle (.keras)",
    "HDF5 external storage (.h5)",
    "HDF5 external storage (.keras weights)",
    "HDF5 external link (.h5)",
    "HDF5 soft link (.h5)",
    "HDF5 virtual dataset (.h5)",
    "HDF5 shape bomb (.h5)",
    "zip bomb entry (.keras)",
    "pickle in model.weights.npz (.keras)",
]
# Mechanisms that `--unsafe` does not open: no model needs them (the rule in docs/cli.md, "Security").
UNSAFE_OPENS = {
    "Lambda code (.keras)",
    "Lambda bytecode (Keras 2 .h5)",
    "StringLookup vocabulary path (.keras)",
    "TFSMLayer (.keras)",
    "TorchModuleWrapper pickle (.keras)",
}
ALWAYS_REFUSED = [m for m in MECHANISMS if m not in UNSAFE_OPENS]


def _commands(files: Files, model: Path, out: Path) -> list[list[str]]:
    data = ["--data", str(files.probe)]
    return [
        ["inspect", str(model)],
        ["scan", str(model), *data, "--json", str(out.with_suffix(".json"))],
        ["patch", str(model), "--to", "leaky", "-o", str(out)],
        ["revive", str(model), *data, "-o", str(out)],
        ["prune", str(model), *data, "-o", str(out)],
        ["patch", str(model), "--to", "prelu", *data, "--retrain", "--epochs", "1", "-o", str(out)],
    ]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_every_command_refuses_the_file_and_nothing_runs_or_leaks(files, mechanism, capfd, tmp_path):
    model = files.paths[mechanism]
    before = model.read_bytes() if model.is_file() else None
    for argv in _commands(files, model, tmp_path / "out.keras"):
        code = main(argv)
        captured = capfd.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2, (argv, captured.err)
        assert len(lines) == 1 and lines[0].startswith("deadrelu: error: "), captured.err
        assert SECRET not in captured.out + captured.err
        assert not list(tmp_path.iterdir()), f"{argv[0]} wrote {list(tmp_path.iterdir())}"
    with pytest.raises(ModelLoadError):
        deadrelu.load_model(str(model))
    assert files.traces() == []
    assert model.read_bytes() == before


@pytest.mark.parametrize("mechanism", ALWAYS_REFUSED)
def test_unsafe_does_not_open_what_no_model_needs(files, mechanism):
    with pytest.raises(ModelLoadError) as refused:
        deadrelu.load_model(str(files.paths[mechanism]), unsafe=True)
    assert SECRET not in str(refused.value)
    assert files.traces() == []


def test_the_refusal_says_what_and_how(files):
    def message(mechanism, **options):
        with pytest.raises(ModelLoadError) as refused:
            deadrelu.load_model(str(files.paths[mechanism]), **options)
        return str(refused.value)

    assert "not part of Keras" in message("module os.system (.keras)", unsafe=True)
    assert "tf._os.system" in message("tf op _os.system (.keras)")
    assert "unsafe" in message("Lambda code (.keras)")
    assert "unsafe" in message("StringLookup vocabulary path (.keras)")
    assert "external" in message("HDF5 external storage (.h5)")
    assert "not a Keras model" in message("top-level subprocess.Popen (.h5)") or "not part of Keras" in message(
        "top-level subprocess.Popen (.h5)"
    )
    assert "64" in message("HDF5 shape bomb (.h5)") or "bytes" in message("HDF5 shape bomb (.h5)")


def test_unsafe_runs_a_lambda_only_when_asked(files):
    """The control: the Lambda payload is real, and `unsafe=True` is what lets it run."""
    assert not files.marker.exists()
    model = deadrelu.load_model(str(files.paths["Lambda code (.keras)"]), unsafe=True)
    model.predict(np.zeros((1, 4), "float32"), verbose=0)
    assert files.marker.exists()
    files.marker.unlink()


def test_importing_deadrelu_registers_nothing_plain_keras_would_find(files):
    """The op layer is deadrelu's; plain Keras in the same process must not build it from a file."""
    import keras

    with pytest.raises(Exception):  # noqa: B017, PT011 - Keras's own refusal, whatever its type
        keras.models.load_model(files.paths["tf op _os.system (.keras)"], safe_mode=True)
    assert keras.saving.get_registered_object("deadrelu>TFOpLambda") is None
    assert not files.marker.exists()


def test_real_files_still_load(files):
    """The guards refuse attacks, not models: the clean files (and every ../shared model) load."""
    x = np.load(files.probe)["x"]
    reference = _base_model()
    for path in (files.good_keras, files.good_h5):
        model = deadrelu.load_model(str(path))
        assert model.predict(x, verbose=0).shape == (32, 2)
        assert [w.shape for w in model.weights] == [w.shape for w in reference.weights]


def test_allowed_tf_ops_cover_what_tf_keras_stores():
    """Ops that tf.keras files hold resolve; private, I/O, printing and Python ops do not."""
    from deadrelu.io.legacy.tf_ops import resolve_tf_op

    for name in [
        "nn.relu",
        "math.multiply",
        "__operators__.add",
        "__operators__.getitem",
        "concat",
        "reshape",
        "compat.v1.squeeze",
        "math.reduce_mean",
        "image.resize",
        "einsum",
        "stack",
        "nn.softmax",
        "linalg.matmul",
        "signal.stft",
        "clip_by_value",
    ]:
        assert callable(resolve_tf_op(name)), name
    for name in [
        "_os.system",
        "io.gfile.copy",
        "io.read_file",
        "io.write_file",
        "print",
        "py_function",
        "numpy_function",
        "keras.models.load_model",
        "saved_model.load",
        "compat.v1.gfile.Copy",
        "math._os",
        "config.run_functions_eagerly",
        "load_op_library",
        "strings.join",
        "debugging.set_log_device_placement",
        "nn.__class__",
    ]:
        with pytest.raises(ModelLoadError):
            resolve_tf_op(name)


def test_no_mechanism_is_left_without_a_file(files):
    assert sorted(files.paths) == sorted(MECHANISMS)
    assert all(os.path.exists(p) for p in files.paths.values())


def test_a_data_file_reading_another_file_is_refused(files, capfd, tmp_path):
    """--data is read as HDF5 by deadrelu too: its datasets may not live in, or link to, other files."""
    data = tmp_path / "data.h5"
    with h5py.File(data, "w") as f:
        f.create_dataset("x", (12, 4), "float32", external=[(str(files.secret), 0, 192)])
    assert main(["scan", str(files.good_keras), "--data", f"{data}:x"]) == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "another file" in err and SECRET not in err


def test_hostile_structure_is_bad_input_not_a_crash(files, tmp_path, capfd):
    """Nesting deeper than Python's recursion limit, and an HDF5 group that contains itself."""
    deep = _rewrite_keras(files.good_keras, tmp_path / "deep.keras")
    with zipfile.ZipFile(deep, "a") as archive:
        archive.writestr("config.json", '{"class_name": "Sequential", "config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    cyclic = tmp_path / "cyclic.h5"
    shutil.copy(files.good_h5, cyclic)
    with h5py.File(cyclic, "r+") as f:
        f["model_weights"]["loop"] = f["model_weights"]  # a hard link back to its parent
    for path in (deep, cyclic):
        code = main(["inspect", str(path)])
        err = capfd.readouterr().err
        assert code in (0, 2) and "internal error" not in err and "Traceback" not in err, err
