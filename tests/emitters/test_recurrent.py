"""onnxattr/emitters/recurrent.py: the LSTM's fused backward (onnxruntime's kernel runs the forward) against float64
central differences of the unrolled node (tests/test_recurrent.py checks the unrolled node's outputs against the
kernel), for the input and both initial states, each output, every direction; and which methods and batches use it."""

import numpy as np
import onnx
import pytest

import onnxattr
from onnxattr.canonicalize import canonicalize
from onnxattr.recurrent_nodes import FUSED_BATCH_LIMIT, why_not_fused
from tests.test_recurrent import check_against_central_differences, classifier, recurrent_model, run

LSTM_CASES = [
    {}, {"direction": "reverse"}, {"direction": "bidirectional"},
    {"h0": True, "c0": True}, {"direction": "reverse", "h0": True},
    {"direction": "bidirectional", "h0": True, "c0": True, "T": 5, "N": 3},
    {"T": 1}, {"T": 1, "h0": True, "c0": True, "direction": "bidirectional"},
]
GRU_CASES = [dict(kw, linear_before_reset=1) for kw in (
    {}, {"direction": "reverse", "h0": True}, {"direction": "bidirectional", "h0": True, "T": 5, "N": 3},
    {"T": 1}, {"T": 1, "h0": True})]
CASES = [("LSTM", kw, out) for kw in LSTM_CASES for out in ("Y", "Yh", "Yc")] + [
    ("GRU", kw, out) for kw in GRU_CASES for out in ("Y", "Yh")]


def _id(kw):
    return "-".join(f"{k}={v}" for k, v in kw.items()) or "default"


def _kept(model, op="LSTM") -> bool:
    return any(n.op_type == op for n in model.graph.node)


@pytest.mark.parametrize("op,kw,out", CASES, ids=[f"{op}-{_id(kw)}-{out}" for op, kw, out in CASES])
def test_fused_vjp_against_central_differences(op, kw, out):
    """<VJP(v), u> of the fused float32 backward against (F(x + hu) - F(x - hu)) / 2h of the unrolled float64 node,
    F = sum(v * out), for x, h0 and c0 along 3 random directions u; tolerance as tests/vjp_check.py (float32 rounding of
    the backward dominates)."""
    model, feeds = recurrent_model(op, **kw)
    fused = canonicalize(model, fused_recurrent=True)
    assert _kept(fused, op)
    check_against_central_differences(op, kw, out, fused, feeds)


def _map(model, feeds, method="gradient"):
    compiled = onnxattr.compile(model, method)
    return compiled, run(compiled, feeds)[-1]


@pytest.mark.parametrize("op,kw", [("LSTM", {}), ("GRU", {"linear_before_reset": 1})])
@pytest.mark.parametrize("method", ["gradient", "input_t_gradient"])
def test_compiled_gradient_keeps_the_node_and_equals_the_unrolled_map(method, op, kw):
    """A torch-style classifier (batch-first Transpose, zero initial state from the batch size, only Y_h read, so the
    node's Y has no name): the compiled gradient keeps the node, names its Y, and gives the map of the same model
    unrolled first (canonicalize unrolls by default)."""
    model, feeds = classifier(op, zero_state=True, direction="bidirectional", T=6, **kw)
    node = next(n for n in model.graph.node if n.op_type == op)
    node.output[0] = ""  # Y: unread by the classifier
    fused, got = _map(model, feeds, method)
    kept = [n for n in fused.graph.node if n.op_type == op]
    assert len(kept) == 1 and kept[0].output[0], "the fused backward reads the node's Y"
    unrolled = canonicalize(model)
    assert not _kept(unrolled, op)
    plain, want = _map(unrolled, feeds, method)
    assert not _kept(plain, op)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))
    assert np.abs(want).max() > 0


@pytest.mark.parametrize("method", ["lrp.epsilon", "integrated_gradients", "guided_backprop", "smoothgrad"])
def test_rules_and_sampled_batches_unroll(method):
    """The LRP rules and the ReLU rules need the steps; the sampling methods run large batches (a chunk of points
    per sample), where the unrolled backward is the faster one."""
    model, feeds = classifier("LSTM", T=3)
    compiled, relevance = _map(model, feeds, method)
    assert not _kept(compiled)
    assert np.isfinite(relevance).all()


@pytest.mark.parametrize("op,kw", [("LSTM", {}), ("GRU", {"linear_before_reset": 1})])
def test_a_fixed_batch_above_the_limit_unrolls(op, kw):
    limit = FUSED_BATCH_LIMIT[op]
    model, feeds = classifier(op, T=3, N=limit + 1, **kw)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == limit + 1
    compiled = onnxattr.compile(model, "gradient")
    assert not _kept(compiled, op) and not _kept(compiled, "If")
    small, _ = classifier(op, T=3, N=limit, **kw)
    assert _kept(onnxattr.compile(small, "gradient"), op)


@pytest.mark.parametrize("op,kw", [("LSTM", {}), ("GRU", {"linear_before_reset": 1})])
def test_a_dynamic_batch_gets_both_forms_switched_by_the_batch(op, kw):
    """Fused up to the op's limit, unrolled above (batch_switch.py): the map at every batch is the unrolled one's."""
    model, _ = classifier(op, zero_state=True, direction="bidirectional", T=5, **kw)
    for io in (model.graph.input[0], model.graph.output[0]):
        io.type.tensor_type.shape.dim[0].dim_param = "N"
    compiled = onnxattr.compile(model, "gradient")
    assert [n.op_type for n in compiled.graph.node] == ["Shape", "LessOrEqual", "If"]
    switch = compiled.graph.node[2]
    branches = {a.name: a.g for a in switch.attribute}
    assert any(n.op_type == op for n in branches["then_branch"].node)
    assert not any(n.op_type == op for n in branches["else_branch"].node)
    plain = onnxattr.compile(canonicalize(model), "gradient")
    limit = FUSED_BATCH_LIMIT[op]
    for n in (1, limit, limit + 1, 2 * limit + 3):
        x = np.random.default_rng(n).standard_normal((n, 5, 3)).astype(np.float32)
        got, want = run(compiled, {"x": x}), run(plain, {"x": x})
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[-1], want[-1], rtol=1e-4, atol=1e-6 * float(np.abs(want[-1]).max()))


@pytest.mark.parametrize("kw,why", [
    ({"peep": True}, "peepholes"), ({"input_forget": 1}, "coupled gates"), ({"clip": 0.5}, "clipped"),
    ({"layout": 1}, "layout 1"), ({"activations": ["Sigmoid", "Tanh", "Softsign"]}, "activations"),
])
def test_nodes_without_a_fused_backward_unroll_for_the_gradient(kw, why):
    """Each variant the fused backward does not cover is named by why_not_fused, and the gradient unrolls it."""
    model, feeds = recurrent_model("LSTM", **kw)
    node = model.graph.node[0]
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert why in why_not_fused(node, 4, consts.get)
    assert not _kept(canonicalize(model, fused_recurrent=True))


@pytest.mark.parametrize("op,kw,why", [
    ("GRU", {}, "linear_before_reset 0"), ("GRU", {"linear_before_reset": 1, "clip": 0.5}, "clipped"),
    ("RNN", {}, "no fused backward for RNN"),
])
def test_gru_and_rnn_without_a_fused_backward_unroll(op, kw, why):
    """onnxruntime's RNN kernel is slower than the unrolled steps at batch 8 (benchmarks/results/NOTES.md), so RNNs
    always unroll."""
    model, _ = recurrent_model(op, **kw)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert why in why_not_fused(model.graph.node[0], 4, consts.get)
    assert not _kept(canonicalize(model, fused_recurrent=True), op)


def test_unfused_node_kept_by_the_gradient_is_named():
    """A node neither form covers (a symbolic sequence length) still gets compile's named refusal."""
    model, _ = classifier("LSTM", seq="T")
    with pytest.raises(onnxattr.OnnxAttrError, match="sequence length is not fixed"):
        onnxattr.compile(model, "gradient")
