"""Seeded random draws, one generator per sample: sample n of a run that starts at row ``first_row`` of the data
draws from numpy's generator seeded with (seed, stream, first_row + n). A sample's draws then do not depend on the
other samples run with it, nor on how the data is sliced; each use has its own ``stream``."""

from __future__ import annotations

import numpy as np

GAUSSIAN, INFIDELITY, SENSITIVITY = 0, 1, 2  # the streams: region perturbation's noise, and the two metrics'


def sample_generators(seed: int | None, stream: int, first_row: int, n: int) -> list:
    """One generator per sample (``seed`` None: one unseeded generator that every sample draws from in turn)."""
    if seed is None:
        return [np.random.default_rng()] * n
    return [np.random.default_rng((int(seed), stream, first_row + i)) for i in range(n)]


def per_sample(generators: list, draw) -> np.ndarray:
    """[N, ...]: ``draw(generator)`` for each sample's generator, stacked (float64)."""
    return np.stack([np.asarray(draw(g), np.float64) for g in generators])
