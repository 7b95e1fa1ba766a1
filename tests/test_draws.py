"""onnxattr/draws.py: each sample draws from its own seeded generator."""

import numpy as np

from onnxattr.draws import GAUSSIAN, INFIDELITY, per_sample, sample_generators


def normal(generators):
    return per_sample(generators, lambda g: g.normal(size=(2, 3)))


def test_a_samples_draws_follow_its_row_not_its_neighbours():
    whole = normal(sample_generators(4, GAUSSIAN, 0, 5))
    assert whole.shape == (5, 2, 3) and whole.dtype == np.float64
    np.testing.assert_array_equal(normal(sample_generators(4, GAUSSIAN, 2, 3)), whole[2:])
    assert len({w.tobytes() for w in whole}) == 5  # every row its own draws


def test_seeds_and_streams_give_other_draws():
    a = normal(sample_generators(4, GAUSSIAN, 0, 2))
    assert not np.allclose(a, normal(sample_generators(5, GAUSSIAN, 0, 2)))
    assert not np.allclose(a, normal(sample_generators(4, INFIDELITY, 0, 2)))


def test_no_seed_draws_anew():
    a, b = (normal(sample_generators(None, GAUSSIAN, 0, 3)) for _ in range(2))
    assert a.shape == (3, 2, 3) and not np.allclose(a, b)
    assert not np.allclose(a[0], a[1])  # one generator drawn from in turn
