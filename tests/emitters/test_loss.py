"""onnxattr/emitters/loss.py: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss against float64 central
differences (tests/vjp_check.py), over every reduction, with and without class weights and an ignored index,
for [N, C] and [N, C, d] inputs."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(11)


def _inputs(shape, weights, ignore):
    x = rng.standard_normal(shape)
    classes = shape[1]
    t = rng.integers(0, classes, (shape[0],) + shape[2:]).astype(np.int64)
    if ignore is not None:
        t.reshape(-1)[1] = ignore  # one ignored target (it may lie outside 0..C-1)
    ins = [("x", x, False), ("t", t, False)]
    if weights:
        ins.append(("w", rng.uniform(0.5, 2.0, classes), True))
    return ins


@pytest.mark.parametrize("op", ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("ignore", [None, -1, 2])
@pytest.mark.parametrize("shape", [(4, 3), (3, 4, 5)])
def test_loss(op, reduction, weights, ignore, shape):
    attrs = {"reduction": reduction, **({} if ignore is None else {"ignore_index": ignore})}
    # onnx's reference evaluator divides the mean by N when ignore_index is -1 and there are no weights;
    # onnxruntime (and torch) divide by the kept targets' count: that case is checked against numpy
    quirk = reduction == "mean" and ignore == -1 and not weights
    check_vjp(op, _inputs(shape, weights, ignore), attrs, dynamic=(0,), opset=17,
              numpy_ref=(lambda v: _mean_loss(op, v, ignore)) if quirk else None)


def _mean_loss(op, v, ignore):
    """float64: the mean over the kept targets of -log_prob[i, t_i]."""
    x, t = v["x"], v["t"]
    lp = x if op == "NegativeLogLikelihoodLoss" else x - np.log(np.exp(x).sum(1, keepdims=True))
    kept = t != ignore
    picked = np.take_along_axis(lp, np.where(kept, t, 0)[:, None], axis=1)[:, 0]
    return np.array(-(picked * kept).sum() / kept.sum())


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_softmax_cross_entropy_log_prob_output(reduction):
    """The optional second output, log_prob = LogSoftmax(x, axis 1), carries its own gradient back."""
    check_vjp("SoftmaxCrossEntropyLoss", _inputs((4, 3, 2), True, None), {"reduction": reduction}, n_out=2,
              out_index=1, opset=17)
    check_vjp("SoftmaxCrossEntropyLoss", _inputs((4, 3, 2), True, None), {"reduction": reduction}, n_out=2,
              out_index=0, opset=17)
