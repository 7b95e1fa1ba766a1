"""A rule file's [nodes] table: rules picked by node name (Zennit's NameMapComposite picks them by module name).

A pattern is a node's name, or a glob (fnmatch's * ? [..]) over names; for each node the first pattern in
file order that matches it and whose rule the node takes wins over the rule its kind would get. What a node
takes depends on its kind:

- ``layer`` (a kernel layer, a standalone BatchNorm, an average pool): any layer rule, ``pass`` or ``gradient``;
- ``activation`` (an element-wise activation) and ``elementwise`` (an Add, Sub, Mul or Div with one operand that
  varies with the input: a bias, an input scaling, a LayerScale): ``pass`` (relevance unchanged) or
  ``gradient`` (relevance times the op's derivative, as Zennit gives an op without a rule);
- ``add`` (an Add, Sum or Mean of activations, a residual): ``z`` or ``epsilon`` (split in proportion to the
  operands, stabilized by the rule's epsilon), ``gradient`` (copied to every operand) or ``pass`` with an
  ``operand`` (all to that one);
- ``product`` (a Mul, Div or Sub of two activations: a squeeze-excitation's gate times its input): ``gradient``
  or ``pass`` with an ``operand`` (all to that one, the other held as a constant, as an LSTM's gate is).

Nodes fused into a layer (its bias Add, its BatchNorm) and data movement (MaxPool, Reshape, Concat) take none.
"""

from __future__ import annotations

import fnmatch

from onnxattr.lrp import rules as R

PASS_TO = ("pass to operand 0", "pass to operand 1")  # all relevance to one operand, the other held
ADD_RULES = ("z", "epsilon")  # the layer rules an Add of activations takes: the z rule of identity weights


def names(pattern: str, name: str) -> bool:
    """A pattern names a node: equal to its name (which may hold glob characters), or matching it."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def takes(kind: str, rule, node) -> bool:
    """Whether a node of ``kind`` (above) takes ``rule`` (a Rule, 'pass', 'gradient' or one of PASS_TO)."""
    if rule == "gradient":
        return kind is not None
    if kind == "layer":
        return isinstance(rule, R.Rule) or rule == "pass"
    if kind in ("activation", "elementwise"):
        return rule == "pass"
    if rule in PASS_TO:
        return kind in ("add", "product") and PASS_TO.index(rule) < len(node.input)
    return kind == "add" and isinstance(rule, R.Rule) and rule.name in ADD_RULES


def pick(patterns, nodes, kinds: dict, chosen: dict):
    """Give each node of ``nodes`` the rule of the first (pattern, rule) in ``patterns`` that names it and whose
    rule it takes, in ``chosen`` (name -> (rule, why)). Returns the patterns that name no node, those that name
    nodes but none that takes their rule, and those whose every taker went to an earlier pattern."""
    named, taken, used = set(), set(), set()
    for n in nodes:
        kind = kinds.get(n.name)
        first = None
        for pattern, rule in patterns:
            if not names(pattern, n.name):
                continue
            named.add(pattern)
            if takes(kind, rule, n):
                taken.add(pattern)
                if first is None:
                    first = pattern
                    chosen[n.name] = (rule, f"node '{pattern}'")
        if first is not None:
            used.add(first)
    order = [p for p, _ in patterns]
    return (tuple(p for p in order if p not in named), tuple(p for p in order if p in named and p not in taken),
            tuple(p for p in order if p in taken and p not in used))
