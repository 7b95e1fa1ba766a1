"""The gradient family of iNNvestigate: gradient, input_t_gradient, integrated_gradients, smoothgrad,
deconvnet, guided_backprop, and the baselines input and random; with Captum's vargrad and Zennit's
beta_smooth.

deconvnet:       at every rectifier, R_in = relu(R_out)          (forward mask ignored)
guided_backprop: at every rectifier, R_in = relu(R_out) * [x > 0], times a ReLU6's own [x <= 6]
                 (rectifiers: Relu, and Clip from 0 such as ReLU6, which Zennit's and Captum's hooks on
                 nn.ReLU leave to the gradient; a QuantizeLinear from its codes' lowest value, zero point 0 of
                 uint8, into which onnxruntime's quantizer writes a ReLU, as a ReLU6: emitters/quantize.py)
integrated_gradients: (x - ref) * sum_k w_k grad(ref + a_k (x - ref)), k = 0..steps-1, with the
                 points a_k and weights w_k of ``integration`` (``ig_quadrature``); the default is the left
                 Riemann sum a_k = k/steps, w_k = 1/steps of iNNvestigate (Captum's riemann_left)
smoothgrad:      mean_k post(grad(x + noise_k)), noise ~ N(0, noise_scale^2) (iNNvestigate 2.x ignores
                 noise_scale and always uses 1; we honour it, default 1); Captum's NoiseTunnel aggregates
                 (nt_type: the mean, the mean of squares, the variance = vargrad) over another base
                 (input_t_gradient, guided_backprop, deconvnet) in noise_tunnel
beta_smooth:     at every Relu, R_in = sigmoid(beta x) * R_out (softplus_beta's derivative; Zennit's BetaSmooth)
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from onnxattr.emitters.activations import clip_vjp, mask_positive
from onnxattr.emitters.quantize import rectifier_vjp
from onnxattr.emitters.quantize import rectifies as quantizer_rectifies
from onnxattr.compiler import path_nodes, reverse_pass
from onnxattr.errors import OnnxAttrWarning, UsageError, warn
from onnxattr.graph import CODE_MOVERS
from onnxattr.methods.base import (
    Method, Param, Target, as_carried, chunk_param, chunk_size, non_negative, one_of, parse_int, positive,
    positive_int, register_method, times_tensor,
)
from onnxattr.methods.draws import SEED, gaussian
from onnxattr.methods.reference import REFERENCE_DATA, REFERENCE_INPUTS, path_reference
from onnxattr.sampling import repeat_rows, sample_loop
from onnxattr.select import build_seed


def _postprocess(b, t, mode):
    if mode == "abs":
        return b.op("Abs", [t])
    if mode == "square":
        return b.op("Mul", [t, t])
    return t


def _parse_post(s: str):
    return None if s.lower() in ("none", "") else s


POSTPROCESS = Param("postprocess", None, "None, 'abs' or 'square' applied to the gradient",
                    _parse_post, one_of(None, "abs", "square"))
CHUNK = chunk_param("points")


def is_relu(node) -> bool:
    return node.op_type == "Relu"


def record_rule(t: Target, picks, rule: str, why: str) -> None:
    """Name the rule every node that ``picks`` gets, for ``inspect``."""
    for node in t.nodes:
        if picks(node):
            t.assignment[node.name] = (rule, why)


def at_nodes(picks, rule):
    """A rule lookup (compiler.RuleLookup) giving ``rule`` at every node that ``picks`` and the gradient
    elsewhere."""
    return lambda node: rule if picks(node) else None


_MOVES_OR_QUANTIZES = CODE_MOVERS | {"QuantizeLinear", "DequantizeLinear", "Cast", "Pad"}


def rectifier_test(t: Target):
    """A test of whether a node rectifies: every Relu, every Clip whose lower bound is a constant 0
    (ReLU6 and other capped ReLUs; a Clip of any other bound is no rectifier), and every QuantizeLinear whose zero
    point is its codes' lowest value, of values some op computed (not the input's own quantizer). It looks at the
    bound's name, which a Loop body's copy of the node keeps."""
    zero_bounds = set()
    producer = {o: n for n in t.nodes for o in n.output}

    def from_a_layer(tensor) -> bool:  # not the input itself, quantized or moved (a QAT net's input quantizer)
        node = producer.get(tensor)
        while node is not None and node.op_type in _MOVES_OR_QUANTIZES:
            node = producer.get(node.input[0])
        return node is not None

    for node in t.nodes:
        if node.op_type == "Clip" and len(node.input) > 1 and node.input[1]:
            low = t.b.value(node.input[1])
            if low is not None and np.size(low) == 1 and float(np.asarray(low).reshape(())) == 0.0:
                zero_bounds.add(node.input[1])

    def rectifies(node) -> bool:
        return node.op_type == "Relu" or (node.op_type == "Clip" and node.domain in ("", "ai.onnx")
                                          and len(node.input) > 1 and node.input[1] in zero_bounds) \
            or (quantizer_rectifies(t.b, node) and from_a_layer(node.input[0]))

    return rectifies


def relu_rule(kind, rectifies):
    """A rule replacing a rectifier's backward: 'deconv' -> relu(g); 'guided' -> relu(g) * [x > 0], times
    a Clip's own gradient mask (its upper bound). ``rectifies`` (rectifier_test) picks the nodes."""

    def rule(b, node, grads, need):
        if node.op_type == "QuantizeLinear":
            return rectifier_vjp(b, node, grads, need, kind)
        positive = b.op("Relu", [grads[0]])
        if kind == "deconv":
            return [positive] + [None] * (len(node.input) - 1)
        masked = mask_positive(b, node.output[0], positive)  # [y > 0] = [x > 0]
        if node.op_type == "Clip":
            return clip_vjp(b, node, [masked], need)
        return [masked]

    return at_nodes(rectifies, rule)


# the methods that change only the rectifiers' backward: name -> (relu_rule kind, the rule as inspect shows it)
RELU_METHODS = {"deconvnet": ("deconv", "R_in = relu(R_out)"),
                "guided_backprop": ("guided", "R_in = relu(R_out) [x > 0]")}
# pointwise nonlinearities that are no rectifier, named when a path has only these
OTHER_ACTIVATIONS = frozenset({"Sigmoid", "Tanh", "Erf", "Gelu", "HardSigmoid", "HardSwish", "Swish", "Mish",
                               "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Clip"})


def relu_method_rule(t: Target, name: str):
    """The rule lookup of deconvnet or guided_backprop, recorded on every rectifier for ``inspect``; a path
    from x to y through no rectifier gets a warning: the map is then the plain gradient."""
    kind, why = RELU_METHODS[name]
    rectifies = rectifier_test(t)
    record_rule(t, rectifies, name, why)
    on_path = path_nodes(t.nodes, t.x, t.y, t.b)[0]
    if on_path and not any(rectifies(node) for node in on_path):
        others = sorted({n.op_type for n in on_path if n.op_type in OTHER_ACTIVATIONS})
        which = f" (its activations: {', '.join(others)})" if others else ""
        warn(f"{name}: no rectifier (Relu, a Clip from 0 such as ReLU6, or a quantizer from zero point 0) lies "
             f"between '{t.x}' and '{t.y}'"
             f"{which}, so the map is the plain gradient (iNNvestigate refuses such a model; Zennit and Captum "
             "return its gradient)", OnnxAttrWarning)
    return relu_rule(kind, rectifies)


def beta_smooth_rule(beta: float):
    """A rule replacing the Relu backward by softplus_beta's derivative: R_in = sigmoid(beta * x) * R_out
    (Zennit's ReLUBetaSmooth)."""

    def rule(b, node, grads, need):
        x = node.input[0]
        if b.float_type(x) in (TensorProto.FLOAT, TensorProto.DOUBLE):
            slope = b.op("Sigmoid", [b.op("Mul", [x, b.scalar(beta, x)])])
        else:  # float16 holds no beta above 65504 (inf * 0 = NaN at x = 0): the slope in float32
            wide = b.op("Mul", [b.op("Cast", [x], to=TensorProto.FLOAT), b.scalar(beta)])
            slope = b.op("Cast", [b.op("Sigmoid", [wide])], to=b.float_type(x))
        return [b.op("Mul", [grads[0], slope])]

    return at_nodes(is_relu, rule)


def backward(t: Target, scale="one", rule_for=None) -> str:
    seed = build_seed(t.b, t.y, t.neuron, scale, t.index)
    g = reverse_pass(t.b, t.nodes, t.x, t.y, seed, rule_for)
    return g if g is not None else t.b.zeros_like(t.x)


def build_gradient(t, p):
    return _postprocess(t.b, backward(t), p["postprocess"])


def build_input_t_gradient(t, p):
    return t.b.op("Mul", [t.x, backward(t)])


def build_deconvnet(t, p):
    return backward(t, rule_for=relu_method_rule(t, "deconvnet"))


def build_guided_backprop(t, p):
    return backward(t, rule_for=relu_method_rule(t, "guided_backprop"))


def build_beta_smooth(t, p):
    record_rule(t, is_relu, f"beta_smooth({p['beta_smooth']:g})", "R_in = sigmoid(beta x) R_out")
    return backward(t, rule_for=beta_smooth_rule(p["beta_smooth"]))


def _sample_major(b, x, per_sample, count):
    """[count, 1, ...] values broadcast against x -> [count * N, ...] batch."""
    shape = b.op("Concat", [b.ints([-1]), b.op("Slice", [b.op("Shape", [x]), b.ints([1]), b.ints([2**62])])],
                 axis=0)
    return b.op("Reshape", [per_sample, shape])


INTEGRATION = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
_RIEMANN_OFFSET = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
GAUSS_LEGENDRE_MAX = 2048


def at_the_reference(p: dict) -> str:
    """Why a path method's map may not be finite: a rule that takes the gradient at the reference itself (alpha = 0),
    where a model that normalizes its input (x / |x|, a norm of zeros) may have none."""
    if p["integration"] not in ("riemann_left", "riemann_trapezoid"):
        return ""
    return (f"integration {p['integration']} takes the gradient at the reference itself (alpha = 0), which a model "
            "that normalizes its input (x / |x|, a norm of zeros) may not have: integration=riemann_middle or "
            "gausslegendre leaves that point out")


def ig_quadrature(rule: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points a_k in [0, 1] and weights w_k (float64, summing to 1) of the n-point rule for the path
    integral, Captum's names: riemann_left/right/middle a_k = (k + 0, 1, 1/2) / n, w_k = 1/n;
    riemann_trapezoid a_k = k / (n - 1), w_k = 1 / (n - 1) halved at both ends (n >= 2);
    gausslegendre a_k = (1 + t_k) / 2, w_k = v_k / 2 for the Gauss-Legendre nodes t_k and weights v_k
    on [-1, 1] (exact for polynomial paths up to degree 2n - 1; Captum's default)."""
    k = np.arange(n, dtype=np.float64)
    if rule in _RIEMANN_OFFSET:
        return (k + _RIEMANN_OFFSET[rule]) / n, np.full(n, 1.0 / n)
    if rule == "riemann_trapezoid":
        if n < 2:
            raise UsageError("integration riemann_trapezoid needs steps >= 2 (both ends of the path)")
        w = np.full(n, 1.0 / (n - 1))
        w[[0, -1]] /= 2
        return k / (n - 1), w
    if n > GAUSS_LEGENDRE_MAX:
        raise UsageError(f"integration gausslegendre takes at most {GAUSS_LEGENDRE_MAX} steps, got {n} (numpy's "
                         "leggauss needs n x n memory; so many points add nothing on a smooth path): use fewer "
                         "steps or a riemann_* rule")
    t, v = np.polynomial.legendre.leggauss(n)
    return (1 + t) / 2, v / 2


def path_points(cb, x: str, alphas: str, ref: str, diff: str, count: str) -> str:
    """The points ref + a_k (x - ref) for this trip's alphas [count]: [count*N, ...], sample-major."""
    alphas = cb.op("Reshape", [alphas, cb.ints([-1] + [1] * cb.rank(x))])  # [c, 1, ...]
    on_path = cb.op("Add", [cb.op("Mul", [alphas, cb.op("Unsqueeze", [diff, cb.ints([0])])]), ref])
    return _sample_major(cb, x, on_path, count)


def build_integrated_gradients(t, p, backward=None):
    """(x - ref) * sum_k w_k grad_k; ``backward``: sample_loop's, in place of the reverse pass to x (neuron
    conductance's)."""
    b, x, steps, rule = t.b, t.x, p["steps"], p["integration"]
    ref = path_reference(t, p)
    diff = b.op("Sub", [x, ref])
    alphas_k, weights_k = ig_quadrature(rule, steps)
    uniform = rule in _RIEMANN_OFFSET
    dtype = b.float_dtype(x)

    def points(cb, x_, ks, count):
        if uniform:  # (k + offset) / steps, as the left sum always computed it
            narrow = cb.float_type(x_) not in (TensorProto.FLOAT, TensorProto.DOUBLE)
            like = None if narrow else x_  # None: float32
            # float16 counts exactly to 2048 only: the points in float32, then cast
            k = cb.op("Cast", [ks], to=TensorProto.FLOAT if narrow else cb.float_type(x_))
            shifted = k if rule == "riemann_left" else cb.op("Add", [k, cb.scalar(_RIEMANN_OFFSET[rule], like)])
            alphas = cb.op("Div", [shifted, cb.scalar(float(steps), like)])
            if narrow:
                alphas = cb.op("Cast", [alphas], to=cb.float_type(x_))
        else:
            alphas = cb.op("Gather", [cb.const(alphas_k.astype(dtype), dtype, "ig_alphas"), ks])
        return path_points(cb, x_, alphas, ref, diff, count)

    def weighted(cb, g, pts, ks):
        """w_k * grad_k: the [count * N, ...] gradients as [count, N * ...] rows, one weight per row."""
        w = cb.op("Gather", [cb.const(weights_k.astype(dtype), dtype, "ig_weights"), ks])
        rows = cb.op("Reshape", [g, cb.op("Concat", [cb.op("Shape", [ks]), cb.ints([-1])], axis=0)])
        scaled = cb.op("Mul", [rows, cb.op("Unsqueeze", [w, cb.ints([1])])])
        return cb.op("Reshape", [scaled, cb.op("Shape", [g])], allowzero=1)  # a batch of 0 keeps its 0

    total = sample_loop(b, t.nodes, x, t.y, t.index, steps, chunk_size(t, p), points,
                        per_sample=None if uniform else weighted, mean_over=steps if uniform else None,
                        backward=backward)
    return b.op("Mul", [diff, total])


def noisy_copies(cb, x: str, count: str, scale: float, seed) -> str:
    """count copies of x's rows ([count*N, ...], sample-major) plus N(0, scale^2) noise, drawn in float32
    whatever x's float type (one stream for float16, float32 and float64 models)."""
    tiled = repeat_rows(cb, x, count)
    noise = gaussian(cb, tiled, scale, seed, TensorProto.FLOAT)
    if noise is not None and cb.float_type(x) != TensorProto.FLOAT:
        noise = cb.op("Cast", [noise], to=cb.float_type(x))
    return tiled if noise is None else cb.op("Add", [tiled, noise])


NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
BASES = ("gradient", "input_t_gradient", "guided_backprop", "deconvnet")


def noise_tunnel(t, p, nt_type: str) -> str:
    """Captum's NoiseTunnel over a gradient method: with a_k = post(base(x + noise_k)), k = 0..n-1,
    smoothgrad: mean_k a_k;  smoothgrad_sq: mean_k a_k^2;  vargrad: mean_k a_k^2 - (mean_k a_k)^2.
    Where anything is squared (post 'square', smoothgrad_sq, vargrad) the a_k are squared and summed in
    float64, and the result comes back in float32 (the relevance output's type): the float32 or float16 a_k
    square exactly there, VarGrad's difference does not cancel to noise where the variance is small next
    to the mean, and float16's range (6e-8 to 65504) holds neither the squares nor small variances. The
    variance is clipped at 0."""
    b, x, n, base = t.b, t.x, p["augment_by_n"], p["base"]
    rule_for = relu_method_rule(t, base) if base in RELU_METHODS else None
    squares = nt_type != "smoothgrad" or p["postprocess"] == "square"

    def points(cb, x_, ks, count):
        return noisy_copies(cb, x_, count, p["noise_scale"], p["seed"])

    def attribution(cb, g, pts, ks):
        a = cb.op("Mul", [pts, g]) if base == "input_t_gradient" else g
        if squares:
            a = cb.op("Cast", [a], to=TensorProto.DOUBLE)
        a = _postprocess(cb, a, p["postprocess"])
        if nt_type == "smoothgrad":
            return a
        if nt_type == "smoothgrad_sq":
            return cb.op("Mul", [a, a])
        return [a, cb.op("Mul", [a, a])]

    totals = sample_loop(b, t.nodes, x, t.y, t.index, n, chunk_size(t, p), points, rule_for=rule_for,
                         per_sample=attribution, mean_over=n, sums=2 if nt_type == "vargrad" else 1, wide=squares)
    if not squares:
        return totals
    if nt_type == "vargrad":
        mean, mean_sq = totals
        totals = b.op("Relu", [b.op("Sub", [mean_sq, b.op("Mul", [mean, mean])])])
    out = b.op("Cast", [totals], to=TensorProto.FLOAT)
    b.set_info(out, x)
    b.types[out] = TensorProto.FLOAT
    return out


def build_smoothgrad(t, p):
    return noise_tunnel(t, p, p["nt_type"])


def build_vargrad(t, p):
    return noise_tunnel(t, p, "vargrad")


def build_input(t, p):
    return t.b.op("Identity", [t.x])


def build_random(t, p):
    noise = gaussian(t.b, t.x, p["stddev"], p["seed"], TensorProto.FLOAT)
    return t.b.zeros_like(t.x) if noise is None else noise


NOISE = (Param("augment_by_n", 64, "number of noisy samples", parse_int, positive_int),
         Param("noise_scale", 1.0, "standard deviation of the Gaussian noise", float, non_negative))
NOISE_BASE = Param("base", "gradient", "the attribution of each noisy copy: " + ", ".join(BASES) + " (Captum's "
                   "Saliency(abs=False), InputXGradient, GuidedBackprop, Deconvolution)", str, one_of(*BASES))
POSTPROCESS_NOISY = Param("postprocess", None, "None, 'abs' or 'square' applied to each copy's attribution",
                          _parse_post, one_of(None, "abs", "square"))
for _m in (
    Method("gradient", "Gradient of the selected output w.r.t. the input.", build_gradient, (POSTPROCESS,),
           aliases=("gradient.baseline",),  # iNNvestigate's name for its framework-gradient check
           fused_recurrent=True,
           at_layer=lambda b, tensor, carried, p: _postprocess(b, carried, p["postprocess"]), conditional=True),
    Method("input_t_gradient", "Input times gradient.", build_input_t_gradient, at_layer=times_tensor,
           conditional=True, fused_recurrent=True),
    Method("deconvnet", "DeconvNet: rectifiers (Relu, ReLU6) pass only positive relevance backward.",
           build_deconvnet, at_layer=as_carried, conditional=True),
    Method("guided_backprop", "Guided backprop: gradient through rectifiers (Relu, ReLU6), positive part only.",
           build_guided_backprop, at_layer=as_carried, conditional=True),
    Method("beta_smooth", "Gradient with every Relu's derivative replaced by softplus_beta's, sigmoid(beta x) "
           "(Zennit's BetaSmooth composite; Dombrowski et al. 2019).", build_beta_smooth,
           (Param("beta_smooth", 10.0, "beta of the softplus whose derivative replaces the Relu's (Zennit's "
                  "default 10; larger is closer to the gradient)", float, positive),), at_layer=as_carried,
           conditional=True),
    Method("integrated_gradients", "Integrated gradients from the reference (a left Riemann sum unless "
           "integration says otherwise).",
           build_integrated_gradients,
           (Param("steps", 64, "number of points on the path", parse_int, positive_int),
            REFERENCE_INPUTS, REFERENCE_DATA,
            Param("integration", "riemann_left", "points and weights on the path (Captum's names; its "
                  "default is gausslegendre)", str, one_of(*INTEGRATION)),
            CHUNK), non_finite=at_the_reference),
    Method("smoothgrad", "SmoothGrad: mean gradient over noisy copies of the input (Captum's NoiseTunnel: "
           "nt_type and base choose what is averaged).", build_smoothgrad,
           (*NOISE, Param("nt_type", "smoothgrad", "mean of the attributions ('smoothgrad'), of their squares "
                          "('smoothgrad_sq'), or their variance ('vargrad'), as Captum's NoiseTunnel",
                          str, one_of(*NT_TYPES)), NOISE_BASE, POSTPROCESS_NOISY, SEED, CHUNK), random=True),
    Method("vargrad", "VarGrad (Adebayo et al. 2018): variance of the gradient over noisy copies of the input "
           "(smoothgrad with nt_type='vargrad').", build_vargrad,
           (*NOISE, NOISE_BASE, POSTPROCESS_NOISY, SEED, CHUNK), random=True),
    Method("input", "The input itself (a baseline).", build_input, family="baseline"),
    Method("random", "Gaussian noise of the input's shape (a baseline).", build_random,
           (Param("stddev", 1.0, "standard deviation", float, non_negative), SEED), family="baseline", random=True),
):
    register_method(_m)
