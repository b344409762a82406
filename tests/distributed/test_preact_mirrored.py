"""Pre-activation statistics under `MirroredStrategy` on 2 logical CPUs: equal to numpy and to one device's scan.

Run by tests/test_distribute.py in a process whose CPU is split (see conftest.py). The replicas of
each batch are uneven (N = 101, batch 16: the last batch's second replica is filled up with copies
of its samples), so the padding rows must be left out of the sums and cannot move an extreme.
"""

from __future__ import annotations

import keras
import numpy as np
from test_mirrored import BUILDERS, N, data, make_pair, mirrored

import deadrelu
from models import to_numpy
from preact_reference import FIELDS, assert_preact_matches, reference_preact


def test_mirrored_pre_activations_equal_numpy_and_one_device():
    plain, distributed = make_pair(BUILDERS["batchnorm"], mirrored(2))
    x, _ = data()
    z = to_numpy(keras.Model(plain.inputs[0], plain.get_layer("act").input)(x, training=False))  # BN's output
    one = deadrelu.scan(plain, x, batch_size=16)
    many = deadrelu.scan(distributed, x, batch_size=16)
    assert many.data["samples"] == one.data["samples"] == N
    expected = reference_preact(z)
    assert_preact_matches(one.site("act"), expected)
    assert_preact_matches(many.site("act"), expected)
    assert many.site("act").dead and np.all(np.asarray(many.site("act").margin)[many.site("act").dead] <= 0)
    for a, b in zip(one.sites, many.sites):
        np.testing.assert_array_equal(b.margin, a.margin, err_msg=a.path)
        np.testing.assert_array_equal(b.preact_min, a.preact_min, err_msg=a.path)
        for name in FIELDS[1:3]:
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-6, atol=1e-7, err_msg=a.path)
