"""Fixtures of the error catalogue: the small MLP saved as a file, and data that fits it."""

import numpy as np
import onnx
import pytest

from tests.models import mlp


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "mlp.onnx"
    onnx.save(mlp()[0], p)
    return p


@pytest.fixture
def x_path(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32))
    return p
