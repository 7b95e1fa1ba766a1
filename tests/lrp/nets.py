"""Small ONNX networks for the LRP tests, built with onnx.helper (no framework)."""

import numpy as np
from onnx import helper

from tests.models import single_io_model


def resnet_like(bias=False, batchnorm=False, seed=0, residual=True, last_pool="AveragePool"):
    """x[N,2,8,8] -> Conv Relu MaxPool -> (Conv Relu Conv) + skip -> Relu -> AveragePool -> Flatten ->
    MatMul Relu -> MatMul -> y[N,4]; bias-free unless ``bias``; a BatchNorm after the first Conv if
    ``batchnorm``; without the skip if not ``residual``; ``last_pool`` is the second pooling op."""
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = {
        "w1": rng.standard_normal((4, 2, 3, 3)).astype(f), "w2": rng.standard_normal((4, 4, 3, 3)).astype(f) * 0.5,
        "w3": rng.standard_normal((4, 4, 3, 3)).astype(f) * 0.5, "d1": rng.standard_normal((16, 6)).astype(f),
        "d2": rng.standard_normal((6, 4)).astype(f), "shape": np.array([0, -1], np.int64),
    }
    c = lambda i, w, o: helper.make_node("Conv", [i, w] + ([w + "b"] if bias else []), [o], pads=[1, 1, 1, 1])  # noqa
    if bias:
        for w in ("w1", "w2", "w3"):
            inits[w + "b"] = rng.standard_normal(4).astype(f) * 0.3
    nodes = [c("x", "w1", "c1")]
    first = "c1"
    if batchnorm:
        inits.update(g=rng.uniform(0.5, 1.5, 4).astype(f), be=rng.standard_normal(4).astype(f) * 0.2,
                     mu=rng.standard_normal(4).astype(f) * 0.2, var=rng.uniform(0.5, 2, 4).astype(f))
        nodes.append(helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn1"]))
        first = "bn1"
    nodes += [
        helper.make_node("Relu", [first], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        c("p1", "w2", "c2"), helper.make_node("Relu", ["c2"], ["r2"]), c("r2", "w3", "c3"),
        helper.make_node("Add", ["c3", "p1"], ["s"]) if residual else helper.make_node("Identity", ["c3"], ["s"]),
        helper.make_node("Relu", ["s"], ["r3"]),
        helper.make_node(last_pool, ["r3"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p2", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "d1"], ["h"]), helper.make_node("Relu", ["h"], ["rh"]),
        helper.make_node("MatMul", ["rh", "d2"], ["y"]),
    ]
    return single_io_model(nodes, inits, ["N", 2, 8, 8], ["N", 4])
