"""A diverged model (NaN and ±inf in weights and activations): the verdict *non-finite*, the same on every path.

1. One model diverged by construction — a Dense with units whose outputs overflow to +inf or
   NaN on some samples and a NaN in its kernel, a ReLU(threshold) fed by a Dense with a NaN
   kernel column, a relu6 Dense with a NaN bias, a Conv1D whose unit overflows at some
   positions only, a custom activation (an op-level site) with an overflowing unit, next to
   ordinary dead, saturated and live units — scanned on (a) deadrelu's fused kernel, (b)
   TensorFlow's ops, (c) JAX and (d) PyTorch (each in a subprocess running this file as a
   script). Each is compared with numpy on the activations that backend materialises itself
   (`predict`, so that TensorFlow runs the same optimised graph as the scan), and all four give
   the same `non_finite`, `non_finite_weights`, `dead`, `saturated` and `fires`.
2. The report says it: summary fields, JSON (valid, no NaN), the summary line, table, HTML and
   notebook view; the command line's `--fail-on` gate exits 1 on a diverged model whatever the
   fraction; a healthy model has no non-finite unit anywhere.
3. The monitor on a real `fit` that diverges (SGD with a huge learning rate): the logs carry the
   non-finite fraction, it says once that the model has diverged, and `on_dead="stop"` stops.
"""

from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np

L = keras.layers
TINY = np.finfo(np.float32).tiny  # below it an output is subnormal: read as zero by every path
BIG = 1e10  # a weight that takes a 1e30 input past float32's range (3.4e38): +inf
BAD_SAMPLES = [0, 7, 21]  # the samples whose inputs 3 and 4 are 1e30
SITE_LAYERS = {"conv": "conv", "hidden": "hidden", "thr": "thr", "capped": "capped", "custom:relu_0": "custom"}


def my_relu(x):
    """A custom activation function: its ReLU is an op-level site (`custom:relu_0`)."""
    return keras.ops.relu(x)


def diverged_model() -> keras.Model:
    """A model with non-finite units planted by construction, beside dead, saturated and live ones.

    Per site (units by index):
        hidden (Dense, relu): 0 dead, 1 live, 2 +inf on the bad samples, 3 inf − inf (NaN, or +inf
            where the product is fused) on the bad samples, 4 live (dying), 5 NaN in its kernel column.
        thr (ReLU(threshold=0.5) after Dense "pre"): 0 live, 1 NaN in pre's kernel column (the
            threshold maps NaN to 0: only the weights tell), 2 dead.
        capped (Dense, relu6): 0 NaN bias, 1 saturated, 2 live.
        custom:relu_0 (Dense, custom activation): 0 silent except +inf on the bad samples, 1 live.
        conv (Conv1D over the 5 inputs as positions, relu): 0 +inf at positions 3 and 4 of the bad
            samples and live elsewhere, 1 dead.
    """
    nan = np.nan
    x = keras.Input((5,), name="x")
    hidden = L.Dense(6, activation="relu", name="hidden")(x)
    thr = L.ReLU(threshold=0.5, name="thr")(L.Dense(3, name="pre")(x))
    capped = L.Dense(3, activation="relu6", name="capped")(x)
    custom = L.Dense(2, activation=my_relu, name="custom")(x)
    conv = L.Flatten()(L.Conv1D(2, 1, activation="relu", name="conv")(L.Reshape((5, 1))(x)))
    out = L.Dense(1, name="out")(L.Concatenate()([hidden, thr, capped, custom, conv]))
    model = keras.Model(x, out, name="diverged")

    def kernel(rows):
        return np.array(rows, "float32")

    model.get_layer("hidden").set_weights(
        [
            kernel(
                [
                    [-1, 1, 0.5, 0, 1, nan],
                    [-1, 1, 0, 0.5, 0, 0],
                    [-1, 1, 0, 0, 0, 0],
                    [0, 0, BIG, BIG, 0, 0],
                    [0, 0, 0, -BIG, 0, 0],
                ]
            ),
            kernel([-0.1, 0, 0, 0, -0.9, 0]),
        ]
    )
    model.get_layer("pre").set_weights(
        [kernel([[1, 1, -1], [1, nan, -1], [1, 0, -1], [0, 0, 0], [0, 0, 0]]), kernel([0, 0, 0])]
    )
    model.get_layer("capped").set_weights(
        [kernel([[0, 10, 1], [0, 10, 0], [0, 10, 0], [0, 0, 0], [0, 0, 0]]), kernel([nan, 10, 0])]
    )
    model.get_layer("custom").set_weights([kernel([[0, 1], [0, 1], [0, 0], [BIG, 0], [BIG, 0]]), kernel([0, -0.5])])
    model.get_layer("conv").set_weights([kernel([[[BIG, -1]]]), kernel([0, 0])])
    return model


# Units whose own weights hold NaN, by construction (the weights the scan must read).
WEIGHTS_NON_FINITE = {"hidden": [5], "thr": [1], "capped": [0], "custom:relu_0": [], "conv": []}


def diverged_data(n: int = 40) -> np.ndarray:
    """Inputs 0–2 uniform in [0, 1); inputs 3 and 4 zero, except 1e30 (finite) on `BAD_SAMPLES`."""
    x = np.zeros((n, 5), "float32")
    x[:, :3] = np.random.default_rng(0).uniform(0, 1, (n, 3))
    x[BAD_SAMPLES, 3:] = 1e30
    return x


def numpy_reference(model, x) -> dict:
    """Per site, from the activations this backend materialises: fires and non-finite counts per unit.

    The layers run eagerly, each op on its own, as Keras defines them: a ReLU passes NaN through
    (a threshold zeroes it). The scan computes the same: it records each site's pre-activation, so
    TensorFlow's graph optimiser no longer fuses a Dense's product, bias and ReLU into the one
    kernel `model.predict` runs, which maps NaN to 0.
    """
    names = list(SITE_LAYERS)
    extractor = keras.Model(model.inputs, [model.get_layer(SITE_LAYERS[name]).output for name in names])
    batches = [extractor(x[i : i + 16], training=False) for i in range(0, len(x), 16)]
    outputs = [np.concatenate([keras.ops.convert_to_numpy(b[k]) for b in batches]) for k in range(len(names))]
    reference = {}
    for name, out in zip(names, outputs):
        out = np.asarray(out, np.float64).reshape(len(x), -1, out.shape[-1])  # (sample, position, unit)
        finite = np.isfinite(out)
        reference[name] = {
            "fires": (finite & (np.abs(out) >= TINY)).sum(axis=(0, 1)).tolist(),
            "non_finite_outputs": (~finite).sum(axis=(0, 1)).tolist(),
        }
    return reference


def scan_numbers(report) -> dict:
    """What the paths are compared on, per site."""
    return {
        site.path: {
            "non_finite": site.non_finite,
            "non_finite_weights": site.non_finite_weights,
            "dead": site.dead,
            "dying": site.dying,
            "saturated": site.saturated,
            "fires": [int(v) for v in site.fires],
            "non_finite_outputs": [int(v) for v in site.non_finite_outputs],
            "finite_numbers": bool(np.isfinite(site.mean_abs).all() and np.isfinite(site.max_output).all()),
        }
        for site in report.sites
    }


def measure_here() -> dict:
    """Scans the diverged model on this process's backend; with the numpy reference and the summary."""
    import deadrelu

    model, x = diverged_model(), diverged_data()
    report = deadrelu.scan(model, x, batch_size=16)
    return {
        "backend": keras.backend.backend(),
        "scan": scan_numbers(report),
        "numpy": numpy_reference(model, x),
        "summary": report.summary,
        "layers": [layer.name for layer in model.layers],
    }


if __name__ == "__main__":  # `KERAS_BACKEND=jax python tests/test_non_finite.py`: one path's numbers as JSON
    print("RESULT " + json.dumps(measure_here()))
    sys.exit(0)


# -- the tests (pytest, on TensorFlow) ------------------------------------------------------------

import pytest  # noqa: E402

import deadrelu  # noqa: E402
from deadrelu import kernel  # noqa: E402
from deadrelu.engine.probe import probe_for  # noqa: E402
from paths import ROOT  # noqa: E402
from processes import run_at_once  # noqa: E402

# Seconds a JAX or PyTorch subprocess may take (under 20 s on 2 cores) before it is killed.
TIMEOUT = 240


def run_backend(backend: str) -> dict:
    """This file as a script under `KERAS_BACKEND=backend`, bounded in time; its JSON result."""
    pytest.importorskip(backend, reason=f"{backend} is not installed (pip install 'deadrelu[{backend}]')")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    (done,) = run_at_once([[sys.executable, __file__]], envs=[env], cwd=ROOT, timeout=TIMEOUT, merge_stderr=True)
    output = done.stdout
    if done.returncode is None:
        pytest.fail(f"the scan on {backend} took over {TIMEOUT} s and was killed:\n{output[-4000:]}")
    assert done.returncode == 0, output[-6000:]
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["backend"] == backend
    return result


@pytest.fixture(scope="module")
def paths():
    """The diverged model measured on the four engine paths: {path name: `measure_here()`}."""
    if kernel.ops() is None:
        pytest.skip(f"the fused kernel is not available here: {kernel.status()}")
    results = {"kernel": measure_here()}
    model = diverged_model()
    deadrelu.scan(model, diverged_data())
    assert probe_for(model)._kernel is not None, "the first path must run on the fused kernel"
    os.environ["DEADRELU_KERNEL"] = "off"
    try:
        results["tensorflow ops"] = measure_here()
        deadrelu.scan(model, diverged_data())
        assert probe_for(model)._kernel is None, "the second path must run on TensorFlow's ops"
    finally:
        del os.environ["DEADRELU_KERNEL"]
    for backend in ("jax", "torch"):
        results[backend] = run_backend(backend)
    return results


@pytest.mark.slow
def test_every_path_matches_numpy_on_its_own_activations(paths):
    for name, result in paths.items():
        for site, numbers in result["scan"].items():
            want = result["numpy"][site]
            assert numbers["fires"] == want["fires"], (name, site)
            assert numbers["non_finite_outputs"] == want["non_finite_outputs"], (name, site)
            bad = np.array(want["non_finite_outputs"]) > 0
            weights = np.zeros(len(bad), bool)
            weights[WEIGHTS_NON_FINITE[site]] = True
            assert numbers["non_finite_weights"] == WEIGHTS_NON_FINITE[site], (name, site)
            assert numbers["non_finite"] == np.flatnonzero(bad | weights).tolist(), (name, site)
            dead = (np.array(want["fires"]) == 0) & ~(bad | weights)
            assert numbers["dead"] == np.flatnonzero(dead).tolist(), (name, site)  # never garbage, never both
            assert numbers["finite_numbers"], (name, site)


@pytest.mark.slow
def test_the_four_paths_give_the_same_verdicts_and_counts(paths):
    first = paths["kernel"]
    for name, result in paths.items():
        assert result["scan"].keys() == first["scan"].keys(), name
        for site, numbers in result["scan"].items():
            base = first["scan"][site]
            for key in ("non_finite", "non_finite_weights", "dead", "dying", "saturated", "fires"):
                assert numbers[key] == base[key], (name, site, key)
            # Non-finite output counts agree wherever the unit's own weights are finite; a NaN
            # weight behind a fused ReLU reads 0 on TensorFlow (its fused kernel) and NaN elsewhere.
            finite_weights = [j for j in range(len(base["fires"])) if j not in WEIGHTS_NON_FINITE[site]]
            assert [numbers["non_finite_outputs"][j] for j in finite_weights] == [
                base["non_finite_outputs"][j] for j in finite_weights
            ], (name, site)
        assert result["summary"]["diverged"] is True
        assert result["summary"]["non_finite"] == first["summary"]["non_finite"] == 7


@pytest.mark.slow
def test_the_planted_units_get_their_verdicts(paths):
    scan = paths["kernel"]["scan"]
    assert (scan["hidden"]["non_finite"], scan["hidden"]["dead"]) == ([2, 3, 5], [0])
    assert (scan["thr"]["non_finite"], scan["thr"]["dead"]) == ([1], [2])  # NaN zeroed by the threshold: weights tell
    assert (scan["capped"]["non_finite"], scan["capped"]["saturated"]) == ([0], [1])
    assert (scan["custom:relu_0"]["non_finite"], scan["custom:relu_0"]["dead"]) == ([0], [])  # silent but inf: not dead
    assert (scan["conv"]["non_finite"], scan["conv"]["dead"]) == ([0], [1])
    # The conv unit fires at the finite positions and is non-finite at the two overflowing ones.
    assert scan["conv"]["non_finite_outputs"][0] == 2 * len(BAD_SAMPLES) and scan["conv"]["fires"][0] > 0


@pytest.mark.slow
def test_where_it_diverged_first(paths):
    for name, result in paths.items():
        layers = [layer for layer in result["layers"] if layer in ("pre", "hidden", "capped")]
        sites = [site for site, numbers in result["numpy"].items() if any(numbers["non_finite_outputs"])]
        site_order = list(result["scan"])
        first_site = min(sites, key=site_order.index)
        assert result["summary"]["first_non_finite"] == {"weights": layers[0], "outputs": first_site}, name


# -- whose weights a unit owns ----------------------------------------------------------------------


def _conv_bn_relu():
    inputs = keras.Input((6, 6, 3))
    h = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inputs))
    return keras.Model(inputs, L.Activation("relu", name="site")(h)), "bn", "moving_variance", (2,)


def _channels_first_relu():
    inputs = keras.Input((3, 6, 6))
    h = L.Conv2D(5, 3, data_format="channels_first", name="conv")(inputs)
    return keras.Model(inputs, L.ReLU(name="site")(h)), "conv", "kernel", (1, 2, 0, 3)


OWNERS = {
    # name: (model, layer holding the planted NaN, its weight, index of the NaN entry)
    "Conv2D → BatchNormalization → Activation": _conv_bn_relu,
    "channels-first Conv2D → ReLU": _channels_first_relu,
    "Conv2DTranspose": lambda: (
        keras.Sequential([keras.Input((4, 4, 3)), L.Conv2DTranspose(5, 3, activation="relu", name="site")]),
        "site",
        "kernel",
        (0, 1, 3, 2),  # (..., out, in): unit 3
    ),
    "DepthwiseConv2D, multiplier 2": lambda: (
        keras.Sequential(
            [keras.Input((5, 5, 3)), L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="site")]
        ),
        "site",
        "kernel",
        (1, 0, 2, 1),  # channel 2, multiplier 1: unit 5
    ),
    "SeparableConv2D pointwise": lambda: (
        keras.Sequential([keras.Input((5, 5, 3)), L.SeparableConv2D(4, 3, activation="relu", name="site")]),
        "site",
        "pointwise_kernel",
        (0, 0, 1, 2),
    ),
    "SeparableConv2D depthwise (every unit reads it)": lambda: (
        keras.Sequential([keras.Input((5, 5, 3)), L.SeparableConv2D(4, 3, activation="relu", name="site")]),
        "site",
        "depthwise_kernel",
        (2, 1, 0, 0),
    ),
}


@pytest.mark.parametrize("name", list(OWNERS))
def test_a_nan_weight_makes_exactly_the_units_that_read_it_non_finite(name):
    """The units the scan says own a NaN weight are those an eager forward pass (no fused kernel) turns NaN."""
    keras.utils.set_random_seed(0)
    model, layer_name, weight, index = OWNERS[name]()
    variable = next(v for v in model.get_layer(layer_name).weights if v.name == weight)
    value = keras.ops.convert_to_numpy(variable).copy()
    value[index] = np.nan
    variable.assign(value)
    x = np.random.default_rng(0).uniform(0, 1, (8, *model.input_shape[1:])).astype("float32")
    eager = np.asarray(model(x, training=False))  # eager: TensorFlow's unfused ReLU keeps NaN
    axis = 1 if "channels-first" in name else -1
    expected = np.flatnonzero(np.isnan(np.moveaxis(eager, axis, -1)).reshape(-1, eager.shape[axis]).any(axis=0))
    assert len(expected) > 0 and (len(expected) < eager.shape[axis] or "every unit" in name)
    site = deadrelu.scan(model, x).sites[-1]
    assert site.non_finite_weights == expected.tolist()
    assert set(expected) <= set(site.non_finite) and not set(site.dead) & set(site.non_finite)


# -- the report and the command line --------------------------------------------------------------


@pytest.fixture(scope="module")
def report():
    return deadrelu.scan(diverged_model(), diverged_data(), batch_size=16)


def test_summary_json_and_views_say_the_model_diverged(report, tmp_path):
    summary = report.summary
    assert summary["diverged"] and report.diverged
    assert summary["non_finite"] == sum(len(s.non_finite) for s in report.sites) == 7
    assert (
        summary["non_finite"] + summary["dead"] + summary["dying"] + summary["saturated"] + summary["healthy"]
        == summary["units"]
    )
    assert [layer["path"] for layer in report.non_finite_layers] == ["pre", "hidden", "capped"]
    assert all(layer["values"] == 1 for layer in report.non_finite_layers)
    for site in report.sites:
        for unit in site.non_finite:
            assert site.status(unit) == "non_finite" and unit not in site.dead + site.dying + site.saturated

    path = tmp_path / "scan.json"
    report.to_json(str(path))
    d = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert d["summary"]["diverged"] is True and d["summary"]["first_non_finite"]["weights"] == "pre"
    hidden = next(site for site in d["sites"] if site["path"] == "hidden")
    assert hidden["non_finite"] == [2, 3, 5] and hidden["non_finite_weights"] == [5] and hidden["dead"] == [0]
    again = deadrelu.Report.from_json(str(path))
    assert again.summary == summary and [s.non_finite for s in again.sites] == [s.non_finite for s in report.sites]

    from deadrelu.views.html import render_html
    from deadrelu.views.notebook import report_html
    from deadrelu.views.terminal import markdown_table, summary_text

    line = summary_text(report).plain
    assert "7 non-finite" in line and "the model has diverged" in line
    assert "weights first non-finite in layer 'pre'" in line and "outputs first non-finite at site 'conv'" in line
    assert "| non-finite |" in markdown_table(report).splitlines()[2]
    page = render_html(report, site_figures=0)
    assert "Non-finite weights" in page and "The model has diverged" in page
    notebook = report_html(report, figure=False)  # the notebook view (`_repr_html_`), without its figure
    assert "the model has diverged" in notebook and "✗ non-finite" in notebook
    assert "DIVERGED: 7 non-finite" in repr(report)


def test_gradients_stay_finite_numbers_on_both_tensorflow_paths(monkeypatch):
    model = diverged_model()
    model.compile(loss="mse")
    x = diverged_data()
    y = np.zeros((len(x), 1), "float32")
    fast = deadrelu.scan(model, x, y, gradients=True, batch_size=16)
    monkeypatch.setenv("DEADRELU_KERNEL", "off")
    plain = deadrelu.scan(model, x, y, gradients=True, batch_size=16)
    for a, b in zip(fast.sites, plain.sites):
        assert (a.non_finite, a.dead, a.fires.tolist()) == (b.non_finite, b.dead, b.fires.tolist())
        assert np.isfinite(a.grad_mean_abs).all() and np.isfinite(a.grad_zero_rate).all()
        np.testing.assert_allclose(a.grad_mean_abs, b.grad_mean_abs, rtol=1e-6)
        np.testing.assert_array_equal(a.grad_zero_rate, b.grad_zero_rate)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A diverged model file (NaN kernel column, a dead unit) and a healthy one, with their data."""
    folder = tmp_path_factory.mktemp("non_finite")
    keras.utils.set_random_seed(5)
    x = np.random.default_rng(1).uniform(0, 1, (64, 4)).astype("float32")
    files = {}
    for name in ("healthy", "diverged"):
        model = keras.Sequential(
            [keras.Input((4,)), L.Dense(8, activation="relu", name="hidden"), L.Dense(2, name="out")], name=name
        )
        # Positive weights on inputs in [0, 1): every unit fires, except the planted ones.
        kernel, bias = np.random.default_rng(2).uniform(0.1, 1.0, (4, 8)).astype("float32"), np.zeros(8, "float32")
        if name == "diverged":
            kernel[1, 3] = np.nan
            bias[0] = -100.0  # a dead unit beside the NaN one
        model.get_layer("hidden").set_weights([kernel, bias])
        files[name] = folder / f"{name}.keras"
        model.save(files[name])
    np.save(folder / "x.npy", x)
    return files, folder / "x.npy"


def test_cli_summary_json_and_fail_on_gate(model_files, run_cli, tmp_path):
    files, data = model_files
    code, out, err = run_cli(["scan", files["diverged"], "--data", data, "--quiet"])
    assert code == 0, err
    assert (
        "the model has diverged: 1 unit is non-finite (NaN/inf); weights first non-finite in layer 'hidden'"
        in " ".join(out.split())
    )
    assert "✗ non-finite" in out

    code, out, err = run_cli(["scan", files["diverged"], "--data", data, "--format", "json", "--quiet"])
    d = json.loads(out)
    assert code == 0 and d["summary"]["diverged"] is True and d["summary"]["non_finite"] == 1
    assert d["sites"][0]["non_finite"] == [3] and d["sites"][0]["non_finite_weights"] == [3]
    assert d["sites"][0]["dead"] == [0] and d["non_finite_layers"][0]["path"] == "hidden"

    # The dead fraction (1/8) is under every gate below: the divergence alone fails them.
    for fraction in ("0.5", "1"):
        code, _, err = run_cli(["scan", files["diverged"], "--data", data, "--fail-on", fraction])
        assert code == 1 and "the model has diverged (NaN/inf): it fails --fail-on" in err, err
    code, out, err = run_cli(["scan", files["healthy"], "--data", data, "--fail-on", "1", "--format", "json"])
    assert code == 0 and json.loads(out)["summary"]["diverged"] is False, err


def test_a_healthy_model_has_no_non_finite_unit_anywhere(model_files):
    files, data = model_files
    report = deadrelu.scan(str(files["healthy"]), str(data))
    summary = report.summary
    assert (summary["diverged"], summary["non_finite"], summary["first_non_finite"]) == (False, 0, None)
    assert report.non_finite_layers == []
    for site in report.sites:
        assert site.non_finite == [] and site.non_finite_weights == []
        assert not site.non_finite_outputs.any()
    from deadrelu.views.terminal import summary_text

    assert "diverged" not in summary_text(report).plain and "non-finite" not in summary_text(report).plain


# -- the monitor on a fit that diverges -----------------------------------------------------------


def _diverging_fit(on_dead: str, epochs: int):
    """A fit whose SGD step (learning rate 1e12) sends the weights past float32's range at once."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (128, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1)) * 100).astype("float32")
    model = keras.Sequential(
        [keras.Input((6,)), L.Dense(12, activation="relu", name="hidden"), L.Dense(1, name="out")], name="blowup"
    )
    model.compile(optimizer=keras.optimizers.SGD(1e12), loss="mse")
    monitor = deadrelu.DeadReluMonitor(x[:64], on_dead=on_dead, log_details=True)
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[monitor])
    return monitor, history


def test_monitor_logs_and_says_once_that_training_diverged(capsys):
    monitor, history = _diverging_fit("warn", epochs=3)
    assert len(history.history["loss"]) == 3 and not np.isfinite(history.history["loss"][-1])
    fractions = history.history["deadrelu/non_finite_fraction"]
    assert fractions[-1] > 0 and fractions == [c.non_finite_fraction for c in monitor.timeline]
    last = monitor.timeline[-1]
    assert last.diverged and sum(map(len, last.non_finite.values())) == round(fractions[-1] * 12)
    assert monitor.last_report.summary["first_non_finite"]["weights"] in ("hidden", "out")
    lines = [line for line in capsys.readouterr().out.splitlines() if "the model has diverged" in line]
    assert len(lines) == 1 and lines[0].startswith("deadrelu: epoch "), lines
    assert "non-finite (NaN/inf); weights first non-finite in layer" in lines[0]


def test_monitor_stop_ends_a_diverged_fit(capsys):
    monitor, history = _diverging_fit("stop", epochs=5)
    assert len(history.history["loss"]) == len(monitor.timeline) < 5
    assert monitor.timeline[-1].diverged and monitor.timeline[-1].action == "stop"
    assert any("stopping training" in line for line in capsys.readouterr().out.splitlines())
