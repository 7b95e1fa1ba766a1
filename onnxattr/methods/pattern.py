"""PatternNet and PatternAttribution (Kindermans et al. 2018), as iNNvestigate 1.x computed them.

Both are the backward pass of the selected output with, at every kernel layer (Conv, Gemm, MatMul with
a constant weight), the learned pattern A in place of the weight W; everything else — ReLU (the forward
mask), MaxPool, reshapes — takes its gradient:

    pattern.net:          R_in = VJP_A(R_out)        the signal, s = a·y for a linear model
    pattern.attribution:  R_in = VJP_{W⊙A}(R_out)    r = (w ⊙ a)·y for a linear model

The seed is the selected output's value (y, as in the paper and iNNvestigate 1.x, whose head mapping is
the identity). iNNvestigate 1.x also divides every bottleneck tensor of the reverse pass by its largest
|value| per sample; that changes each map by a positive factor per sample only and is not done here.
Patterns come from ``Analyzer.fit`` / ``onnxattr fit`` (onnxattr.pattern) and are baked in as
initializers; BatchNorm and bias followers are fused into their layer, so they pass R through.
"""

from __future__ import annotations

from onnxattr.compiler import reverse_pass
from onnxattr.errors import PatternError, warn
from onnxattr.methods.base import Method, Param, Target, as_carried, one_of, register_method
from onnxattr.pattern.layers import model_digest, pattern_layers, weight
from onnxattr.pattern.stats import PATTERN_TYPES
from onnxattr.pattern.store import DegeneratePatternWarning, Patterns, all_zero, load_patterns
from onnxattr.select import build_seed


def _parse_patterns(value):
    return load_patterns(value)


def _check_patterns(value):
    return None if value is None or isinstance(value, Patterns) else "must be a pattern file or Patterns"


def _pass(b, node, grads, need):
    """A fused follower (bias Add, BatchNorm): R goes unchanged to its operand on the path."""
    out = [None] * len(need)
    out[need.index(True)] = grads[0]
    return out


def _layer_step(unit, w):
    def step(b, node, grads, need):
        out = [None] * len(node.input)
        out[0] = unit.vjp(b, grads[0], w)
        return out

    return step


def _builder(attribution: bool):
    label = "pattern ⊙ weight" if attribution else "pattern"
    method = "pattern.attribution" if attribution else "pattern.net"

    def build(t: Target, p: dict) -> str:
        patterns = p["patterns"]
        if patterns is None:
            raise PatternError(
                f"{method} needs patterns learned from data: run `onnxattr fit MODEL --method {method} "
                f"--data X.npy -o patterns.npz` (or Analyzer.fit(data)) first, then pass --patterns "
                "patterns.npz")
        b = t.b
        patterns.check(model_digest(t.nodes, b), p["pattern_type"])
        layers = pattern_layers(b, t.nodes, t.x, t.y)
        steps, zero = {}, []
        for name, unit in layers.items():
            w = weight(b, unit)
            a = patterns.arrays.get(name)
            if a is None or a.shape != w.shape:
                raise PatternError(f"the patterns have no {'entry' if a is None else 'matching shape'} "
                                   f"for layer '{name}' {list(w.shape)}: fit them on this model and output")
            if not a.any():
                zero.append(name)
            used = (a * w if attribution else a).astype(w.dtype)
            steps[name] = _layer_step(unit, b.const(used, w.dtype, "pattern"))
            t.assignment[name] = (label, unit.kind)
            for f in unit.followers:
                steps[f.name] = _pass
                t.assignment[f.name] = ("pass", f"fused into {name}")
        if zero:
            warn(f"{all_zero(zero, len(layers))}: no signal passes through them, so {method} maps are zero "
                 "there; fit the patterns on more, and more varied, data", DegeneratePatternWarning)
        seed = build_seed(b, t.y, t.neuron, "logit", t.index)
        r = reverse_pass(b, t.nodes, t.x, t.y, seed, lambda node: steps.get(node.name))
        return r if r is not None else b.zeros_like(t.x)

    return build


PARAMS = (
    Param("pattern_type", "relu", "estimator fit learns: 'relu' (A+- of the paper, iNNvestigate's default) "
          "or 'linear'", str, one_of(*PATTERN_TYPES)),
    Param("patterns", None, "patterns from `onnxattr fit` / Analyzer.fit (a .npz path or Patterns)",
          _parse_patterns, _check_patterns),
)

for _m in (
    Method("pattern.net", "PatternNet: backward with learned patterns in place of weights (needs fit).",
           _builder(False), PARAMS, family="pattern", at_layer=as_carried, conditional=True),
    Method("pattern.attribution", "PatternAttribution: backward with weights ⊙ patterns (needs fit).",
           _builder(True), PARAMS, family="pattern", at_layer=as_carried, conditional=True),
):
    register_method(_m)
