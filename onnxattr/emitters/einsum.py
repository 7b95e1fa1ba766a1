"""Einsum: y = einsum("a,b,...->o", A, B, ...) is linear in each operand, so the VJP of operand k is
another Einsum of g with the other operands into operand k's subscripts:
    dA = einsum("o,b,...->a", g, B, ...)
A letter of a that appears in no other operand and not in o was summed over A alone ("ij->i"): the
Einsum gives dA without it, and g's value is the same along it, so it is inserted (Unsqueeze) and
expanded to A's shape. Ellipses become explicit letters (onnx requires every operand's to cover as many
dims); an ellipsis dim where A has 1 against a larger one was broadcast and is summed back
(broadcast.unbroadcast). A letter repeated within one operand (a diagonal or trace, "ii->i") is written with a
new letter per repeat and an identity operand joining the two ("ij,ij->i" with I), which is the same sum, and
differentiated as such. A letter repeated in the output, or one of size 1 in one operand and larger in another
where the gradient would need it summed back, is refused by name when the shapes say so; where only run time can
tell (dims of other symbolic names), the gradient is summed back over the dims that differ then.
"""

from __future__ import annotations

import string

import numpy as np

from onnxattr.emitters.broadcast import unbroadcast
from onnxattr.emitters.registry import register
from onnxattr.errors import UnsupportedModelError


def parse_equation(node, ranks: list[int | None], repeats: bool = False) -> tuple[list[str], str, str]:
    """(input subscripts, output subscripts, the ellipsis letters) of an Einsum node with every ellipsis
    written out as letters; ``repeats`` lets an input repeat a letter."""
    eq = next((a.s.decode() for a in node.attribute if a.name == "equation"), "").replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")

    def refuse(why):
        raise UnsupportedModelError(f"Einsum node '{node.name}' ({eq}): {why}")

    if len(terms) != len(ranks):
        refuse(f"the equation has {len(terms)} operands, the node {len(ranks)}")
    width = 0  # onnx's shape inference requires every ellipsis to cover the same number of dims
    for term, rank in zip(terms, ranks):
        if "..." in term:
            if rank is None:
                refuse("an ellipsis needs the operand's rank")
            width = rank - len(term.replace("...", ""))
    fill = "".join([c for c in string.ascii_letters if c not in eq][:width])
    terms = [t.replace("...", fill) for t in terms]
    if not arrow:  # implicit output: the ellipsis dims, then the letters used once, in alphabetical order
        joined = "".join(terms)
        out = fill + "".join(sorted(c for c in set(joined) if joined.count(c) == 1 and c not in fill))
    else:
        out = out.replace("...", fill)
    for term in ([] if repeats else terms) + [out]:
        if len(set(term)) != len(term):
            refuse(f"the subscripts '{term}' repeat a letter (a diagonal or trace), which is not supported")
    return terms, out, fill


def _unit_free(shape, term: str, fill: str) -> bool:
    """The operand's ellipsis dims are known and none is 1 (so none was broadcast)."""
    return shape is not None and all(isinstance(d, int) and d != 1 for d, c in zip(shape, term) if c in fill)


def _distinct_letters(b, node, inputs: list[str], terms: list[str], eq: str) -> tuple[list[str], list[str]]:
    """(operands, subscripts) of the same sum with no letter repeated within an operand: each repeat of c gets a
    new letter c', and an identity operand "cc'" of that dim's size is appended (an EyeLike where the size is
    known at run time only)."""
    spare = iter([c for c in string.ascii_letters if c not in eq])
    written_terms, identities = [], []
    for x, term in zip(inputs, terms):
        written = ""
        for axis, c in enumerate(term):
            if c not in written:
                written += c
                continue
            new = next(spare, None)
            if new is None:
                raise UnsupportedModelError(f"Einsum node '{node.name}' ({eq}): too many repeated letters")
            written += new
            size = (b.shape(x) or [None] * len(term))[axis]
            if isinstance(size, int):
                eye = b.const(np.eye(size), b.float_dtype(x), "einsum_identity")
            else:
                eye = b.identity(b.op("Gather", [b.op("Shape", [x]), b.ints([axis])]), x)
            identities.append((eye, c + new))
        written_terms.append(written)
    return list(inputs) + [e for e, _ in identities], written_terms + [t for _, t in identities]


def _refuse_broadcast_letters(b, node, inputs, terms, out: str, fill: str, need):
    """A letter (not an ellipsis dim) of size 1 in one operand and larger in another is broadcast, which
    onnxruntime runs. The VJP above gets it right only for the other operands' gradients and while the letter
    is in the output; an operand that needs its gradient and has the 1, or a broadcast letter summed out, is
    refused where the shapes say so."""
    sizes: dict = {}
    for x, term in zip(inputs, terms):
        for c, d in zip(term, b.shape(x) or []):
            if c not in fill and isinstance(d, int):
                sizes.setdefault(c, set()).add(d)
    ones = {c for x, term, n in zip(inputs, terms, need) if n
            for c, d in zip(term, b.shape(x) or []) if d == 1}
    broadcast = sorted(c for c, ds in sizes.items() if 1 in ds and len(ds) > 1 and (c in ones or c not in out))
    if broadcast:
        raise UnsupportedModelError(
            f"Einsum node '{node.name}': letter {', '.join(broadcast)} has size 1 in one operand and more in "
            "another (broadcast), which is not supported; expand the operand first or use an ellipsis")


def _may_broadcast(b, node, inputs, terms: list[str], out: str, k: int, fill: str) -> bool:
    """Operand k may hold a letter of size 1 that is larger elsewhere only at run time: one of its dims that
    is not a known size other than 1 sits under a letter whose dims in the other operands and the output are
    not all that same dim (the same symbolic name, or 1)."""
    mine = b.shape(inputs[k])
    if mine is None:
        return True
    places = [(b.shape(i), t) for j, (i, t) in enumerate(zip(inputs, terms)) if j != k]
    places.append((b.shape(node.output[0]), out))
    for c, d in zip(terms[k], mine):
        if c in fill or (isinstance(d, int) and d != 1):
            continue
        for shape, term in places:
            if c in term and (shape is None or shape[term.index(c)] != d):
                return True
    return False


@register("Einsum")
def einsum_vjp(b, node, grads, need):
    g = grads[0]
    terms, out, fill = parse_equation(node, [b.rank(i) for i in node.input], repeats=True)
    inputs = list(node.input)
    if any(len(set(t)) != len(t) for t in terms):
        inputs, terms = _distinct_letters(b, node, inputs, terms, ",".join(terms) + "->" + out)
    _refuse_broadcast_letters(b, node, inputs, terms, out, fill, need)
    results = []
    for k, (x, term) in enumerate(zip(node.input, terms)):
        if not need[k]:
            results.append(None)
            continue
        others = [(inputs[j], terms[j]) for j in range(len(terms)) if j != k]
        known = set(out).union(*(t for _, t in others))
        kept = "".join(c for c in term if c in known)
        eq = ",".join([out] + [t for _, t in others]) + "->" + kept
        dx = b.op("Einsum", [g] + [name for name, _ in others], equation=eq)
        missing = [i for i, c in enumerate(term) if c not in known]
        if missing:
            dx = b.op("Expand", [b.op("Unsqueeze", [dx, b.ints(missing)]), b.shape_of(x)])
        if _may_broadcast(b, node, inputs, terms, out, k, fill):
            dx = unbroadcast(b, dx, x, runtime=True)  # a letter of size 1 here, only known at run time
        elif any(c in fill for c in term) and not _unit_free(b.shape(x), term, fill):
            dx = unbroadcast(b, dx, x)  # an ellipsis dim of 1 broadcast against the others
        results.append(dx)
    return results
