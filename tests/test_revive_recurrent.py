"""`revive` on recurrent layers: a dead `SimpleRNN` / `GRU` / `LSTM` unit gets fresh weights, the outputs stay.

Each model plants dead units by construction (a candidate bias of -100; for an LSTM also an input
gate shut with -1000, which kills the cell state while the candidate still fires) and checks them
dead with a scan first. After `revive`: the outputs computed by plain Keras are unchanged
(max |Δ| ≤ 1e-5 × max(1, |output|)); the weights are changed where the module says and nowhere
else (every gate's incoming columns of the unit, its row of the recurrent kernel, the reading
layer's rows); the revived units fire again, both on a rescan and in the numpy step-by-step
reference (tests/recurrent_reference.py) run on the new weights; and putting back one cut weight
changes the outputs (the cut is what keeps them, the unit really fires).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.cli import main
from recurrent_reference import gru_steps, lstm_steps, plant_candidate

L = keras.layers
N, T, F = 24, 4, 4
TOLERANCE = 1e-5


def data(seed=0):
    return np.random.default_rng(seed).normal(scale=1.5, size=(N, T, F)).astype("float32")


def outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)


def assert_unchanged(before, after, x):
    a, b = outputs(before, x), outputs(after, x)
    assert np.max(np.abs(a - b)) <= TOLERANCE * max(1.0, float(np.max(np.abs(a))))


def cell_weights(layer):
    return [np.array(w) for w in layer.get_weights()]


def gate_columns(units: int, gates: int, unit: int) -> list[int]:
    return [g * units + unit for g in range(gates)]


def plant_simple(layer, units) -> None:
    """A bias of -100 on a SimpleRNN's chosen units: they never fire."""
    weights = layer.get_weights()
    weights[2][units] = -100.0
    layer.set_weights(weights)


def dead_by_path(model, x) -> dict[str, list[int]]:
    return {site.path: site.dead for site in deadrelu.scan(model, x).sites}


def simple_rnn_h(layer, x):
    """SimpleRNN step by step in numpy: h_t = relu(x_t W + h_{t-1} U + b), per step."""
    w, u, b = (a.astype(np.float64) for a in layer.get_weights())
    h, hs = np.zeros((len(x), layer.units)), []
    for t in range(x.shape[1]):
        h = np.maximum(x[:, t].astype(np.float64) @ w + h @ u + b, 0.0)
        hs.append(h)
    return hs


def check_unit_edits(old, new, units: int, gates: int, revived: list[int], cut_rows=()):
    """Only the revived units' weights changed: their columns (every gate) and their recurrent rows
    (and the input rows `cut_rows` of units revived in the layer before)."""
    cols = [c for k in revived for c in gate_columns(units, gates, k)]
    others = [c for c in range(units * gates) if c not in cols]
    kernel, recurrent = new[0], new[1]
    rows = [r for r in range(kernel.shape[0]) if r not in cut_rows]
    np.testing.assert_array_equal(kernel[np.ix_(rows, others)], old[0][np.ix_(rows, others)])
    np.testing.assert_array_equal(kernel[np.ix_(list(cut_rows), others)], 0.0)
    assert not np.array_equal(kernel[:, cols], old[0][:, cols])  # drawn again
    np.testing.assert_array_equal(recurrent[np.ix_(revived, others)], 0.0)  # unread by the other units
    live = [k for k in range(units) if k not in revived]
    np.testing.assert_array_equal(recurrent[np.ix_(live, others)], old[1][np.ix_(live, others)])


# -- one layer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["simple_rnn", "gru", "gru_reset_before", "lstm"])
def test_a_dead_recurrent_unit_is_revived_and_the_outputs_stay(kind):
    keras.utils.set_random_seed(3)
    x = data(3)
    inputs = keras.Input((T, F))
    if kind == "simple_rnn":
        rnn, gates, paths = L.SimpleRNN(5, activation="relu", name="rnn"), 1, ["rnn"]
    elif kind.startswith("gru"):
        rnn = L.GRU(5, activation="relu", reset_after=kind == "gru", name="rnn")
        gates, paths = 3, ["rnn:candidate"]
    else:
        rnn, gates, paths = L.LSTM(5, activation="relu", name="rnn"), 4, ["rnn:candidate", "rnn:state"]
    dense = L.Dense(3, name="head")
    model = keras.Model(inputs, dense(rnn(inputs)))
    if kind == "simple_rnn":
        plant_simple(rnn, [1])
    else:
        plant_candidate(rnn, [1], gates, 2)
    dead = {1}
    if kind == "lstm":  # input gate shut: the cell state stays 0 while the candidate fires
        weights = rnn.get_weights()
        weights[2][3] = -1000.0
        rnn.set_weights(weights)
        dead = {1, 3}
    before = dead_by_path(model, x)
    assert set(before[paths[-1]]) == dead
    if kind == "lstm":
        assert before["rnn:candidate"] == [1]  # unit 3's candidate fires: only its state is dead
    old, old_head = cell_weights(rnn), np.array(dense.kernel.numpy())

    result = deadrelu.revive_model(model, x, seed=0)

    assert not result.skipped and result.revived == {path: before[path] for path in paths}
    assert result.check.passed and result.check.max_abs_diff <= TOLERANCE
    assert_unchanged(model, result.model, x)
    new_rnn, new_head = result.model.get_layer("rnn"), result.model.get_layer("head")
    new = cell_weights(new_rnn)
    check_unit_edits(old, new, 5, gates, sorted(dead))
    np.testing.assert_array_equal(np.array(new_head.kernel.numpy())[sorted(dead)], 0.0)  # the head's rows
    np.testing.assert_array_equal(cell_weights(rnn)[0], old[0])  # the user's model is left as it was
    # The revived units fire: on a rescan, and in the numpy step-by-step reference on the new weights.
    assert all(not units for units in dead_by_path(result.model, x).values())
    if kind == "simple_rnn":
        fired = np.max(simple_rnn_h(new_rnn, x), axis=(0, 1))
    elif kind == "gru":
        fired = np.max(gru_steps(new_rnn, x), axis=(0, 1))
    elif kind == "lstm":
        fired = np.max(lstm_steps(new_rnn, x)[1], axis=(0, 1))  # the cell state
    if kind != "gru_reset_before":  # (the reference writes out reset_after=True only)
        assert np.all(fired[sorted(dead)] > 0)
    # Putting back one cut weight (the dead unit's old row into the head) changes the outputs.
    head = np.array(new_head.kernel.numpy())
    head[sorted(dead)] = old_head[sorted(dead)]
    new_head.kernel.assign(head)
    assert np.max(np.abs(outputs(model, x) - outputs(result.model, x))) > 1e-3


def test_the_unit_s_own_recurrent_row_is_what_keeps_the_other_units():
    """SimpleRNN: with the revived unit's old recurrent row put back, the other units change."""
    keras.utils.set_random_seed(4)
    x = data(4)
    inputs = keras.Input((T, F))
    rnn = L.SimpleRNN(4, activation="relu", return_sequences=True, name="rnn")
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(rnn(inputs))))
    plant_simple(rnn, [2])
    old = cell_weights(rnn)
    result = deadrelu.revive_model(model, x, seed=1)
    assert result.revived == {"rnn": [2]}
    new_rnn = result.model.get_layer("rnn")
    live = [0, 1, 3]
    h_before, h_after = np.stack(simple_rnn_h(rnn, x)), np.stack(simple_rnn_h(new_rnn, x))
    np.testing.assert_allclose(h_after[..., live], h_before[..., live], rtol=0, atol=1e-6)
    assert h_after[..., 2].max() > 0 and h_before[..., 2].max() == 0
    weights = new_rnn.get_weights()
    weights[1][2, live] = old[1][2, live]  # unit 2 speaks to the others' next step again
    new_rnn.set_weights(weights)
    assert np.max(np.abs(np.stack(simple_rnn_h(new_rnn, x))[..., live] - h_before[..., live])) > 1e-3


# -- stacks ------------------------------------------------------------------------------------


def test_stacked_masked_and_bidirectional_layers_are_revived_together(tmp_path):
    keras.utils.set_random_seed(5)
    x = data(5)
    x[:4, -2:] = 0.0  # padding, masked
    inputs = keras.Input((T, F))
    gru = L.GRU(4, activation="relu", return_sequences=True, go_backwards=True, name="gru")
    lstm = L.LSTM(5, activation="relu", return_sequences=True, name="lstm")
    bi = L.Bidirectional(L.LSTM(3, activation="relu", name="inner"), name="bi")
    model = keras.Model(inputs, L.Dense(2, name="head")(bi(lstm(gru(L.Masking(0.0)(inputs))))))
    plant_candidate(gru, [0], 3, 2)
    plant_candidate(lstm, [1, 4], 4, 2)
    plant_candidate(bi.forward_layer, [2], 4, 2)
    plant_candidate(bi.backward_layer, [0], 4, 2)
    before = dead_by_path(model, x)
    assert before["gru:candidate"] == [0] and before["lstm:state"] == [1, 4]
    assert before["bi/forward_inner:state"] == [2] and before["bi/backward_inner:state"] == [0]
    old_lstm, old_forward, old_backward = (cell_weights(layer) for layer in (lstm, bi.forward_layer, bi.backward_layer))

    result = deadrelu.revive_model(model, x, seed=2)

    assert not result.skipped
    assert {path: units for path, units in result.revived.items() if path.endswith("state")} == {
        "lstm:state": [1, 4],
        "bi/forward_inner:state": [2],
        "bi/backward_inner:state": [0],  # its own numbering, not the wrapper's (3 + 0)
    }
    assert_unchanged(model, result.model, x)
    new_bi = result.model.get_layer("bi")
    new_lstm = cell_weights(result.model.get_layer("lstm"))
    # The LSTM's rows of its dead units are cut in both directions of the Bidirectional reading it,
    # except in the columns of the units revived there.
    for layer, old, revived in ((new_bi.forward_layer, old_forward, 2), (new_bi.backward_layer, old_backward, 0)):
        kernel = np.array(layer.cell.kernel.numpy())
        keep = gate_columns(3, 4, revived)
        cut = [c for c in range(12) if c not in keep]
        np.testing.assert_array_equal(kernel[np.ix_([1, 4], cut)], 0.0)
        live_rows = [0, 2, 3]
        np.testing.assert_array_equal(kernel[np.ix_(live_rows, cut)], old[0][np.ix_(live_rows, cut)])
    check_unit_edits(old_lstm, new_lstm, 5, 4, [1, 4], cut_rows=[0])  # the GRU's revived unit 0
    # The head reads the wrapper's output: forward unit 2 is channel 2, backward unit 0 channel 3.
    head = np.array(result.model.get_layer("head").kernel.numpy())
    np.testing.assert_array_equal(head[[2, 3]], 0.0)
    assert np.all(head[[0, 1, 4, 5]] != 0)
    assert all(not units for units in dead_by_path(result.model, x).values())
    # The saved file loads in plain Keras and computes the same.
    path = tmp_path / "revived.keras"
    result.model.save(path)
    assert_unchanged(model, keras.models.load_model(path), x)


# -- what is left ------------------------------------------------------------------------------


def test_units_that_cannot_be_cut_off_are_left_with_the_reason():
    keras.utils.set_random_seed(6)
    x = data(6)
    inputs = keras.Input((T, F))
    state = keras.Input((3,))
    exposed = L.GRU(3, activation="relu", name="exposed")  # the model's output itself
    summed = L.Bidirectional(L.GRU(3, activation="relu", name="inner"), merge_mode="sum", name="summed")
    started = L.LSTM(3, activation="relu", name="started")
    stated = L.LSTM(3, activation="relu", return_state=True, name="stated")
    model = keras.Model(
        [inputs, state],
        [
            exposed(inputs),
            L.Dense(2)(summed(inputs)),
            L.Dense(2)(started(inputs, initial_state=[state, state])),
            L.Dense(2)(stated(inputs)[1]),
        ],
    )
    for layer, gates in ((exposed, 3), (summed.forward_layer, 3), (started, 4), (stated, 4)):
        plant_candidate(layer, [0], gates, 2)
    probe = [x, np.zeros((N, 3), np.float32)]
    result = deadrelu.revive_model(model, probe, seed=0)
    assert result.revived == {}
    assert "reach a model output" in result.skipped["exposed:candidate"]
    assert "merge_mode='sum'" in result.skipped["summed/forward_inner:candidate"]
    assert "initial state" in result.skipped["started:candidate"]
    assert "return_state=True" in result.skipped["stated:candidate"]


# -- the command line --------------------------------------------------------------------------


def test_cli_revives_a_recurrent_model_file(tmp_path, capfd):
    """A Dense ReLU on each step feeding a GRU: the Dense's dead unit is cut off in the GRU's input
    kernel (every gate), the GRU's own dead unit in the head."""
    keras.utils.set_random_seed(7)
    x = data(7)
    inputs = keras.Input((T, F))
    embed = L.Dense(6, activation="relu", name="embed")
    gru = L.GRU(4, activation="relu", name="gru")
    model = keras.Model(inputs, L.Dense(2)(gru(embed(inputs))))
    plant_candidate(gru, [3], 3, 2)
    embed.bias.assign(np.where(np.arange(6) == 5, -100.0, 0.0).astype("float32"))
    model_path, data_path, out = tmp_path / "gru.keras", tmp_path / "x.npy", tmp_path / "revived.keras"
    model.save(model_path)
    np.save(data_path, x)
    argv = ["revive", model_path, "--data", data_path, "-o", out, "--seed", "0", "--scale", "live"]
    code = main([str(a) for a in argv])
    stdout, stderr = capfd.readouterr()
    assert code == 0, stderr
    assert "outputs unchanged" in stdout and "gru:candidate" in stdout
    revived = keras.models.load_model(out)
    assert_unchanged(model, revived, x)
    kernel, old = np.array(revived.get_layer("gru").cell.kernel.numpy()), np.array(gru.cell.kernel.numpy())
    others = [c for c in range(12) if c not in gate_columns(4, 3, 3)]  # (revived unit 3 may listen to it)
    np.testing.assert_array_equal(kernel[5, others], 0.0)
    np.testing.assert_array_equal(kernel[:5][:, others], old[:5][:, others])
    assert dead_by_path(model, x) == {"embed": [5], "gru:candidate": [3]}
    assert dead_by_path(revived, x) == {"embed": [], "gru:candidate": []}


def test_revived_units_that_do_not_fire_get_new_weights_and_the_outputs_stay():
    """Near-constant positive inputs: a fresh unit's w·x has one sign on every sample, so about half
    land dead; their candidate weights are negated or drawn again until they fire."""
    keras.utils.set_random_seed(8)
    x = (1.0 + 0.01 * np.random.default_rng(8).uniform(size=(16, T, 3))).astype("float32")
    inputs = keras.Input((T, 3))
    lstm = L.LSTM(8, activation="relu", name="lstm")
    model = keras.Model(inputs, L.Dense(2)(lstm(inputs)))
    plant_candidate(lstm, range(6), 4, 2)
    old, dead = cell_weights(lstm), dead_by_path(model, x)["lstm:state"]
    assert set(range(6)) <= set(dead)
    result = deadrelu.revive_model(model, x, seed=0)
    assert result.revived["lstm:state"] == dead
    assert any("did not fire on the data at first" in note for note in result.notes)
    assert_unchanged(model, result.model, x)
    check_unit_edits(old, cell_weights(result.model.get_layer("lstm")), 8, 4, dead)
    assert all(not units for units in dead_by_path(result.model, x).values())
