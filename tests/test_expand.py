"""onnxattr/expand.py: ops replaced by their ONNX definitions compute the op's values, and the reverse pass
differentiates them exactly."""

import os

import numpy as np
import onnx
import pytest

import onnxattr
from onnxattr.canonicalize import canonicalize, default_opset
from onnxattr.expand import EXPANDED_OPS, expand_newer_ops
from tests.models import mlp
from tests.test_canonicalize import run


def _newer_ops_model(opset: int, axis: int = -1):
    """x [N, 3, 4] -> Swish(alpha 0.5) -> RMSNormalization(axis, epsilon 1e-3, scale) -> y, at ``opset``."""
    from onnx import TensorProto, helper, numpy_helper

    scale = np.linspace(0.5, 2, 12 if axis == 1 else 4).reshape((3, 4) if axis == 1 else (4,)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Swish", ["x"], ["h"], alpha=0.5, name="swish"),
         helper.make_node("RMSNormalization", ["h", "s"], ["y"], axis=axis, epsilon=1e-3, name="norm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])], [numpy_helper.from_array(scale, "s")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=11), scale


@pytest.mark.parametrize("opset,axis", [(24, -1), (24, 1), (23, -1)])
def test_ops_without_an_older_version_expand_into_their_onnx_definition(opset, axis):
    """Swish-24 and RMSNormalization-23 (what a random-draw method's conversion to opset 21 cannot convert) become
    the nodes of their ONNX function bodies: the values of x * sigmoid(0.5 x) / sqrt(mean(h^2) + 1e-3) * scale, with
    the RMS axes (computed from the rank in the body) folded; the body of opset 23 inlined into an opset-24 model
    too."""
    model, scale = _newer_ops_model(opset, axis)
    if opset == 23:
        model.graph.node[0].CopyFrom(onnx.helper.make_node("Sigmoid", ["x"], ["h"]))  # Swish is opset 24
    expanded = expand_newer_ops(model, 21)
    ops = [n.op_type for n in expanded.graph.node]
    assert "RMSNormalization" not in ops and "Swish" not in ops and not expanded.functions
    assert [o.domain for o in expanded.opset_import] == [""] and default_opset(expanded) == opset
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    h = x / (1 + np.exp(-0.5 * x)) if opset == 24 else 1 / (1 + np.exp(-x))
    axes = (1, 2) if axis == 1 else (2,)
    want = h / np.sqrt((h**2).mean(axes, keepdims=True) + 1e-3) * scale
    np.testing.assert_allclose(run(expanded, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
    canon = canonicalize(model, max_opset=(21, "test"))
    assert default_opset(canon) == 21 and not any(n.op_type in ("Range", "Size") for n in canon.graph.node)
    np.testing.assert_allclose(run(canon, {"x": x})[0], want, rtol=1e-5, atol=1e-6)


def test_a_model_without_newer_ops_is_not_expanded():
    model = mlp()[0]
    assert expand_newer_ops(model, 17) is model


def test_the_map_through_an_expanded_op_is_the_ops_own():
    """The gradient through RMSNormalization's expanded nodes (ReduceMean, Sqrt, Div) equals the gradient through
    the op's own emitter (emitters/normalization.py), on the opset-23 export of torch's dynamo exporter."""

    path = os.path.join(os.path.dirname(__file__), "thirdparty", "data", "torch_dynamo_modern.onnx")
    model = onnx.load(path)
    converted = canonicalize(model, max_opset=(21, "test"))
    assert "RMSNormalization" not in {n.op_type for n in converted.graph.node}
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    own = run(onnxattr.compile(model, "gradient"), {"image": x})
    expanded = run(onnxattr.compile(converted, "gradient"), {"image": x})
    np.testing.assert_allclose(expanded[0], own[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expanded[-1], own[-1], rtol=1e-4, atol=1e-5 * np.abs(own[-1]).max())


def _defined_op_cases():
    """(op, opset, inputs [(name, array)], attributes) for each op of EXPANDED_OPS."""
    rng = np.random.default_rng(0)
    f = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    return {
        "attention_causal": ("Attention", 23, [("q", f(1, 2, 4, 3)), ("k", f(1, 2, 5, 3)), ("v", f(1, 2, 5, 3))],
                             {"is_causal": 1}),
        "attention_3d_gqa_mask": ("Attention", 23, [("q", f(1, 4, 8)), ("k", f(1, 5, 4)), ("v", f(1, 5, 4)),
                                                    ("mask", f(4, 5))], {"q_num_heads": 2, "kv_num_heads": 1}),
        "rotary_embedding": ("RotaryEmbedding", 23, [("x", f(1, 2, 4, 6)), ("cos", f(8, 3)), ("sin", f(8, 3)),
                                                     ("pos", np.array([[0, 2, 4, 7]], np.int64))], {}),
        "mean_variance_normalization": ("MeanVarianceNormalization", 13, [("x", f(1, 3, 4, 4))], {}),
        "center_crop_pad": ("CenterCropPad", 18, [("x", f(1, 3, 4, 7)), ("shape", np.array([6, 5], np.int64))],
                            {"axes": [2, 3]}),
        # Gated DeltaNet's recurrence over 3 steps, two query heads on one key head, from a past state
        "linear_attention_gated_delta": ("LinearAttention", 27, [
            ("q", f(1, 3, 8)), ("k", f(1, 3, 4) * 0.5), ("v", f(1, 3, 4)), ("past", f(1, 1, 4, 4)),
            ("decay", -np.abs(f(1, 3, 4))), ("beta", rng.uniform(0.2, 0.8, (1, 3, 1)))],
            {"q_num_heads": 2, "kv_num_heads": 1}),
        "linear_attention_linear": ("LinearAttention", 27, [("q", f(2, 3, 6)), ("k", f(2, 3, 6)), ("v", f(2, 3, 4))],
                                    {"q_num_heads": 2, "kv_num_heads": 2, "update_rule": "linear"}),
        # Mamba's and Gated DeltaNet's depthwise causal convolution, with a carried state and SiLU
        "causal_conv_with_state": ("CausalConvWithState", 27, [
            ("x", f(2, 3, 5)), ("weight", f(3, 1, 3)), ("bias", f(3)), ("past", f(2, 3, 2))], {"activation": "silu"}),
    }



def _outputs(op, opset):
    """y and the further outputs the op must have (LinearAttention's and CausalConvWithState's present_state)."""
    return ["y"] + [f"y{k}" for k in range(1, onnx.defs.get_schema(op, opset).min_output)]


def _projected_model(op, opset, inputs, attrs, out_shape, dtype):
    """s [1, 1] = sum(v * op(inputs)) for a fixed random v: its gradient is the op's VJP of v."""
    from onnx import helper, numpy_helper

    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    v = np.random.default_rng(1).standard_normal(out_shape).astype(dtype)
    g = helper.make_graph(
        [helper.make_node(op, [n for n, _ in inputs], _outputs(op, opset), name="op", **attrs),
         helper.make_node("Mul", ["y", "projection"], ["p"]), helper.make_node("ReduceSum", ["p"], ["r"], keepdims=0),
         helper.make_node("Reshape", ["r", "one"], ["s"])], "g",
        [helper.make_tensor_value_info(n, t if a.dtype.kind == "f" else onnx.TensorProto.INT64, list(a.shape))
         for n, a in inputs], [helper.make_tensor_value_info("s", t, [1, 1])],
        [numpy_helper.from_array(v, "projection"), numpy_helper.from_array(np.array([1, 1], np.int64), "one")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=11)


def _numpy_linear_attention(feeds, q_num_heads, kv_num_heads, update_rule="gated_delta"):
    """LinearAttention's output in float64 from its definition: per step t, S = exp(g_t) S (gated: a decay per key
    row), S += beta_t k_t (v_t - S^T k_t)^T (delta; else k_t v_t^T), o_t = q_t^T S / sqrt(d_k), each query head
    reading key head h // (q_num_heads / kv_num_heads)."""
    q, k, v = feeds["q"], feeds["k"], feeds["v"]
    n, steps, _ = q.shape
    dk, dv = k.shape[2] // kv_num_heads, v.shape[2] // kv_num_heads
    qh, kh = q.reshape(n, steps, q_num_heads, dk), k.reshape(n, steps, kv_num_heads, dk)
    vh = v.reshape(n, steps, kv_num_heads, dv)
    state = feeds["past"].copy() if "past" in feeds else np.zeros((n, kv_num_heads, dk, dv))
    out = []
    for t in range(steps):
        if "gated" in update_rule:
            state = np.exp(feeds["decay"].reshape(n, steps, kv_num_heads, -1)[:, t])[..., None] * state
        if "delta" in update_rule:
            error = vh[:, t] - np.einsum("nhkv,nhk->nhv", state, kh[:, t])
            rate = feeds["beta"].reshape(n, steps, kv_num_heads)[:, t][..., None, None]
            state = state + rate * np.einsum("nhk,nhv->nhkv", kh[:, t], error)
        else:
            state = state + np.einsum("nhk,nhv->nhkv", kh[:, t], vh[:, t])
        shared = np.repeat(state, q_num_heads // kv_num_heads, axis=1)
        out.append(np.einsum("nhk,nhkv->nhv", qh[:, t], shared) / np.sqrt(dk))
    return np.stack(out, 1).reshape(n, steps, q_num_heads * dv)


def _numpy_causal_conv(feeds, activation="none"):
    """CausalConvWithState's output in float64: the past state and x joined along time, each channel convolved
    with its own kernel over the last k positions, plus the bias, then SiLU."""
    x, w = feeds["x"], feeds["weight"]
    k = w.shape[2]
    joined = np.concatenate([feeds["past"], x], axis=2)
    z = sum(joined[:, :, j:j + x.shape[2]] * w[None, :, 0, j, None] for j in range(k)) + feeds["bias"][None, :, None]
    return z / (1 + np.exp(-z)) if activation == "silu" else z


# ops whose onnx reference rounds through float32 (1e-7 of the output, 1e-2 in difference quotients at h = 1e-5):
# a numpy definition, checked against that reference's values first, gives the central differences
NUMPY_REFERENCE = {"linear_attention_gated_delta": lambda f: _numpy_linear_attention(f, 2, 1),
                   "linear_attention_linear": lambda f: _numpy_linear_attention(f, 2, 2, "linear"),
                   "causal_conv_with_state": lambda f: _numpy_causal_conv(f, "silu")}


def _numpy_mvn(x):
    return (x - x.mean((0, 2, 3), keepdims=True)) / np.sqrt(((x - x.mean((0, 2, 3), keepdims=True)) ** 2).mean(
        (0, 2, 3), keepdims=True) + 1e-9)


@pytest.mark.parametrize("case", sorted(_defined_op_cases()))
def test_ops_onnx_defines_as_functions_are_expanded_and_differentiated(case):
    """Attention (torch's dynamo exporter writes scaled_dot_product_attention as Attention from opset 23),
    RotaryEmbedding, MeanVarianceNormalization, CenterCropPad, LinearAttention (its recurrence a Scan, unrolled) and
    CausalConvWithState have no emitter: canonicalize expands them into their ONNX definitions. The canonical forward
    equals onnx's reference implementation of the op, and the compiled gradient for every float input equals float64
    central differences of a reference along random directions (tests/vjp_check.py's tolerance): onnx's, or a numpy
    definition where it lacks one (MVN) or rounds through float32 (NUMPY_REFERENCE, checked against it first)."""
    from onnx.reference import ReferenceEvaluator


    op, opset, inputs, attrs = _defined_op_cases()[case]
    assert op in EXPANDED_OPS
    feeds32 = {n: a.astype(np.float32) if a.dtype.kind == "f" else a for n, a in inputs}
    node = onnx.helper.make_node(op, [n for n, _ in inputs], _outputs(op, opset), **attrs)
    shape = ReferenceEvaluator(node).run(None, dict(inputs))[0].shape if op != "MeanVarianceNormalization" else \
        inputs[0][1].shape
    model = _projected_model(op, opset, inputs, attrs, shape, np.float32)
    canon = canonicalize(model)
    assert op not in {n.op_type for n in canon.graph.node}
    feeds64 = {n: a.astype(np.float64) if a.dtype.kind == "f" else a for n, a in inputs}
    if op == "MeanVarianceNormalization":
        reference = lambda feeds: [np.sum(_numpy_mvn(feeds["x"]) * _v(model)).reshape(1, 1)]  # noqa: E731
    elif case in NUMPY_REFERENCE:
        definition = NUMPY_REFERENCE[case]
        np.testing.assert_allclose(definition(feeds64), ReferenceEvaluator(node).run(None, feeds64)[0], atol=1e-6)
        reference = lambda feeds: [np.sum(definition(feeds) * _v(model)).reshape(1, 1)]  # noqa: E731
    else:
        evaluator = ReferenceEvaluator(_projected_model(op, opset, inputs, attrs, shape, np.float64))
        reference = lambda feeds: evaluator.run(None, feeds)  # noqa: E731
    np.testing.assert_allclose(run(canon, feeds32)[0], reference(feeds64)[0], rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(2)
    for name, a in inputs:
        if a.dtype.kind != "f":
            continue
        grad = run(onnxattr.compile(model, "gradient", input=name), feeds32)[-1].astype(np.float64)
        for _ in range(3):
            u = rng.standard_normal(a.shape)
            h = 1e-5
            up, down = dict(feeds64), dict(feeds64)
            up[name], down[name] = a + h * u, a - h * u
            numeric = (reference(up)[0].item() - reference(down)[0].item()) / (2 * h)
            assert abs((grad * u).sum() - numeric) <= 2e-5 * (abs(numeric) + np.abs(grad * u).sum()) + 1e-5, name


def _v(model):
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "projection")).astype(
        np.float64)


def test_two_expanded_nodes_reading_one_mask_fold():
    """Two Attention nodes with one additive mask (a decoder's blocks): their bodies' unnamed Identity nodes of the
    mask were one node to onnx-graphsurgeon's folding, which then failed; the inlined nodes are named now."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    mask = np.triu(np.full((4, 4), -1e4, np.float32), 1)
    nodes = [helper.make_node("Attention", ["x", "x", "x", "mask"], ["a"]),
             helper.make_node("Attention", ["a", "a", "a", "mask"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 3])],
                          [numpy_helper.from_array(mask, "mask")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)], ir_version=11)
    canon = canonicalize(model)
    assert "Attention" not in {n.op_type for n in canon.graph.node} and all(n.name for n in canon.graph.node)
    x = rng.standard_normal((2, 2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(run(canon, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("opset", [23, 24])
def test_an_attention_row_its_mask_hides_whole_has_a_finite_gradient(opset):
    """A query row whose boolean mask hides every key (left padding under a causal mask): Attention's body takes a
    softmax of -inf's there (NaN) and puts 0 in its place. The outputs were right, but the softmax's VJP multiplied
    that row's zero gradient by NaN, and the map of q, k and v was NaN (onnx's
    test_attention_23_boolmask_fullymasked_row_nan_robustness). Now the gradient is finite, and equals float64
    central differences of onnx's reference Attention along random directions, as above."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(4)
    mask = np.tril(np.ones((4, 5), bool), 1)
    mask[2] = False  # row 2 sees no key
    inputs = {"q": rng.standard_normal((1, 2, 4, 3)), "k": rng.standard_normal((1, 2, 5, 3)),
              "v": rng.standard_normal((1, 2, 5, 3))}
    v = rng.standard_normal((1, 2, 4, 3))

    def model(dtype):
        t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        g = helper.make_graph(
            [helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"]),
             helper.make_node("Mul", ["y", "projection"], ["p"]),
             helper.make_node("ReduceSum", ["p"], ["r"], keepdims=0), helper.make_node("Reshape", ["r", "one"], ["s"])],
            "g",
            [helper.make_tensor_value_info(n, t, list(a.shape)) for n, a in inputs.items()],
            [helper.make_tensor_value_info("s", t, [1, 1])],
            [numpy_helper.from_array(mask, "mask"), numpy_helper.from_array(v.astype(dtype), "projection"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "one")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=11)

    reference = ReferenceEvaluator(model(np.float64))
    feeds32 = {n: a.astype(np.float32) for n, a in inputs.items()}
    np.testing.assert_allclose(run(canonicalize(model(np.float32)), feeds32)[0], reference.run(None, inputs)[0],
                               rtol=1e-5)
    for name, a in inputs.items():
        grad = run(onnxattr.compile(model(np.float32), "gradient", input=name), feeds32)[-1].astype(np.float64)
        assert np.isfinite(grad).all(), name
        for _ in range(3):
            u, h = rng.standard_normal(a.shape), 1e-5
            numeric = (reference.run(None, {**inputs, name: a + h * u})[0].item()
                       - reference.run(None, {**inputs, name: a - h * u})[0].item()) / (2 * h)
            assert abs((grad * u).sum() - numeric) <= 2e-5 * (abs(numeric) + np.abs(grad * u).sum()) + 1e-5, name


def test_a_definition_onnx_cannot_build_for_the_shapes_is_refused_by_name():
    """CausalConvWithState's ONNX definition depends on the input's channel count; onnx builds an empty body when
    that is symbolic. The node then stays and is refused naming it and why (before: onnx's inliner failed an
    assertion, a RuntimeError)."""
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("CausalConvWithState", ["x", "w"], ["y", "state"], name="conv")], "g",
        [vi("x", TensorProto.FLOAT, ["N", "C", "L"]), vi("w", TensorProto.FLOAT, ["C", 1, "K"])],
        [vi("y", TensorProto.FLOAT, ["N", "C", "L"]), vi("state", TensorProto.FLOAT, ["N", "C", "S"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 27)])
    with pytest.raises(onnxattr.errors.UnsupportedModelError,
                       match=r"CausalConvWithState \(1: conv\).*differentiated through its ONNX definition, which "
                             r"onnx could not build for the types and shapes of its inputs"):
        onnxattr.compile(model, "gradient", input="x", output="y")
