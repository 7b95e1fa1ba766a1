"""The layers that get a pattern: the linear units (onnxattr.lrp.units) with a kernel on the explained
path — Conv, Gemm, MatMul with a constant 2-D weight — with BatchNorm / bias followers fused in, so a
pattern belongs to the fused weight W' and the pre-activation after the followers.

Patterns are learned as [K, D] (row k: output unit k, D its input or flattened patch) and stored in the
layout of the unit's weight, so that ``Unit.vjp(b, g, pattern)`` back-projects with them.
"""

from __future__ import annotations

import hashlib

import numpy as np

from onnxattr.compiler import check_supported, path_nodes
from onnxattr.emitters.conv import conv_attrs, window_geometry
from onnxattr.errors import UnsupportedModelError
from onnxattr.lrp.units import find_units
from onnxattr.pattern.stats import ConvGeometry


def pattern_layers(b, nodes, x: str, y: str) -> dict:
    """node name -> Unit for every kernel layer on the path from x to y, in graph order."""
    on_path, live = path_nodes(nodes, x, y, b)
    check_supported(on_path)  # fail before the data is read, as compile would after it
    units = find_units(b, on_path, {n.name for n in on_path}, {y}, x)
    layers, refused = {}, []
    for n in on_path:
        unit = units.get(n.name)
        # a MatMul is a kernel layer when the LRP units take it for one (a weight, constant or fed) or it has
        # a constant operand (a batched weight the units leave alone: refused below, not given the gradient)
        kernel = n.op_type in ("Conv", "ConvTranspose", "Gemm") or (n.op_type in ("MatMul", "Einsum") and (
            unit is not None or any(b.value(i) is not None for i in n.input)))
        if not kernel or (unit is not None and unit.node is not n):
            continue
        if unit is not None and unit.left:
            refused.append(f"{n.op_type} '{n.name}' (weight on the left, W x)")
            continue
        w = b.value(unit.w) if unit is not None and unit.w else None
        ok = (unit is not None and n.op_type not in ("ConvTranspose", "Einsum") and w is not None
              and (n.op_type == "Conv" or w.ndim == 2))
        if ok:
            layers[n.name] = unit
        else:
            varying = [what for i, what in ((1, "weight"), (2, "bias")) if len(n.input) > i and n.input[i] in live]
            why = f" (its {' and '.join(varying)} varies with the input)" if unit is None and varying else ""
            refused.append(f"{n.op_type} '{n.name}'{why}")
    if refused:
        raise UnsupportedModelError(
            "pattern methods learn a pattern for Conv, Gemm and MatMul layers x W with a constant weight "
            "(2-D for Gemm/MatMul, no transA); these layers have none: " + ", ".join(refused[:10]))
    return layers


def weight(b, unit) -> np.ndarray:
    return b.value(unit.w)


def to_kd(unit, w: np.ndarray) -> np.ndarray:
    """Weight (or pattern) in the unit's layout -> [K, D]."""
    n = unit.node
    if n.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    if n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute):
        return w
    return w.T


def from_kd(unit, a: np.ndarray, like: np.ndarray) -> np.ndarray:
    """[K, D] -> the layout (and dtype) of the unit's weight ``like``."""
    n = unit.node
    if n.op_type == "Conv":
        out = a.reshape(like.shape)
    elif n.op_type == "Gemm" and any(a_.name == "transB" and a_.i for a_ in n.attribute):
        out = a
    else:
        out = a.T
    return np.ascontiguousarray(out).astype(like.dtype)


def conv_geometry(b, unit) -> ConvGeometry | None:
    """The im2col geometry of a Conv unit (None for dense layers)."""
    n = unit.node
    if n.op_type != "Conv":
        return None
    w = weight(b, unit)
    at = conv_attrs(n)
    kernel = at.get("kernel_shape") or list(w.shape[2:])
    strides, dil, begin = window_geometry(b, n, unit.x, kernel)
    return ConvGeometry(kernel, strides, dil, begin, at["group"])


def model_digest(nodes, b) -> str:
    """sha256 of the canonical graph: every node (op, domain, name, inputs, outputs, attributes) and
    the value of every constant the nodes read. Patterns carry it; compiling checks it."""
    h = hashlib.sha256()
    read = set()
    for n in nodes:
        h.update(repr((n.op_type, n.domain, n.name, list(n.input), list(n.output))).encode())
        for a in n.attribute:
            h.update(a.SerializeToString(deterministic=True))
        read.update(n.input)
    for name in sorted(read):
        v = b.value(name)
        if v is not None:
            h.update(repr((name, v.dtype.str, v.shape)).encode())
            h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()
