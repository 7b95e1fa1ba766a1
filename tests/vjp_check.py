"""Numeric VJP check for one ONNX node.

The emitted backward (run by onnxruntime, float32) is compared with central differences of
F(x) = sum(v * f(x)) computed in float64 by onnx's own reference evaluator (an implementation
independent of onnxruntime), along several random directions u:
    <VJP(v), u>  ~=  (F(x + h u) - F(x - h u)) / (2 h),   h = 1e-5.
Tolerance: |a - n| <= 2e-5 * (|n| + sum|grad * u|) + 1e-5 — float32 rounding of the backward graph
dominates (sum|grad * u| is the scale of a float32 dot product's rounding); the float64 difference
quotient is accurate to ~1e-9. The largest error over tests/emitters is 2.6e-6 of that scale, so 2e-5
keeps an 8x margin and still fails a gradient that is off by 1e-4 (2e-4 let 1e-3 through).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxattr.compiler import reverse_pass
from onnxattr.graph import GraphBuilder
from onnxattr.light import typed_like_input

RTOL, ATOL, H = 2e-5, 1e-5, 1e-5


def node_model(op, inputs, attrs=None, n_out=1, dynamic=(), dtype=np.float32, opset=17, domain=""):
    """A one-node model. inputs: list of (name, array, as_initializer); ("", None, None) leaves an optional
    input out. dynamic: the axes each graph input declares symbolic (axis 0 as the batch "N", shared; the others
    named by input and axis), or a dict {input name: axes} for some inputs only."""
    g_inputs, inits = [], []
    for name, arr, const in inputs:
        if not name:
            continue
        arr = np.asarray(arr)
        if arr.dtype.kind == "f":
            arr = arr.astype(dtype)
        if const:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            axes = dynamic.get(name, ()) if isinstance(dynamic, dict) else dynamic
            shape = [(("N" if i == 0 else f"{name}_{i}") if i in axes else d) for i, d in enumerate(arr.shape)]
            g_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(arr.dtype), shape))
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, [n for n, _, _ in inputs], outs, name="node", domain=domain or None,
                            **(attrs or {}))
    graph = helper.make_graph([node], "g", g_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    typed_like_input(model)  # what onnx leaves untyped (GroupNormalization), as the compiler's inference does
    for o in model.graph.output:  # give outputs their inferred types
        for vi in model.graph.value_info:
            if vi.name == o.name:
                o.CopyFrom(vi)
    return model


def vjp_model(model, wrt, out="y0"):
    """The model plus an input ``cotangent`` (out's shape) and outputs ``grad_<x>`` per x in wrt."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    b = GraphBuilder(m)
    out_vi = next(o for o in m.graph.output if o.name == out)
    cot = helper.make_tensor_value_info("cotangent", out_vi.type.tensor_type.elem_type, None)
    cot.type.tensor_type.shape.CopyFrom(out_vi.type.tensor_type.shape)
    b.set_info("cotangent", out)
    nodes = list(m.graph.node)
    grads = {}
    for x in wrt:
        g = reverse_pass(b, nodes, x, out, "cotangent")
        assert g is not None, f"no gradient reached {x}"
        grads[x] = b.op("Identity", [g])
        b.nodes[-1].output[0] = f"grad_{x}"
    del m.graph.node[:]
    m.graph.node.extend(nodes + b.nodes)
    b.write_initializers(m.graph.initializer)
    m.graph.input.append(cot)
    for x in wrt:
        m.graph.output.append(helper.make_tensor_value_info(f"grad_{x}", b.types[x], b.shape(x)))
    onnx.checker.check_model(m, full_check=True)
    return m


def run_vjp(op, inputs, cotangent, attrs=None, wrt=None, opset=17, dynamic=()):
    """The emitted VJP of ``op`` at exactly these inputs and cotangent (float32, onnxruntime): a list
    of gradients, one per name in ``wrt`` (default: the first input). For conventions at ties and kinks,
    where central differences say nothing."""
    wrt = wrt or [inputs[0][0]]
    model = node_model(op, inputs, attrs, dynamic=dynamic, opset=opset)
    sess = ort.InferenceSession(vjp_model(model, wrt).SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
             for n, a, c in inputs if n and not c}
    feeds["cotangent"] = np.asarray(cotangent, np.float32)
    return sess.run([f"grad_{x}" for x in wrt], feeds)


def check_vjp(op, inputs, attrs=None, wrt=None, n_out=1, out_index=0, dynamic=(), seed=0, n_dirs=3,
              rtol=RTOL, atol=ATOL, opset=17, linear_ort=False, numpy_ref=None):
    """Assert the emitted VJP of ``op`` matches float64 central differences; returns the grads.

    ``linear_ort``: for ops that are linear in the differentiated input and where the reference
    evaluator is wrong (grouped ConvTranspose), F is computed by onnxruntime in float32 with h = 1:
    the difference quotient of a linear map is exact up to rounding.
    ``numpy_ref``: a float64 numpy function of the inputs (by name), for ops whose reference
    implementation rounds to float32 (Erf).
    """
    rng = np.random.default_rng(seed)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    wrt = wrt or [inputs[0][0]]
    model = node_model(op, inputs, attrs, n_out, dynamic, opset=opset)
    out = f"y{out_index}"
    vm = vjp_model(model, wrt, out)
    sess = ort.InferenceSession(vm.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {n: np.asarray(a).astype(np.float32) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
             for n, a, c in inputs if n and not c}
    model64 = node_model(op, inputs, attrs, n_out, dynamic, dtype=np.float64, opset=opset)
    if linear_ort:
        fwd = ort.InferenceSession(node_model(op, inputs, attrs, n_out, dynamic, opset=opset).SerializeToString(),
                                   so, providers=["CPUExecutionProvider"])

        class _Ref:
            def run(self, names, feeds):
                return fwd.run(names, {k: np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else a
                                       for k, a in feeds.items()})

        ref = _Ref()
    elif numpy_ref is not None:
        class _Ref:
            def run(self, names, feeds):
                return [numpy_ref({**consts, **feeds})]

        ref = _Ref()
    else:
        ref = ReferenceEvaluator(model64)
    h = 1.0 if linear_ort else H
    base = {n: np.asarray(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
            for n, a, c in inputs if n and not c}
    consts = {n: np.asarray(a, np.float64) for n, a, c in inputs if c}
    y = ref.run([out], base)[0]
    cot_type = next(i for i in sess.get_inputs() if i.name == "cotangent").type
    v = rng.standard_normal(y.shape).astype(np.float64 if cot_type == "tensor(double)" else np.float32)
    feeds["cotangent"] = v
    grads = dict(zip(wrt, sess.run([f"grad_{x}" for x in wrt], feeds)))

    def F(name, value):
        if name in consts:  # perturbing an initializer: rebuild with the new value
            mod = node_model(op, [(n, value if n == name else a, c) for n, a, c in inputs], attrs, n_out,
                             dynamic, dtype=np.float64, opset=opset)
            res = ReferenceEvaluator(mod).run([out], base)[0]
        else:
            res = ref.run([out], {**base, name: value})[0]
        return float(np.sum(v.astype(np.float64) * res))

    for x in wrt:
        x0 = base.get(x, consts.get(x))
        g = grads[x]
        assert g.shape == x0.shape, f"grad of {x} has shape {g.shape}, input {x0.shape}"
        for _ in range(n_dirs):
            u = rng.standard_normal(x0.shape)
            numeric = (F(x, x0 + h * u) - F(x, x0 - h * u)) / (2 * h)
            analytic = float(np.sum(g.astype(np.float64) * u))
            scale = abs(numeric) + float(np.sum(np.abs(g * u)))
            assert abs(analytic - numeric) <= rtol * scale + atol, (
                f"{op} d/d{x}: analytic {analytic:.6g} vs numeric {numeric:.6g} (attrs {attrs})"
            )
    return grads
