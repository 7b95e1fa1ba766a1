"""DeepLIFT with the rescale rule (Shrikumar et al. 2017), against a reference input computed in the
same graph.

The forward path is replayed once on the reference x0 (default 0). Linear ops and data movement keep
their exact VJP; every element-wise nonlinearity f passes g * (f(x) - f(x0)) / (x - x0), falling back
to its gradient g * f'(x) where |x - x0| < 1e-7. The map is (x - x0) * multiplier, so on nets made of
linear ops and such nonlinearities it sums to y(x) - y(x0) for the selected output ("summation to
delta"). MaxPool keeps its gradient route (the winner at x), as the rescale rule has no pooling form.

DeepLIFT SHAP (Captum's DeepLiftShap, SHAP's DeepExplainer) averages DeepLIFT over a set of B references:
R = mean_k (x - b_k) * multiplier(x, b_k), which sums to y(x) - mean_k y(b_k). Each chunk of references runs
in one ONNX Loop trip (onnxattr/sampling.py) as copies of the batch, with the reference forward in the body.
"""

from __future__ import annotations

from onnxattr.compiler import path_nodes, reverse_pass
from onnxattr.emitters import VJPS
from onnxattr.methods.base import Method, Target, chunk_param, chunk_size, register_method
from onnxattr.methods.gradient_shap import BASELINE_SET, baseline_set
from onnxattr.methods.reference import REFERENCE_DATA, REFERENCE_INPUTS, path_reference
from onnxattr.sampling import repeat_rows, sample_loop
from onnxattr.select import build_seed

NONLINEAR = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "Softplus", "Softsign",
    "HardSigmoid", "HardSwish", "Gelu", "Erf", "Clip", "Exp", "Log", "Sqrt", "Abs", "Mish",
})
TINY = 1e-7


def reference_forward(b, on_path, x: str, x0: str) -> dict:
    """Replay the path on x0; returns tensor name -> its value at the reference."""
    ref = {x: x0}
    for node in on_path:
        outs = b.replay(node, ref)
        for o, r in zip(node.output, outs):
            if o:
                ref[o] = r
                b.set_info(r, o)
    return ref


def rescale_rule(ref: dict):
    def rule(b, node, grads, need):
        xin, y = node.input[0], node.output[0]
        dx = b.op("Sub", [xin, ref[xin]])
        dy = b.op("Sub", [y, ref[y]])
        gradient = VJPS[node.op_type](b, node, grads, need)[0]
        far = b.op("Greater", [b.op("Abs", [dx]), b.scalar(TINY, xin)])
        safe_dx = b.op("Where", [far, dx, b.scalar(1.0, xin)])
        rescaled = b.op("Mul", [grads[0], b.op("Div", [dy, safe_dx])])
        out = [None] * len(node.input)
        out[0] = b.op("Where", [far, rescaled, gradient])
        return out

    def lookup(node):
        return rule if node.op_type in NONLINEAR and node.input[0] in ref else None

    return lookup


def build_deep_lift(t: Target, p: dict) -> str:
    b, x = t.b, t.x
    x0 = b.op("Expand", [path_reference(t, p), b.op("Shape", [x])])
    b.set_info(x0, x)
    on_path, _ = path_nodes(t.nodes, x, t.y, b)
    ref = reference_forward(b, on_path, x, x0)
    seed = build_seed(b, t.y, t.neuron, "one", t.index)
    multiplier = reverse_pass(b, t.nodes, x, t.y, seed, rescale_rule(ref))
    if multiplier is None:
        return b.zeros_like(x)
    for n in on_path:
        if n.op_type in NONLINEAR:
            t.assignment[n.name] = ("rescale", "nonlinearity")
    return b.op("Mul", [b.op("Sub", [x, x0]), multiplier])


def build_deep_lift_shap(t: Target, p: dict) -> str:
    b, x = t.b, t.x
    rank = b.rank(x)
    baselines, count_b = baseline_set(b, x, p["baselines"])  # [B, ...]
    refs = {}

    def points(cb, x_, ks, count):
        """count copies of the batch (reference-major, as repeat_rows lays them out); each copy's reference
        k broadcast over its samples."""
        copies = repeat_rows(cb, x_, count)
        n_ = cb.op("Slice", [cb.op("Shape", [x_]), cb.ints([0]), cb.ints([1])])
        chosen = cb.op("Unsqueeze", [cb.op("Gather", [baselines, ks]), cb.ints([1])])  # [c, 1, ...]
        rows = cb.op("Concat", [count, n_, cb.op("Slice", [cb.op("Shape", [x_]), cb.ints([1]), cb.ints([rank])])],
                     axis=0)
        refs["rows"] = cb.op("Reshape", [cb.op("Expand", [chosen, rows]), cb.op("Shape", [copies])])
        cb.set_info(refs["rows"], x_)
        return copies

    def rules(cb, body_forward, pts):
        return rescale_rule(reference_forward(cb, body_forward, pts, refs["rows"]))

    def times_delta(cb, multiplier, pts, ks):
        return cb.op("Mul", [cb.op("Sub", [pts, refs["rows"]]), multiplier])

    for node in path_nodes(t.nodes, x, t.y, b)[0]:
        if node.op_type in NONLINEAR:
            t.assignment[node.name] = ("rescale", "nonlinearity, averaged over the baselines")
    return sample_loop(b, t.nodes, x, t.y, t.index, count_b, chunk_size(t, p), points, body_rules=rules,
                       per_sample=times_delta, mean_over=count_b)


register_method(Method(
    "deep_lift_shap", "DeepLIFT SHAP (Captum's DeepLiftShap): DeepLIFT's rescale rule averaged over a set of "
    "baselines; sums to y(x) - mean y(baseline).", build_deep_lift_shap,
    (BASELINE_SET,
     chunk_param("baselines")),
))

register_method(Method(
    "deep_lift", "DeepLIFT (rescale rule) against a reference input; sums to y(x) - y(reference).",
    build_deep_lift,
    (REFERENCE_INPUTS, REFERENCE_DATA),
))
