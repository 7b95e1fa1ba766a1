"""AttnLRP (Achtibat et al., ICML 2024): LRP for transformers, written as input times a modified gradient,
the form of its reference implementation LXT ("efficient" mode). R = x * g, where g is the gradient of
the selected output with these steps changed:

- identity rule, element-wise activations f (GELU, SiLU's sigmoid gate, Tanh, a power x^p, ...):
  g_in = g * f(x) / x (0 where x = 0), so relevance passes unchanged: x * g_in = f(x) * g;
- uniform rule, a product (MatMul, Einsum or Mul) of two activations, tensors that vary with the explained
  input (attention's Q K^T and A V, a gated MLP's gate * up): half the relevance to each operand,
  g_in = VJP(g / 2); a factor that does not vary (a weight, a mask, a position table) keeps the gradient;
- a gate, x * h(x) or x / h(x) with h computed from x (or c * x) alone by element-wise ops and norms (SiLU
  and exported GELU, x * sigmoid(x) and x * (1 + erf(x / sqrt 2)) / 2; RMSNorm's x * rsqrt(mean(x^2)); a
  spelled-out LayerNorm's division by its std): h is held constant, so all relevance goes to x (the
  identity rule of the whole activation, and LXT's stop_gradient on a norm's std);
- LayerNormalization (and InstanceNormalization, GroupNormalization per group): its std held constant,
  g_in = (gamma g - mean(gamma g)) / std; RMSNormalization its rms held constant, g_in = gamma g / rms; a
  BatchNormalization fed its own statistics (tf2onnx's Keras LayerNormalization) its variance held constant;
- everything else keeps its gradient: linear layers then follow the z rule with the bias absorbing its
  share, a residual Add splits in proportion to its operands, and Softmax gives AttnLRP's
  R_in = x * (R - s * sum(R)).

Seeded with 1 at the selected output (the selected logit is the relevance there, as LRP starts).

cp_lrp is CP-LRP (Ali et al., ICML 2022), LXT's other mode: no relevance crosses the softmax. A product
one of whose operands is a Softmax output (read through reshapes, masks and constant scalings) holds it
constant and gives the other operand the whole gradient (attention's A V: all relevance to V), and a Mul of
an activation's output with another activation (a gated MLP's act(gate) * up) holds the activated gate
constant; other products keep the uniform rule.
"""

from __future__ import annotations

import numpy as np

from onnxattr.compiler import path_nodes, reverse_pass
from onnxattr.emitters import VJPS
from onnxattr.emitters.normalization import (affine_grads, group_norm_grad, norm_stats, normalized_grad,
                                             rms_scale_grad, rms_stats)
from onnxattr.lrp import rules as R
from onnxattr.lrp.gates import broadcast_gate, gate_branch, held_by, mean_of
from onnxattr.lrp.units import find_units
from onnxattr.methods.base import Method, Param, Target, non_negative, register_method, times_tensor
from onnxattr.methods.lrp import warn_on_loss
from onnxattr.select import build_seed

# element-wise activations (their first input varies, the others are constants): the identity rule
ACTIVATIONS = frozenset({
    "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "Softplus", "Softsign", "HardSigmoid",
    "HardSwish", "Swish", "Shrink", "ThresholdedRelu", "Gelu", "Erf", "Clip", "Mish",
})


def _held_only(on_path, live: set, y: str, kept: dict):
    """The nodes whose outputs reach y only through operands held constant by a gate (``kept``: gate node
    name -> the index of the operand that keeps its gradient)."""
    reached, out = {y}, []
    for node in reversed(on_path):
        if not any(o in reached for o in node.output):
            out.append(node)
            continue
        keep = kept.get(node.name)
        reached.update(i for k, i in enumerate(node.input) if i in live and keep in (None, k))
    return out


def identity_rule(b, node, grads, need):
    """g_in = g * f(x) / x, 0 where x = 0: x * g_in = f(x) * g, the relevance unchanged."""
    x, y = node.input[0], node.output[0]
    ratio = b.op("Where", [b.op("Equal", [x, b.scalar(0.0, x)]), b.scalar(0.0, x), b.op("Div", [y, x])])
    return [b.op("Mul", [grads[0], ratio])] + [None] * (len(node.input) - 1)


def uniform_rule(b, node, grads, need):
    """Half the relevance to each operand of a product of two activations: VJP(g / 2)."""
    half = b.op("Mul", [grads[0], b.scalar(0.5, node.output[0])])
    return VJPS[node.op_type](b, node, [half], need)


def gate_rule(keep: int):
    """x * h or x / h with h = input 1 - keep held constant: only input ``keep`` gets the gradient."""

    def rule(b, node, grads, need):
        only = [n and i == keep for i, n in enumerate(need)]
        return VJPS[node.op_type](b, node, grads, only)

    return rule


def layernorm_rule(b, node, grads, need):
    """LayerNormalization (or InstanceNormalization) with its std held constant:
    g_in = (gamma g - mean(gamma g)) * rstd over the normalized axes; a scale or bias that varies with the
    input gets its gradient, sum(g * xhat) and sum(g), as in LXT's layer_norm_forward."""
    g = grads[0]
    axes, gamma, xc, rstd = norm_stats(b, node)
    dx = normalized_grad(b, b.op("Mul", [g, gamma]), None, rstd, axes, std_held=True) if need[0] else None
    xhat = b.op("Mul", [xc, rstd]) if len(need) > 1 and need[1] else None
    return [dx] + affine_grads(b, node, g, xhat, need)[:len(node.input) - 1]


def groupnorm_rule(b, node, grads, need):
    """GroupNormalization with each group's std held constant: g_in = (gamma g - mean(gamma g)) * rstd per
    (sample, group)."""
    return group_norm_grad(b, node, grads[0], need, std_held=True)


def batchnorm_variance_rule(b, node, grads, need):
    """A BatchNormalization whose statistics are computed from the input (tf2onnx's Keras LayerNormalization):
    the variance held constant, the mean and the rest differentiated, so it is layernorm_rule."""
    return VJPS["BatchNormalization"](b, node, grads, list(need[:4]) + [False] * (len(need) - 4))


def rmsnorm_rule(b, node, grads, need):
    """RMSNormalization with its rms held constant (LXT's rms_norm_forward): g_in = gamma g * rstd; a scale
    that varies with the input gets sum(g * xhat)."""
    g = grads[0]
    axes, rstd = rms_stats(b, node)
    gg = b.op("Mul", [g, node.input[1]])
    dx = normalized_grad(b, gg, None, rstd, axes, centered=False, std_held=True) if need[0] else None
    xhat = b.op("Mul", [node.input[0], rstd]) if len(need) > 1 and need[1] else None
    return [dx, rms_scale_grad(b, node, g, xhat, need)]


# ops that move values, or mask or scale them by a factor that does not vary with x (a head mask, a
# masked_fill after the softmax): a tensor read through them keeps its origin (for cp_lrp)
_PASSES = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout", "Cast",
                     "Expand", "Slice", "Split", "Where", "Mul", "Div"})


def _origin(producer: dict, live: set, t: str, chosen: dict) -> str | None:
    """'softmax' or 'activation' when t is a Softmax output, or an activation's (an element-wise one or a
    gate x * h(x)), read through ops that only move, mask or scale it (_PASSES with one varying input,
    which is not a Where's condition nor a divisor); else None."""
    node = producer.get(t)
    while node is not None and node.op_type in _PASSES and chosen.get(node.name, (None, ""))[1] != "gate":
        varying = [k for k, i in enumerate(node.input) if i in live]
        if len(varying) != 1 or (node.op_type == "Where" and varying[0] == 0) or (
                node.op_type == "Div" and varying[0] == 1):
            return None
        node = producer.get(node.input[varying[0]])
    if node is None:
        return None
    if node.op_type == "Softmax":
        return "softmax"
    if node.op_type in ACTIVATIONS or node.op_type == "Relu" or chosen.get(node.name, (None, ""))[1] == "gate":
        return "activation"
    return None


def _product_rule(producer, live: set, x: str, node, cp: bool, chosen: dict, shape=None):
    """(rule, name, why, kept operand) of a product of two activations (Mul, Div, MatMul, Einsum): a gate when
    one operand is computed from the other alone (a Div only ever holds its divisor); with ``shape`` (hold_gates)
    a Mul's operand broadcast over the other (a squeeze-excitation's gate) held; with ``cp`` an operand that is
    a softmax's output (any product) or an activation's (a Mul) held constant when the other is not; else
    uniform, or None for a Div of two independent activations (its gradient)."""
    ins, op = node.input, node.op_type
    found = gate_branch(producer, live, x, node) if op in ("Mul", "Div") else None
    if found is not None:
        keep = found[0]
        return gate_rule(keep), "gate", f"{ins[1 - keep]} is computed from {ins[keep]} alone: held constant", keep
    for keep in (0, 1) if op == "Mul" else ():
        held, source = ins[1 - keep], mean_of(producer, ins[keep])
        if source is not None and held_by(producer, live, x, held, source):
            # a LayerNorm written x s - mean(x) s (tf2onnx's Keras LayerNormalization on an NHWC map):
            # the scale s = gamma / std(x) is held in both products, as in (x - mean(x)) s
            return gate_rule(keep), "gate", f"{held} is computed from {source} alone: held constant", keep
    if op == "Div":
        return None
    signal = broadcast_gate(shape, node) if shape is not None else None
    if signal is not None:
        return gate_rule(signal), "gate", f"{ins[1 - signal]} is broadcast over {ins[signal]}: held constant", signal
    if cp:
        kinds = [_origin(producer, live, i, chosen) for i in ins]
        for kind in ("softmax", "activation") if op == "Mul" else ("softmax",):
            if kinds.count(kind) == 1:
                keep = 1 - kinds.index(kind)
                article = "an" if kind == "activation" else "a"
                return gate_rule(keep), "constant", f"{ins[1 - keep]}, {article} {kind}'s output, held constant", keep
    return uniform_rule, "uniform", "product of two activations", None


def attn_rules(b, on_path, x: str, y: str, live: set, assignment: dict, cp: bool = False, hold_gates: bool = False):
    """rule_for(node) of AttnLRP (``cp``: CP-LRP; ``hold_gates``: a Mul's operand broadcast over the other held
    constant, the other taking all) over the nodes on the path; records each changed step in
    ``assignment``. Activations are the tensors that vary with the explained input x: a factor that does not
    (a weight, a mask, a position table, another graph input's activations) is a constant of the explanation,
    so its product with an activation is linear in x and keeps its gradient."""
    producer = {o: n for n in on_path for o in n.output}
    chosen, kept = {}, {}
    for node in on_path:
        op, ins = node.op_type, list(node.input)
        varying = [i in live for i in ins]
        if op in ("Mul", "Div", "MatMul", "Einsum") and len(ins) == 2 and all(varying):
            product = _product_rule(producer, live, x, node, cp, chosen, b.shape if hold_gates else None)
            if product is not None:
                chosen[node.name] = product[:3]
                if product[3] is not None:
                    kept[node.name] = product[3]
        elif (op in ACTIVATIONS or op == "Pow") and varying[0] and not any(varying[1:]):
            chosen[node.name] = (identity_rule, "identity", "activation")
        elif op in ("LayerNormalization", "InstanceNormalization") and varying[0]:
            chosen[node.name] = (layernorm_rule, "layernorm", "std held constant")
        elif op == "BatchNormalization" and varying[0] and len(ins) > 4 and varying[4]:
            chosen[node.name] = (batchnorm_variance_rule, "layernorm", "variance held constant")
        elif op == "GroupNormalization" and varying[0]:
            chosen[node.name] = (groupnorm_rule, "groupnorm", "std held constant")
        elif op == "RMSNormalization" and varying[0]:
            chosen[node.name] = (rmsnorm_rule, "rmsnorm", "rms held constant")
    for name, (_, rule, why) in chosen.items():
        assignment[name] = (rule, why)
    for node in on_path:
        if node.op_type == "Softmax" and node.name not in chosen:
            assignment[node.name] = ("gradient", "AttnLRP's softmax rule, R_in = x (R - s sum(R))")
    for node in _held_only(on_path, live, y, kept):
        assignment[node.name] = ("none", "feeds only an operand held constant")

    def rule_for(node):
        entry = chosen.get(node.name)
        return entry[0] if entry is not None else None

    return rule_for


# LXT's bridge from zennit's rules to input times gradient divides by the layer input stabilized so
INPUT_STABILIZER = R.Rule("input", (), stabilizer="signed", epsilon=1e-10)


def gamma_step(unit, rule):
    """A layer's gamma rule in the input-times-gradient form, as LXT's patched zennit hooks run it:
    R_out = g * z (z the layer's output, bias included), R_in by the rule, g_in = R_in / stab(x) with
    stab(x) = x + 1e-10 sign(x)."""

    def step(b, node, grads, need):
        relevance = b.op("Mul", [grads[0], unit.out])
        out = [None] * len(node.input)
        # 1e-10 underflows to 0 in float16 (0/0 where x = 0, where R_in is 0): at least the type's smallest step
        tiny = float(np.finfo(b.float_dtype(unit.x)).smallest_subnormal)
        stab = INPUT_STABILIZER if tiny <= INPUT_STABILIZER.epsilon else R.Rule("input", (), stabilizer="signed",
                                                                                  epsilon=tiny)
        out[list(node.input).index(unit.x)] = R.quotient(b, R.apply_rule(b, unit, rule, relevance), unit.x, stab)
        return out

    return step


def gamma_rules(b, on_path, x: str, y: str, gammas: dict, assignment: dict) -> dict:
    """node name -> step for the layers (a Conv, or a MatMul/Gemm with a constant weight, and its bias Add)
    whose kind has a gamma > 0 in ``gammas`` ({"conv": ..., "dense": ...}): Zennit's generalized gamma rule
    with its stabilizer 1e-6, which LXT puts on a ViT's Conv2d and Linear modules. The layer ends at its own
    bias (a BatchNorm after it keeps its gradient, as a module of its own does in LXT); a layer with a bias
    after a reshape keeps its gradient, and so does one whose output feeds only operands cp_lrp holds."""
    if not any(gammas.values()):
        return {}
    steps = {}
    # LXT's Gamma sits on the Linear/Conv module with its own bias; a BatchNorm after it keeps its gradient:
    # stop the fusion at each BatchNormalization's input
    stops = {y} | {n.input[0] for n in on_path if n.op_type == "BatchNormalization"}
    for name, unit in find_units(b, on_path, {n.name for n in on_path}, stops, x).items():
        gamma = gammas.get(unit.kind, 0.0) if unit.node.op_type != "Einsum" else 0.0  # LXT: Linear modules only
        if unit.node.name != name or not gamma or any(f.op_type != "Add" for f in unit.followers) or \
                assignment.get(name, ("",))[0] == "none":  # feeds only an operand cp_lrp holds: no relevance
            continue
        steps[name] = gamma_step(unit, R.gamma_rule(gamma, stabilizer="signed", epsilon=1e-6))
        assignment[name] = (f"gamma({gamma:g})", "layer (Zennit's gamma rule, as LXT applies it)")
    return steps


def build(cp: bool):
    def build_method(t: Target, p: dict) -> str:
        b, x = t.b, t.x
        on_path, live = path_nodes(t.nodes, x, t.y, b)
        warn_on_loss("cp_lrp" if cp else "attn_lrp", on_path)
        attn_rule = attn_rules(b, on_path, x, t.y, live, t.assignment, cp, bool(p["hold_gates"]))
        layers = gamma_rules(b, on_path, x, t.y, {"conv": p["conv_gamma"], "dense": p["linear_gamma"]},
                             t.assignment)

        def rule_for(node):
            return layers.get(node.name) or attn_rule(node)

        seed = build_seed(b, t.y, t.neuron, "one", t.index)
        g = reverse_pass(b, t.nodes, x, t.y, seed, rule_for)
        return b.zeros_like(x) if g is None else b.op("Mul", [x, g])

    return build_method


def zero_or_one(v):
    return None if v in (0, 1) and not isinstance(v, bool) else "must be 0 or 1"


PARAMS = (
    Param("conv_gamma", 0.0, "gamma rule on Conv/ConvTranspose layers (LXT's conv_gamma for ViTs; 0: the z "
          "rule)", float, non_negative),
    Param("linear_gamma", 0.0, "gamma rule on MatMul/Gemm layers with a constant weight (LXT's lin_gamma; "
          "0: the z rule)", float, non_negative),
    Param("hold_gates", 0, "1: a Mul whose one operand is broadcast over the other (a squeeze-excitation's gate "
          "[N, C, 1, 1]) holds that operand constant and gives the other all the relevance (not in LXT; 0: the "
          "uniform rule)", int, zero_or_one),
)

register_method(Method(
    "attn_lrp", "AttnLRP (LXT's rules for transformers): identity rule on activations, uniform rule on "
    "products of activations, norms' std held constant; the z rule (or gamma) elsewhere.",
    build(False), PARAMS, family="lrp", at_layer=times_tensor, conditional=True,
))
register_method(Method(
    "cp_lrp", "CP-LRP (Ali et al. 2022, as LXT writes it): attn_lrp with the attention weights (softmax "
    "outputs) and a gated MLP's activated gate held constant.",
    build(True), PARAMS, family="lrp", at_layer=times_tensor, conditional=True,
))
