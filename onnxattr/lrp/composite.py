"""Composites: which rule each node of the explained path gets, from a preset (data in rules/*.toml).

Selectors, first match wins, for linear units (Conv/ConvTranspose/Gemm/MatMul-with-constant, a
standalone BatchNormalization): ``first`` (the first kernel layer met from the input), ``first_conv``
(the first convolution in graph order, as Zennit's EpsilonGammaBox picks it), ``until`` (kernel layers
with index <= until_layer_idx, counted in graph order from 0), ``relu_layer`` (a layer whose output
feeds a Relu), ``conv``, ``dense``, ``norm``, then ``default``; pools get ``pool`` (else the gradient).
Residual Add/Sum of activations get ``add``: ``z`` (split in proportion to the operands) or ``gradient``
(copy into every branch). Element-wise activations and fused followers (bias Add, BatchNorm after a linear
layer), and a Mul, Div, Sub or Add with one operand that varies, pass relevance through unchanged (but c / x
takes its gradient, as Reciprocal(x) does, and with scales = "gradient" so does a Mul or Div by a constant); so
does x * h(x) with h element-wise from x alone, an activation written out (SiLU, GELU), to x, and a recurrent
cell's signal * gate to the signal. Any other Mul, Div or Sub of two activations takes its gradient, as in
Zennit and iNNvestigate (a squeeze-excitation's gate, attention's products; with gates = "hold" a Mul by a gate
broadcast over the other operand passes to that operand), and so do the ops of a norm written out
(x / std(x) * gamma, its centring x - mean(x)), whose map is then the norm op's. Data movement (MaxPool,
Reshape, Concat, ...) uses the gradient emitters.
A node whose name matches a pattern of the preset's [nodes] table (equal, or fnmatch's * ? [..]; the first
in file order whose rule the node's kind takes, lrp/named.py) takes that rule instead of its kind's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onnxattr.dequantize import INTEGER_LAYERS
from onnxattr.errors import UnsupportedModelError, UsageError
from onnxattr.graph import follow_codes
from onnxattr.lrp import rules as R
from onnxattr.lrp.gates import broadcast_gate, centring_parts, gate_branch, scaled_from, statistics_parts
from onnxattr.lrp.named import PASS_TO, pick
from onnxattr.lrp.steps import add_split, pass_on, pass_to, unit_step, zero_preserving
from onnxattr.lrp.units import LAYOUT_OPS, LINEAR_OPS, Unit, find_units
from onnxattr.recurrent import is_cell_sum, is_signal_gate

PRODUCT_GRADIENT = "a product, quotient or difference of two activations: its gradient"

# Zennit's Activation types (CELU, SiLU as Swish, Hard/Softshrink as Shrink, Threshold as ThresholdedRelu; not Mish)
ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "Softplus", "Softsign", "HardSigmoid",
    "HardSwish", "Swish", "Shrink", "ThresholdedRelu", "Clip", "Gelu", "Erf", "Identity", "Dropout", "Cast", "Abs",
    "Exp", "Log", "Sqrt", "Neg",
})
# a quantizer and its dequantizer make a rounded, clipped identity, an activation as ReLU6 (Clip) is one (from zero
# point 0 of uint8 codes, the rectifier onnxruntime's quantizer leaves out): the quantizer takes an activation's
# rule, and the dequantizer of its codes the same (the gradient of one and the pass of the other would scale
# relevance by the quantization step)
QUANTIZERS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
ADDS = ("Add", "Sum", "Mean")  # Mean: a layer of weights 1/n

# Data movement whose gradient moves each output element back to one input element holding the same value
# (MaxPool routes to a window's maximum): relevance that is 0 wherever the output is 0 stays 0 wherever the
# input is 0
ZERO_PRESERVING = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat",
                             "Slice", "Pad"})

SELECTORS = ("first", "first_conv", "until", "relu_layer", "conv", "dense", "norm", "default", "pool")


@dataclass
class Composite:
    """Resolved preset: a rule per selector, the add rule and the stabilizer style."""

    selectors: dict
    add: str
    style: dict
    until_index: int | None = None
    activation: str = "pass"  # element-wise activations: "pass" relevance, or "gradient" (mask dead units)
    gates: str = "gradient"  # a Mul by a gate broadcast over the other operand: "gradient", or "hold" (pass to it)
    scales: str = "pass"  # a Mul or Div by a constant: "pass" (the z rule of a diagonal layer) or "gradient"
    nodes: tuple = ()  # (node name or glob pattern, rule), in file order: before the rule of a node's kind
    assignment: dict = field(default_factory=dict)  # node name -> description (for `inspect`)
    unmatched: tuple = ()  # after lookup: the node patterns that match no node on the path,
    untaken: tuple = ()    # those that match only nodes that do not take their rule (lrp/named.py),
    shadowed: tuple = ()   # and those whose takers all went to an earlier pattern
    products: tuple = ()   # after lookup: the Mul/Div nodes of two activations that take their gradient
    centrings: tuple = ()  # and the centrings of norms written out, or fed their input's statistics, by gradient

    def lookup(self, b, nodes, x, y):
        """The rule_for(node) function of the reverse pass explaining y w.r.t. x; ``nodes`` are the
        nodes on the path, in topological order."""
        on_path = {n.name for n in nodes}
        units = find_units(b, nodes, on_path, {y}, x)
        producer = {o: n for n in nodes for o in n.output}
        _pads_from_input(units, producer, x)
        kernel_outputs = {u.out for u in units.values() if u.kind != "pool"}
        for n in nodes:  # a layer's output moved by layout ops (a transformer's tokens reshaped) is still its output
            if n.op_type in LAYOUT_OPS and n.input and n.input[0] in kernel_outputs:
                kernel_outputs.add(n.output[0])
        kernel_order, first = _kernel_layers(nodes, units, x, self.style.get("first_through"))
        first_conv = next((n.name for n in nodes if n.name in kernel_order and units[n.name].kind == "conv"), None)
        consumers = {}
        for n in nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        # an Add is a residual sum when two operands vary with x; one computed from x's shape alone (Swin's
        # shifted-window mask in a TorchScript export) is a bias, as it is where the exporter folded it
        varying = {x} | {o for n in nodes for o in n.output}
        chosen: dict[str, object] = {}
        normed: list = []  # the products of a norm written out: x / norm(x), x * rsqrt(mean(x^2))
        centring: set = set()  # names of the centrings a - mean(a) and the norms fed their input's statistics
        kinds: dict[str, str] = {}  # node name -> its kind, for the [nodes] table (lrp/named.py)
        written: set = set()  # names of the activations written out, x * h(x)
        scalings: list = []  # (node, its entry) of each Mul and Div by a constant
        quantized: dict = {}  # codes -> the name of the quantizer that wrote them
        for n in nodes:
            follow_codes(n, quantized)  # the same codes (a QOperator Flatten's)
            if n.op_type in INTEGER_LAYERS:
                raise UnsupportedModelError(
                    f"{n.op_type} node '{n.name}': an integer layer whose float weights and scores the graph does not "
                    "write, and the LRP rules need them; onnxattr writes one as a float layer where it reads codes "
                    "of a DynamicQuantizeLinear and a constant weight, and its output goes through a Cast to a Mul by "
                    "the two scales, as onnxruntime's quantize_dynamic writes it (dequantize.py). Explain it with a "
                    "gradient method (gradient, integrated_gradients, smoothgrad, ...), or quantize in QDQ format")
            unit = units.get(n.name)
            if unit is not None:
                if n is not unit.node:
                    chosen[n.name] = ("pass", f"fused into {unit.node.name}")
                    continue
                kinds[n.name] = "layer"
                key = self._selector(unit, kernel_order, first, first_conv, consumers)
                rule = self.selectors.get(key) if key else None
                if rule is None:
                    rule = "gradient"
                chosen[n.name] = (rule, key or "-")
            elif n.op_type in ADDS and is_cell_sum(n.name):
                chosen[n.name] = ("cell_sum", "a recurrent cell's sum c_t: a layer of identity weights")
            elif n.op_type in ADDS and sum(1 for i in n.input if i in varying) >= 2:
                chosen[n.name] = (self.add, "add")
                kinds[n.name] = "add"
            elif n.op_type in ELEMENTWISE:
                chosen[n.name] = self._activation_rule(n, kernel_outputs)
                kinds[n.name] = "activation"
            elif n.op_type in QUANTIZERS:
                chosen[n.name] = self._activation_rule(n, kernel_outputs)
                quantized[n.output[0]] = n.name
                kinds[n.name] = "activation"
            elif n.op_type == "DequantizeLinear":  # as its codes' quantizer; codes of a constant: none vary
                rule = chosen.get(quantized.get(n.input[0]), ("pass", ""))[0]
                chosen[n.name] = (rule, "dequantization: as its quantizer")
                kinds[n.name] = "activation"
            elif n.op_type == "BatchNormalization" and any(i in varying for i in n.input[1:5]):
                chosen[n.name] = ("gradient", "normalizes by its input's own statistics: a norm, no layer")
                normed.append(n)
                centring.add(n.name)
                for m in statistics_parts(producer, varying, x, n):
                    chosen[m.name] = ("gradient", f"computes the statistics of the norm {n.name}")
            elif n.op_type == "Mul" and is_signal_gate(n.name) and n.input[0] in varying:
                chosen[n.name] = (PASS_TO[0], "a recurrent cell's signal * gate: the signal takes all (Arras et al.)")
                kinds[n.name] = "product"
            elif n.op_type in ("Sub", "Mul", "Div") and sum(1 for i in n.input if i in varying) >= 2:
                chosen[n.name], inside, what = self._product_rule(n, producer, varying, x, kernel_outputs, b.shape)
                kinds[n.name] = "product"
                if what == "activation":
                    written.add(n.name)
                for m in inside:  # a norm (or an activation differentiated) written out: its ops take their gradient
                    chosen[m.name] = ("gradient", f"part of the activation written out {n.name}: its derivative"
                                      if what == "activation" else f"computes the norm that {n.name} holds: a norm "
                                      "written out")
                if what == "norm":
                    normed.append(n)
            elif n.op_type == "Div" and n.input[1] in varying:  # c / x, no scaling of x: Reciprocal's gradient
                chosen[n.name] = ("gradient", "c / x: its gradient, as Reciprocal's")
                kinds[n.name] = "elementwise"
            elif n.op_type in ("Mul", "Div"):
                chosen[n.name] = ("gradient", "a scaling by a constant: its gradient (scales = gradient)") \
                    if self.scales == "gradient" else ("pass", "elementwise")
                kinds[n.name] = "elementwise"
                scalings.append((n, chosen[n.name]))
            elif n.op_type in ADDS + ("Sub",):
                chosen[n.name] = ("pass", "elementwise")
                kinds[n.name] = "elementwise"
            elif n.op_type in LINEAR_OPS:
                chosen[n.name] = ("gradient", "not a layer: a product of two tensors that vary with the "
                                  "input, or a form the rules do not cover")
            elif n.op_type == "Einsum" and len(n.input) == 2:  # both operands vary (x and W ones are units)
                chosen[n.name] = ("gradient", "not a layer: a product of two tensors that vary with the input")
            elif n.op_type == "Einsum":  # its gradient would carry relevance without any rule: refused
                raise UnsupportedModelError(
                    f"Einsum node '{n.name}': the LRP rules cover an Einsum of two operands (x and a weight: a "
                    f"layer; two activations: their gradient), not of {len(n.input)}; export it as MatMul/Gemm, "
                    "or use attn_lrp, cp_lrp or a gradient method, which differentiate it")
        for n in normed:  # its scale gamma is part of the norm, as in the LayerNormalization op
            scale = _norm_scale(n, consumers, varying)
            if scale is not None:
                chosen[scale.name] = ("gradient", f"the scale of the norm that {n.name} applies")
        for n in nodes:  # a - mean(a): a centring, whose mean is part of it, not a pool of a's values
            parts = centring_parts(producer, varying, n)
            if parts is not None:
                chosen[n.name] = ("gradient", "subtracts a mean: a centring (a norm written out)")
                centring.add(n.name)
                for m in parts:
                    chosen[m.name] = ("gradient", f"part of the centring {n.name}")
        _scalings_follow_activations(scalings, written, chosen, producer, consumers)
        self.unmatched, self.untaken, self.shadowed = pick(self.nodes, nodes, kinds, chosen)
        for name, (rule, _) in chosen.items():
            if rule == "pass" and name in units and units[name].node.name == name:
                _check_pass(b, units[name])
        self.assignment = {k: (_describe(v[0]), v[1]) for k, v in chosen.items()}
        self.products = tuple(n for n in nodes if n.op_type in ("Mul", "Div") and chosen.get(n.name, (None, ""))[1]
                              == PRODUCT_GRADIENT)
        self.centrings = tuple(n for n in nodes if n.name in centring and chosen[n.name][0] == "gradient")
        relu_of = {n.input[0]: n.output[0] for n in nodes if n.op_type == "Relu"}

        def rule_for(node):
            entry = chosen.get(node.name)
            rule = entry[0] if entry is not None else "gradient"
            if rule == "gradient":
                return zero_preserving if node.op_type in ZERO_PRESERVING else None
            if rule == "pass":
                return pass_on
            if rule in PASS_TO:
                return pass_to(PASS_TO.index(rule))
            if rule == "z" and node.op_type in ADDS:
                return add_split(self.style, relu_of)
            if isinstance(rule, R.Rule) and kinds.get(node.name) == "add":  # a [nodes] z or epsilon on a residual
                return add_split({**self.style, "stabilizer": rule.stabilizer, "epsilon": rule.epsilon}, relu_of)
            if rule == "cell_sum":
                return add_split(self._cell_sum_style(), relu_of)
            unit = units[node.name]
            return unit_step(unit, rule, relu_of)

        return rule_for

    def _cell_sum_style(self) -> dict:
        """An LSTM cell's sum c_t = c_{t-1} f + g i is a layer of identity weights (Arras et al. 2017): its split
        R_k = a_k R / stab(c_t) takes the dense layers' stabilizer where they have the epsilon rule
        (c_t + epsilon sign(c_t)), else the style's, as a sum of activations."""
        dense = self.selectors.get("dense", self.selectors.get("default"))
        if isinstance(dense, R.Rule) and dense.stabilizer == "signed":
            return {**self.style, "stabilizer": "signed", "epsilon": dense.epsilon}
        return self.style

    def _activation_rule(self, node, kernel_outputs: set):
        """An activation right after a kernel layer belongs to it (Keras' Dense(activation=...)): its
        relevance passes. Others pass too, or, with activation = "gradient", mask dead units. The style's
        gradient_activations (iNNvestigate: LeakyRelu, PRelu) always take the gradient."""
        if node.op_type in self.style.get("gradient_activations", ()):
            return ("gradient", "activation layer")
        if self.activation == "pass":
            return ("pass", "activation")
        if node.input[0] in kernel_outputs:
            return ("pass", "activation of a kernel layer")
        return ("gradient", "activation")

    def _product_rule(self, node, producer: dict, varying: set, x: str, kernel_outputs: set, shape):
        """(rule entry, nodes inside, what: "activation", "norm" or None) of a Mul, Div or Sub of two activations.
        x * h(x) (or x / h(x)) with h element-wise from x alone is an activation written out (SiLU, GELU, Mish as
        torch exports them): the activation rule, relevance passing to x. Any other takes its gradient, as Zennit
        and iNNvestigate give an op without a rule, whichever operand comes first (a squeeze-excitation's gate * x);
        where h is a norm of x (a LayerNorm, RMSNorm or L2 norm written out) so do the nodes that compute h, which
        then gives the norm op's map. With gates = "hold" a Mul by a gate broadcast over the other operand
        (``shape``: tensor name -> shape) passes to that operand."""
        if node.op_type == "Mul" and node.input[0] == node.input[1]:  # a square, as Pow(x, 2) is: no activation
            return ("gradient", "a square x * x: its gradient, as Pow's"), [], None
        found = gate_branch(producer, varying, x, node, norms=False)
        if found is not None:
            keep, held = found[0], node.input[1 - found[0]]
            # the activation of a kernel layer passes, also where a constant first scales that layer's output
            if self.activation == "pass" or scaled_from(producer, varying, node.input[keep]) in kernel_outputs:
                return (PASS_TO[keep], f"activation written out: {held} is computed from {node.input[keep]} "
                        "alone"), [], "activation"
            return ("gradient", f"activation written out ({held} is computed from {node.input[keep]} alone)"), \
                found[1], "activation"
        found = gate_branch(producer, varying, x, node, norms=True)
        if found is not None:
            return ("gradient", f"a norm written out: {node.input[1 - found[0]]} is a norm of "
                    f"{node.input[found[0]]}"), found[1], "norm"
        signal = broadcast_gate(shape, node) if self.gates == "hold" else None
        if signal is not None:
            return (PASS_TO[signal], f"a gate broadcast over operand {signal}: held (gates = hold)"), [], None
        return ("gradient", PRODUCT_GRADIENT), [], None

    def _selector(self, unit: Unit, order, first, first_conv, consumers):
        if unit.kind == "pool":
            return "pool"
        if "first" in self.selectors and unit.node.name in first:
            return "first"
        if "first_conv" in self.selectors and unit.node.name == first_conv:
            return "first_conv"
        if "until" in self.selectors and self.until_index is not None \
                and order.get(unit.node.name, 10**9) <= self.until_index:
            return "until"
        users = consumers.get(unit.out, [])
        if "relu_layer" in self.selectors and users and all(u.op_type == "Relu" for u in users):
            return "relu_layer"
        if unit.kind in self.selectors:
            return unit.kind
        return "default" if "default" in self.selectors else None


def _describe(rule) -> str:
    if isinstance(rule, str):
        return rule
    extra = []
    if rule.name == "epsilon":
        extra.append(f"epsilon={rule.epsilon:g}")
    if rule.name == "zbox":
        extra.append(f"low={rule.low}, high={rule.high}")
    if rule.name == "gamma":
        extra.append(f"gamma={rule.gamma:g}")
    return rule.name + (f"({', '.join(extra)})" if extra else "")


def _pads_from_input(units, producer: dict, x) -> None:
    """unit.pads: the Pad nodes between the explained input x and a unit's input when x reaches it through Pads alone
    (a Keras 'same' convolution or torch's ZeroPad2d exported as Pad + Conv), so that z-box bounds given as arrays of
    x's shape are padded the same way (rules._bounds_of_the_input): a padded entry is the pad value, its bounds too."""
    for unit in units.values():
        chain, t = [], unit.x
        while t != x and t in producer and producer[t].op_type == "Pad":
            chain.insert(0, producer[t])
            t = producer[t].input[0]
        if t == x and chain:
            unit.pads = chain


def _kernel_layers(nodes, units, x, through=None):
    """Index of each kernel layer (Conv/Gemm/MatMul; not pools, not a standalone BatchNorm, which neither
    library counts as a kernel layer) in graph order, and the set of first kernel layers from the input:
    those reached from x through ops in ``through`` only (None: through any op but a kernel layer)."""
    order, idx = {}, 0
    pre = {x}  # tensors reached from x without crossing a kernel layer
    first = set()
    for n in nodes:
        unit = units.get(n.name)
        is_kernel = unit is not None and n is unit.node and unit.kind in ("conv", "dense")
        if is_kernel:
            order[n.name] = idx
            idx += 1
            if unit.x in pre:
                first.add(n.name)
            continue
        if any(i in pre for i in n.input) and (through is None or n.op_type in through):
            pre.update(n.output)
    return order, first


def _scalings_follow_activations(scalings, written: set, chosen: dict, producer: dict, consumers: dict) -> None:
    """A Mul or Div by a constant (``scalings``: (node, the entry it got as a scaling)) next to an activation written
    out x * h(x) (named in ``written``) is part of it (GELU's 0.5 * (x * (1 + erf(x / sqrt 2))), or
    (0.5 x) * (1 + tanh(...))): it passes where the activation passes and takes its gradient where the activation
    does (activation = gradient), which then is the op form's derivative. One that a norm written out took as its
    own (its gamma) stays the norm's."""
    for n, entry in scalings:
        if chosen[n.name] is not entry:
            continue
        near = [producer.get(i) for i in n.input] + consumers.get(n.output[0], [])
        activation = next((m for m in near if m is not None and m.name in written), None)
        if activation is not None:
            chosen[n.name] = ("pass" if chosen[activation.name][0] in PASS_TO else "gradient",
                              "a scaling next to an activation written out: as the activation")


def _norm_scale(node, consumers: dict, varying: set):
    """The Mul by a constant (gamma) that the normalized output of ``node`` goes to, through Casts and reshapes,
    as its only reader (x / std(x) * gamma, RMSNorm's gamma * x * rsqrt(...), tf2onnx's BatchNormalization of a
    reshaped x with its own statistics, then gamma), else None."""
    t = node.output[0]
    while True:
        readers = consumers.get(t, [])
        if len(readers) != 1:
            return None
        reader = readers[0]
        if reader.op_type == "Cast" or reader.op_type in LAYOUT_OPS:
            t = reader.output[0]
            continue
        others = [i for i in reader.input if i != t]
        return reader if reader.op_type == "Mul" and len(others) == 1 and others[0] not in varying else None


def _check_pass(b, unit: Unit):
    """pass hands relevance on unchanged: a UsageError unless the layer keeps the shape, as a BatchNorm
    always does and any other layer must be shown to (every dim equal, symbolic ones by name)."""
    if unit.kind == "norm":
        return
    xs, zs = b.shape(unit.x), b.shape(unit.out)
    same = xs is not None and zs is not None and len(xs) == len(zs) and all(
        p == q and p is not None for p, q in zip(xs, zs))
    if not same:
        shapes = "of unknown shape" if xs is None or zs is None else f"{xs} and {zs}"
        raise UsageError(f"rule pass on {unit.node.op_type} '{unit.node.name}': its input and output, {shapes}, "
                         "are not known to have one shape, and pass hands relevance on unchanged (it suits layers "
                         "that keep the shape, such as a BatchNorm)")
