"""onnxattr/run_errors.py: onnxruntime's errors from a compiled model's checks are said in the user's terms, and
any other error is left as it is. (The checks firing on real data are tested with their methods: test_sampling,
methods/test_feature_groups, errors/test_data.)"""

import numpy as np
import pytest

import onnxattr
from onnxattr.errors import DataError
from onnxattr.run_errors import failed_check, run_error
from onnxattr.sampling import ROWS_CHECK, RUN_TIME_CHECK
from tests.models import mlp


@pytest.fixture(scope="module")
def runner():
    return onnxattr.create_analyzer("gradient", mlp()[0]).runner("max")


def said(runner, text, feeds=None, method="integrated_gradients"):
    x = np.zeros((3, 6), np.float32)
    return run_error(DataError(text), method, {}, x, runner, {"x": x, **(feeds or {})}, {})


def test_other_errors_are_left_as_they_are(runner):
    assert said(runner, "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : something else") is None
    # a Loop's error without a shared feed has nothing to add
    assert said(runner, "running Loop node. Name:'oa/loop'") is None


def test_a_check_that_fired_is_named(runner):
    e = said(runner, f"Non-zero status code returned while running Loop node. Name:'oa/{RUN_TIME_CHECK}-batch_3'",
             method="feature_permutation")
    assert isinstance(e, DataError)
    assert str(e) == ("feature_permutation shuffles each feature group between the samples of the batch, and the data "
                      "hold 3 sample: give two or more")
    assert "would run more than" in failed_check("windows", "occlusion", {}, np.zeros((1, 6)), runner)


def test_a_model_that_mixes_the_points_of_its_batch(runner):
    e = said(runner, f"Name:'oa/{ROWS_CHECK}_1'")
    assert "integrated_gradients runs a chunk of points as one batch" in str(e) and "chunk_size=1" in str(e)
    e = said(runner, f"Name:'oa/{ROWS_CHECK}_1'", feeds={"mask": np.ones((3, 6))})
    assert "a feed (mask) not declared under the name of x's batch axis" in str(e)
    e = said(runner, "running Loop node. Name:'oa/loop_3' failed", feeds={"mask": np.ones((3, 6))})
    assert str(e).startswith("running Loop node") and "a feed (mask) goes with its sample's points only" in str(e)
