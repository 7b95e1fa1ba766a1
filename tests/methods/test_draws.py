"""onnxattr/methods/draws.py: the random permutations feature_permutation draws, and the separation of a seed's
uniform streams (the Gaussian and uniform draws' distributions are checked through smoothgrad, random,
gradient_shap, the Shapley sampling, KernelSHAP and LIME, in their tests)."""

import itertools

import numpy as np
import pytest

from onnxattr.methods.draws import non_identity_permutations, uniform
from tests.models import run_emitted


def permutations(count, n, seed):
    """``count`` draws of permutations of n rows, through a model whose input's shape [count, n] gives both."""
    def emit(b, t):
        shape = b.op("Shape", [t])
        return non_identity_permutations(b, b.op("Slice", [shape, b.ints([0]), b.ints([1])]),
                                         b.op("Slice", [shape, b.ints([1]), b.ints([2])]), seed, 0)
    return run_emitted(emit, np.zeros((count, n), np.int64))[0]


def test_each_permutation_but_the_identity_is_equally_likely():
    """4600 draws of four rows: every one a permutation, never the identity, and each of the other 23 drawn
    200 times on average; Pearson's statistic (22 degrees of freedom) below 48.3, its 0.999 quantile."""
    drawn = permutations(4600, 4, seed=7)
    assert drawn.shape == (4600, 4)
    assert (np.sort(drawn, axis=1) == np.arange(4)).all()
    counts = {p: 0 for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)}
    for row in map(tuple, drawn):
        counts[row] += 1  # a KeyError for the identity
    observed = np.array(list(counts.values()))
    chi2 = float(((observed - 200) ** 2 / 200).sum())
    assert chi2 < 48.3, (chi2, counts)


def test_two_rows_always_swap_and_one_row_stays():
    np.testing.assert_array_equal(permutations(500, 2, seed=0), np.tile([1, 0], (500, 1)))
    np.testing.assert_array_equal(permutations(3, 1, seed=0), np.zeros((3, 1), np.int64))


@pytest.mark.parametrize("n", [3, 9])
def test_a_seed_is_one_stream(n):
    a, b, c = permutations(50, n, seed=1), permutations(50, n, seed=1), permutations(50, n, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({tuple(r) for r in a}) >= (5 if n == 3 else 45)  # fresh draws: all 5 of 3 rows; 50 of 9 rows differ


def uniforms(seed, offset, count=2000):
    return run_emitted(lambda b, t: uniform(b, t, seed, offset), np.zeros((count, 1), np.float32))[0].ravel()


@pytest.mark.parametrize("seed", [0, 7, 1000])
def test_a_seeds_streams_are_apart_from_the_next_seeds(seed):
    """A method's second stream (offset 1: KernelSHAP's group orders after its sizes, GradientSHAP's picks) is
    neither the next seed's first stream nor correlated with it, nor with its own first."""
    second = uniforms(seed, 1)
    for other in (uniforms(seed + 1, 0), uniforms(seed, 0), uniforms(seed - 1, 1) if seed else uniforms(seed + 2, 0)):
        assert not np.array_equal(second, other)
        assert abs(np.corrcoef(second, other)[0, 1]) <= 4 / np.sqrt(2000)
