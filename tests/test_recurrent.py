"""onnxattr/recurrent.py: LSTM, GRU and RNN nodes that canonicalize unrolls compute the node's own outputs, and
the reverse pass over the unrolled ops gives their gradient (float64 central differences of the unrolled model,
whose outputs equal the node's)."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxattr
from onnxattr.canonicalize import canonicalize
from onnxattr.errors import UnsupportedModelError
from tests.vjp_check import ATOL, RTOL, vjp_model

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def recurrent_model(op, T=4, N=2, I=3, H=5, direction="forward", layout=0, peep=False, h0=False, c0=False,
                    dtype=np.float32, seed=0, seq=None, **attrs):
    """One recurrent node with random weights (the same for both dtypes at one seed) and random feeds;
    ``seq``: a name for a dynamic sequence axis."""
    rng = np.random.default_rng(seed)
    G, D = GATES[op], 2 if direction == "bidirectional" else 1
    elem = F64 if dtype == np.float64 else F32
    inits = [numpy_helper.from_array((rng.standard_normal((D, G * H, I)) * 0.5).astype(dtype), "W"),
             numpy_helper.from_array((rng.standard_normal((D, G * H, H)) * 0.5).astype(dtype), "R"),
             numpy_helper.from_array((rng.standard_normal((D, 2 * G * H)) * 0.5).astype(dtype), "B")]
    ins = ["x", "W", "R", "B", ""]
    xs = [T, N, I] if layout == 0 else [N, T, I]
    declared = list(xs)
    if seq:
        declared[0 if layout == 0 else 1] = seq
    gin = [helper.make_tensor_value_info("x", elem, declared)]
    feeds = {"x": rng.standard_normal(xs).astype(dtype)}
    ss = [D, N, H] if layout == 0 else [N, D, H]
    if h0 or c0 or peep:
        ins.append("h0" if h0 else "")
    if h0:
        gin.append(helper.make_tensor_value_info("h0", elem, ss))
        feeds["h0"] = rng.standard_normal(ss).astype(dtype)
    if op == "LSTM" and (c0 or peep):
        ins.append("c0" if c0 else "")
        if c0:
            gin.append(helper.make_tensor_value_info("c0", elem, ss))
            feeds["c0"] = rng.standard_normal(ss).astype(dtype)
    if peep:
        ins.append("P")
        inits.append(numpy_helper.from_array(rng.standard_normal((D, 3 * H)).astype(dtype), "P"))
    outs = ["Y", "Yh"] + (["Yc"] if op == "LSTM" else [])
    node = helper.make_node(op, ins, outs, name="rnn", hidden_size=H, direction=direction, layout=layout, **attrs)
    graph = helper.make_graph([node], "g", gin, [helper.make_tensor_value_info(o, elem, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, feeds


def run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def reference(model, feeds):
    """onnxruntime's kernel; onnx's reference evaluator where onnxruntime has none (layout=1)."""
    try:
        return run(model, feeds)
    except Exception:  # noqa: BLE001 - onnxruntime 1.32 refuses layout=1 for LSTM, GRU and RNN
        return ReferenceEvaluator(model).run(None, feeds)


CASES = [(op, {"direction": d, "layout": layout}) for op in GATES
         for d in ("forward", "reverse", "bidirectional") for layout in (0, 1)] + [
    ("LSTM", {"peep": True}),
    ("LSTM", {"peep": True, "h0": True, "c0": True, "direction": "bidirectional"}),
    ("LSTM", {"h0": True, "c0": True, "layout": 1, "direction": "bidirectional"}),
    ("LSTM", {"clip": 0.3}),
    ("LSTM", {"input_forget": 1}),
    ("LSTM", {"T": 1}),
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Softsign"], "activation_alpha": [0.3],
              "activation_beta": [0.4]}),
    ("GRU", {"linear_before_reset": 1}),
    ("GRU", {"linear_before_reset": 1, "h0": True, "direction": "bidirectional"}),
    ("GRU", {"clip": 0.4, "h0": True}),
    ("GRU", {"activations": ["Sigmoid", "Elu", "HardSigmoid", "Tanh"], "direction": "bidirectional",
             "activation_alpha": [0.7, 0.25]}),
    ("RNN", {"activations": ["Relu"]}),
    ("RNN", {"activations": ["LeakyRelu"], "activation_alpha": [0.3]}),
    ("RNN", {"activations": ["Affine"], "activation_alpha": [0.7], "activation_beta": [0.2]}),
    ("RNN", {"activations": ["ScaledTanh"], "activation_alpha": [0.7], "activation_beta": [0.2]}),
    ("RNN", {"h0": True, "direction": "reverse"}),
]


def _id(case):
    op, kw = case
    return op + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("op,kw", CASES, ids=[_id(c) for c in CASES])
def test_unrolled_outputs_equal_the_node(op, kw):
    model, feeds = recurrent_model(op, **kw)
    canon = canonicalize(model)
    assert not any(n.op_type in GATES for n in canon.graph.node)
    for want, got in zip(reference(model, feeds), run(canon, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # float32 rounding over T steps


def test_activation_count_and_defaults():
    """A bidirectional node listing one direction's activations is named for its count; Affine and ScaledTanh, no
    longer ONNX ops, default alpha and beta to 0 as onnxruntime does (their output is then 0 and b respectively)."""
    from onnxattr.recurrent_nodes import why_not_unrolled
    model, _ = recurrent_model("GRU", direction="bidirectional", activations=["Sigmoid", "Tanh"])
    assert "it lists 2 activations ['Sigmoid', 'Tanh'] where a bidirectional GRU takes 4" in why_not_unrolled(
        model.graph.node[0], 4, {t.name: t for t in model.graph.initializer}.get)
    for act in ("Affine", "ScaledTanh"):
        for extra in ({}, {"activation_alpha": [0.5]}):
            model, feeds = recurrent_model("RNN", activations=[act], **extra)
            for want, got in zip(reference(model, feeds), run(canonicalize(model), feeds)):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_activation_parameters_reach_the_unrolled_ops():
    """The default LeakyRelu slope (0.01) and a given one (0.3) give different outputs, each equal to the node's."""
    outs = []
    for extra in ({}, {"activation_alpha": [0.3]}):
        model, feeds = recurrent_model("RNN", activations=["LeakyRelu"], **extra)
        want = reference(model, feeds)[0]
        np.testing.assert_allclose(run(canonicalize(model), feeds)[0], want, rtol=1e-5, atol=1e-6)
        outs.append(want)
    assert np.abs(outs[0] - outs[1]).max() > 1e-2


GRAD_CASES = [
    ("LSTM", {"direction": "bidirectional", "h0": True, "c0": True}, "Y"),
    ("LSTM", {"peep": True, "c0": True, "clip": 0.8}, "Yc"),
    ("LSTM", {"layout": 1}, "Yh"),
    ("GRU", {"direction": "reverse", "h0": True}, "Y"),
    ("GRU", {"linear_before_reset": 1, "h0": True, "layout": 1}, "Yh"),
    ("RNN", {"direction": "bidirectional", "h0": True}, "Y"),
]


@pytest.mark.parametrize("op,kw,out", GRAD_CASES, ids=[_id((c[0], c[1])) + "-" + c[2] for c in GRAD_CASES])
def test_gradient_through_the_unrolled_node(op, kw, out):
    """<VJP(v), u> of the unrolled float32 graph against (F(x + hu) - F(x - hu)) / 2h of the unrolled float64
    graph, F = sum(v * out), for the input and the initial states; tolerance as tests/vjp_check.py."""
    model, feeds = recurrent_model(op, **kw)
    canon = canonicalize(model)
    check_against_central_differences(op, kw, out, canon, feeds)


def check_against_central_differences(op, kw, out, canon, feeds):
    """<VJP(v), u> of ``canon``'s emitted backward (float32, for x and the initial states) against
    (F(x + hu) - F(x - hu)) / 2h along 3 random u per input, F = sum(v * out) of the unrolled float64 node (the same
    weights and feeds as the float32 model; tolerance as tests/vjp_check.py)."""
    wrt = [name for name in ("x", "h0", "c0") if name in feeds]
    vm = vjp_model(canon, wrt, out)
    rng = np.random.default_rng(1)
    y = run(canon, feeds)[[o.name for o in canon.graph.output].index(out)]
    v = rng.standard_normal(y.shape).astype(np.float32)
    sess = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
    grads = dict(zip(wrt, sess.run([f"grad_{x}" for x in wrt], {**feeds, "cotangent": v})))
    model64, feeds64 = recurrent_model(op, dtype=np.float64, **kw)
    canon64 = canonicalize(model64)
    assert not any(n.op_type == op for n in canon64.graph.node)
    index = [o.name for o in canon64.graph.output].index(out)

    def F(name, value):
        return float(np.sum(v.astype(np.float64) * run(canon64, {**feeds64, name: value})[index]))

    h = 1e-5
    for name in grads:
        for _ in range(3):
            u = rng.standard_normal(feeds64[name].shape)
            numeric = (F(name, feeds64[name] + h * u) - F(name, feeds64[name] - h * u)) / (2 * h)
            analytic = float(np.sum(grads[name].astype(np.float64) * u))
            scale = abs(numeric) + float(np.sum(np.abs(grads[name] * u)))
            assert abs(analytic - numeric) <= RTOL * scale + ATOL, (name, analytic, numeric)


def classifier(op, bias=True, seq=None, zero_state=False, seq_first=False, **kw):
    """x [N, T, I] -> Transpose -> the node -> its last state Y_h [D, N, H] -> logits [N, 3] (Gemm, with or without
    bias), as torch exports a batch-first recurrent layer; ``zero_state``: the initial state as torch writes it,
    zeros of x's batch size by ConstantOfShape; ``seq_first``: x [T, N, I] read by the node as it is, scaled first
    (torch without batch_first)."""
    model, feeds = recurrent_model(op, seq=seq, **kw)
    g = model.graph
    if not bias:
        g.initializer[2].CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(g.initializer[2])), "B"))
    D = 2 if kw.get("direction") == "bidirectional" else 1
    H = numpy_helper.to_array(g.initializer[1]).shape[-1]
    rng = np.random.default_rng(5)
    g.initializer.extend([numpy_helper.from_array(rng.standard_normal((3, D * H)).astype(np.float32), "Wy"),
                          numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
                          numpy_helper.from_array(np.array([D], np.int64), "D"),
                          numpy_helper.from_array(np.array([H], np.int64), "H")])
    rnn = g.node[0]
    rnn.input[0] = "xt"
    dims = g.input[0].type.tensor_type.shape.dim
    declared = [d.dim_value or d.dim_param for d in dims]
    if seq_first:
        g.initializer.append(numpy_helper.from_array(np.float32(2.0), "two"))
        g.node.insert(0, helper.make_node("Mul", ["x", "two"], ["xt"]))
    else:
        g.input[0].CopyFrom(helper.make_tensor_value_info("x", F32, [declared[1], declared[0], declared[2]]))
        feeds["x"] = np.ascontiguousarray(feeds["x"].transpose(1, 0, 2))
        g.node.insert(0, helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]))
    if zero_state:
        g.node.insert(1, helper.make_node("Shape", ["x"], ["n"], start=0, end=1))
        g.node.insert(2, helper.make_node("Concat", ["D", "n", "H"], ["hs"], axis=0))
        g.node.insert(3, helper.make_node("ConstantOfShape", ["hs"], ["h0"]))
        while len(rnn.input) < 6:
            rnn.input.append("")
        rnn.input[5] = "h0"
    g.node.extend([helper.make_node("Transpose", ["Yh"], ["Yt"], perm=[1, 0, 2]),
                   helper.make_node("Reshape", ["Yt", "flat"], ["feat"]),
                   helper.make_node("Gemm", ["feat", "Wy"] + (["by"] if bias else []), ["logits"], transB=1)])
    if bias:
        g.initializer.append(numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "by"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", F32, [declared[1], 3]))
    return model, feeds


def test_torch_zero_state_leaves_out_the_first_recurrent_terms():
    """A state of zeros made from x's batch size (torch's export) is known zero: no Shape/ConstantOfShape chain
    and no recurrent term at the first step remain, and the logits are the node's."""
    model, feeds = classifier("LSTM", zero_state=True, direction="bidirectional")
    canon = canonicalize(model)
    ops = [n.op_type for n in canon.graph.node]
    assert "ConstantOfShape" not in ops and "Shape" not in ops
    gemms = [n for n in canon.graph.node if n.op_type == "Gemm"]
    producer = {o: n.op_type for n in canon.graph.node for o in n.output}
    # per direction, one Gemm per step; steps 2..4 read [x_t, h_{t-1}], the first x_t alone; and the head
    assert len(gemms) == 2 * 4 + 1
    assert sum(producer.get(g.input[0]) == "Concat" for g in gemms) == 2 * 3
    np.testing.assert_allclose(run(canon, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-6)


def test_lrp_on_an_lstm_conserves_the_logit():
    """Signal-take-all (gates get no relevance) with the z rule: on a bias-free LSTM and head, started from a zero
    state, the input's relevance adds up to the explained logit."""
    model, feeds = classifier("LSTM", bias=False, direction="bidirectional", T=5)
    logits = run(model, feeds)[0]
    relevance = onnxattr.create_analyzer("lrp.z", model).analyze(feeds["x"], neuron_selection=0)
    np.testing.assert_allclose(relevance.sum(axis=(1, 2)), logits[:, 0], rtol=1e-4)


def test_dynamic_sequence_length_is_named_and_forward_methods_still_run():
    model, feeds = classifier("LSTM", seq="T")
    with pytest.raises(UnsupportedModelError, match="LSTM 'rnn': its sequence length is not fixed"):
        onnxattr.compile(model, "gradient")
    canon = canonicalize(model)
    assert any(n.op_type == "LSTM" for n in canon.graph.node)  # kept: occlusion needs no gradient
    assert np.isfinite(onnxattr.create_analyzer("occlusion", model, sliding_window_shapes=(1, 3))
                       .analyze(feeds["x"])).all()


@pytest.mark.parametrize("method", ["gradient", "occlusion"])
def test_a_sequence_first_input_is_refused_by_name(method):
    """torch's nn.LSTM without batch_first reads x as [T, N, I]: onnxattr's batch is the first axis, so such an input
    is refused for every method (per-sample targets, batch slicing and the perturbation methods would take T for N)."""
    model, _ = classifier("LSTM", seq_first=True)
    with pytest.raises(UnsupportedModelError, match=r"input 'x' is sequence-first \(\[T, N, \.\.\.\]\): LSTM 'rnn' "
                                                    r"reads it with layout 0.*batch_first=True"):
        onnxattr.compile(model, method)


def test_an_embedding_read_sequence_first_is_refused():
    """Token ids [T, N] through an embedding's Gather into a layout-0 LSTM: the ids are sequence-first too."""
    model, _ = classifier("LSTM", seq_first=True)
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.random.default_rng(0).standard_normal((9, 3)).astype(np.float32),
                                                 "table"))
    g.node.insert(0, helper.make_node("Gather", ["table", "ids"], ["x"], axis=0))
    g.input[0].CopyFrom(helper.make_tensor_value_info("ids", TensorProto.INT64, [4, "N"]))
    with pytest.raises(UnsupportedModelError, match="input 'x' is sequence-first"):
        onnxattr.compile(model, "gradient", input="x")
    from onnxattr.recurrent_nodes import sequence_first_reader
    assert sequence_first_reader(model, "ids").name == "rnn"


def test_per_sample_sequence_lengths_are_named():
    model, _ = classifier("GRU")
    model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [2]))
    next(n for n in model.graph.node if n.op_type == "GRU").input[4] = "lens"
    with pytest.raises(UnsupportedModelError, match="GRU 'rnn': it takes per-sample sequence lengths"):
        onnxattr.compile(model, "gradient")


def test_a_symbolic_sequence_length_is_fixed_from_the_data_by_the_analyzer():
    """compile refuses a symbolic sequence length; the Analyzer, which sees the data, compiles once per length it
    is given (the input's symbolic size fixed to the data's) and gives the map of the model exported at that length."""
    from onnxattr.recurrent_nodes import data_sizes
    model, feeds = classifier("LSTM", seq="T", direction="bidirectional")
    fixed, _ = classifier("LSTM", direction="bidirectional")
    analyzer = onnxattr.create_analyzer("gradient", model)
    np.testing.assert_allclose(analyzer.analyze(feeds["x"]),
                               onnxattr.create_analyzer("gradient", fixed).analyze(feeds["x"]), rtol=1e-6, atol=1e-7)
    longer = np.random.default_rng(2).standard_normal((2, 6, 3)).astype(np.float32)
    r = analyzer.analyze(longer)
    assert r.shape == longer.shape and np.abs(r).max() > 0
    assert sorted(k[-1] for k in analyzer._runners) == [(("T", 4),), (("T", 6),)]  # one session per length
    with pytest.raises(UnsupportedModelError, match="sequence length is not fixed"):
        analyzer.compiled("max")  # no data: as compile
    assert data_sizes(fixed, feeds["x"].shape) is None  # nothing symbolic to fix
