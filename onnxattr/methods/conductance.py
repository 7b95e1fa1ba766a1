"""Conductance (Dhamdhere et al. 2018; Captum's LayerConductance): integrated gradients' path integral
split at a tensor h on the way from x to y.

With the n + 1 points a_0 < ... < a_n of ``integration``'s (n+1)-point rule (Captum's alphas; their
weights are not used) on the path x_k = ref + a_k (x - ref), and g_k the gradient of the selected output
at h in x_k:

    conductance(h) = sum_{k < n} g_k * (h(x_{k+1}) - h(x_k))

At the explained input (h = x) that is sum_k g_k (a_{k+1} - a_k) (x - ref), the map; ``keep=`` tensors get
their own. With riemann_trapezoid (a_k = k / n) the differences telescope, so at every tensor the sum over
its elements approaches y(x) - y(ref) as integrated gradients' does. One Loop over the n + 1 points (the
last one's gradient is not used, as in Captum) carries the previous point's gradient and value at each
tensor from trip to trip.

Neuron conductance (Captum's NeuronConductance) attributes one unit j of a tensor h to the input: integrated
gradients' sum with the gradient at each point taken through h_j alone,

    (x - ref) * sum_k w_k (dy/dh_j)(x_k) * (dh_j/dx)(x_k)

(points a_k and weights w_k of ``integration``'s steps-point rule, as integrated_gradients'): one reverse pass
from y to h, the gradient there masked to j, and one from h to x. Paths from x to y around h add nothing.
"""

from __future__ import annotations

import difflib

import numpy as np
from onnx import TensorProto

from onnxattr.compiler import path_nodes, reverse_pass
from onnxattr.errors import UsageError
from onnxattr.graph import names_read
from onnxattr.methods.base import (
    Method, Param, Target, as_carried, chunk_size, one_of, parse_int, positive_int, register_method,
)
from onnxattr.methods.gradient import (
    CHUNK, GAUSS_LEGENDRE_MAX, INTEGRATION, at_the_reference, build_integrated_gradients, ig_quadrature, path_points,
)
from onnxattr.methods.reference import REFERENCE_DATA, REFERENCE_INPUTS, path_reference
from onnxattr.sampling import Trip, batch_names, checked_tensor, first_size, sample_loop


def first_axes(t: Target, tensors) -> dict:
    """{tensor: 'batch', 'other' or 'unknown'}: whether its first axis is known to be the batch axis (declared
    under the name of x's, or of x's size in a model of static batch), known to be another (a sequence-first
    attention block's [S, N, E], S a declared name or a number), or not known when compiling (no shape, or a
    name shape inference made up, unk__3). A Loop stacks its points along x's batch axis."""
    b, x = t.b, t.x
    batch = batch_names(b, t.nodes, x)
    made = {o for node in t.nodes for o in node.output}
    declared = {d for i in names_read(t.nodes) - made | {x} for d in b.shape(i) or [] if isinstance(d, str)}
    x_first = (b.shape(x) or [None])[0]
    out = {}
    for h in tensors:
        d = (b.shape(h) or [None])[0]
        if d in batch or (t.static_batch and d == x_first):
            out[h] = "batch"
        else:
            out[h] = "other" if isinstance(d, int) or d in declared else "unknown"
    return out


def rows_checked(cb, value: str, rows: str) -> str:
    """``value`` passed on when its first axis has ``rows`` (int64 [1]) entries; else the run fails by name."""
    ok = cb.op("Reshape", [cb.op("Equal", [first_size(cb, value), rows]), cb.ints([])])
    return checked_tensor(cb, value, ok, "kept_rows")


def conductance_trip(cb, tensors: list[str], grad: str, trip: Trip, unsure=frozenset()):
    """For each tensor h: its gradient g and value v at this trip's points ([count*N, ...] each) become
    [count, N, ...]; each point k pairs with the one before it (the first with the previous trip's last,
    carried; zeros before the first trip), contributing g_{k-1} (v_k - v_{k-1}). A tensor in ``unsure`` (its first
    axis not known at compile time to be the batch axis) is checked at run time to hold the points there."""
    contributions, states = [], []
    for i, h in enumerate(tensors):
        value = trip.copies[h]
        g = grad if i == 0 else cb.kept.get(value)
        if i and h in unsure:  # its first axis holds count x N rows, the points stacked as x's are, or the run fails
            value = rows_checked(cb, value, cb.op("Mul", [trip.count, first_size(cb, h)]))
        if g is None:  # the selected output does not depend on h at any point
            g = cb.zeros_like(value)
        prev_g, prev_v = trip.carried[2 * i], trip.carried[2 * i + 1]
        stacked = cb.op("Concat", [trip.count, cb.op("Shape", [prev_g])], axis=0)
        gs, vs = (cb.op("Reshape", [t, stacked], allowzero=1) for t in (g, value))
        before = [cb.op("Concat", [cb.op("Unsqueeze", [prev, cb.ints([0])]),
                                   cb.op("Slice", [t, cb.ints([0]), cb.ints([-1]), cb.ints([0])])], axis=0)
                  for prev, t in ((prev_g, gs), (prev_v, vs))]
        contributions.append(cb.op("Mul", [before[0], cb.op("Sub", [vs, before[1]])]))
        cb.types[contributions[-1]] = cb.float_type(h)  # sample_loop casts it to its sum's type
        last = cb.ints([-1])
        states += [cb.op("Squeeze", [cb.op("Gather", [t, last], axis=0), cb.ints([0])]) for t in (gs, vs)]
    return contributions, states


def build_conductance(t: Target, p: dict) -> str:
    b, x, steps = t.b, t.x, p["steps"]
    if p["integration"] == "gausslegendre" and steps + 1 > GAUSS_LEGENDRE_MAX:
        raise UsageError(f"conductance: integration gausslegendre takes at most {GAUSS_LEGENDRE_MAX - 1} steps "
                         f"({GAUSS_LEGENDRE_MAX} points), got {steps}: use fewer steps or a riemann_* rule")
    alphas_k, _ = ig_quadrature(p["integration"], steps + 1)
    ref = path_reference(t, p)
    diff = b.op("Sub", [x, ref])
    dtype = b.float_dtype(x)
    on_path = path_nodes(t.nodes, x, t.y, b)[1]  # a kept name off it is refused by name after the build
    tensors = [x] + sorted(h for h in b.keep if h != x and h in on_path)
    # the chunk's points are stacked along x's batch axis, and read back from each tensor's first axis: a tensor
    # whose first axis is another (sequence-first attention blocks, [S, N, E]) takes one point per trip; one whose
    # first axis is unknown is checked at run time
    axes = first_axes(t, tensors[1:])
    chunk = 1 if "other" in axes.values() else chunk_size(t, p)
    unsure = frozenset(h for h, kind in axes.items() if kind == "unknown")

    def points(cb, x_, ks, count):
        alphas = cb.op("Gather", [cb.const(alphas_k.astype(dtype), dtype, "conductance_alphas"), ks])
        return path_points(cb, x_, alphas, ref, diff, count)

    def per_trip(cb, grad, pts, ks, trip):
        contributions, states = conductance_trip(cb, tensors, grad, trip, unsure)
        return (contributions if len(tensors) > 1 else contributions[0]), states

    totals = sample_loop(b, t.nodes, x, t.y, t.index, steps + 1, chunk, points,
                         per_sample=per_trip, sums=len(tensors), acc_like=tensors,
                         carry_like=tuple(h for h in tensors for _ in range(2)))
    totals = totals if isinstance(totals, list) else [totals]
    for h, total in zip(tensors, totals):  # x too: keep= may name the input, or a tensor passing it on
        b.kept[h] = total
    return totals[0]


def parse_index(s: str) -> tuple:
    return tuple(int(v) for v in s.strip("()[] ").split(",") if v.strip())


INDEX_LIMIT = 2 ** 62  # an int64 constant holds it


def as_index(v) -> tuple | None:
    """neuron_index as a tuple of Python ints (an int, or a sequence or 1-D array of them, numpy's included; () for a
    layer [N]), or None when it is not one."""
    is_int = lambda i: isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))  # noqa: E731
    if is_int(v):
        v = (v,)
    if isinstance(v, np.ndarray):
        v = tuple(v.tolist()) if v.ndim == 1 else None
    if not isinstance(v, (tuple, list)) or not all(is_int(i) for i in v):
        return None
    return tuple(int(i) for i in v)


def _index_check(v) -> str | None:
    index = as_index(v)
    if v is None or (index is not None and all(0 <= i < INDEX_LIMIT for i in index)):
        return None
    return "must be non-negative integers, one per axis of the layer after the batch axis (e.g. 3,0,1; () for [N])"


def _tensor_name(v) -> str | None:
    return None if v is None or isinstance(v, str) else "must be a tensor name"


def neuron_mask(b, layer: str, index: tuple) -> str:
    """1 at unit ``index`` of one sample of ``layer``, 0 elsewhere: [1, ...], from layer's shape at run time (a
    product of one-hot rows, one per axis). Where the layer's rank is unknown at compile time the run fails unless it
    has one axis per entry of ``index`` after the batch axis; where an axis's size is, unless the unit lies inside."""
    shape, rank, mask = b.op("Shape", [layer]), len(index) + 1, None
    known = b.shape(layer)
    if known is None:  # its rank: checked before any axis is read
        ok = b.op("Equal", [b.op("Size", [shape]), b.const(rank, "int64")])
        shape = checked_tensor(b, shape, ok, "neuron_index")
    for axis, i in enumerate(index, start=1):
        size = b.op("Reshape", [b.op("Slice", [shape, b.ints([axis]), b.ints([axis + 1])]), b.ints([])])
        units = b.op("Range", [b.const(0, "int64"), size, b.const(1, "int64")])
        hot = b.op("Cast", [b.op("Equal", [units, b.const(i, "int64")])], to=b.float_type(layer))
        hot = b.op("Reshape", [hot, b.ints([1] * axis + [-1] + [1] * (rank - 1 - axis))])
        mask = hot if mask is None else b.op("Mul", [mask, hot])
    if mask is None:  # a layer [N]: its one value per sample is the neuron
        return b.const(np.ones(1, b.float_dtype(layer)), b.float_dtype(layer), "neuron_mask")
    if known is None or not all(isinstance(d, int) for d in known[1:]):
        inside = b.op("Cast", [b.reduce("ReduceMax", mask, list(range(rank)), keepdims=0)], to=TensorProto.BOOL)
        mask = checked_tensor(b, mask, inside, "neuron_index")
    return mask


def build_neuron_conductance(t: Target, p: dict) -> str:
    b, x, y, layer, index = t.b, t.x, t.y, p["layer"], p["neuron_index"]
    if layer is None or index is None:
        raise UsageError("neuron_conductance needs layer=TENSOR (the tensor holding the neuron; `onnxattr inspect "
                         "MODEL --method gradient` lists them) and neuron_index=I,J,... (its index in one sample of "
                         "that tensor)")
    index = as_index(index)
    on_path = path_nodes(t.nodes, x, y, b)[1]
    if layer not in on_path:
        close = difflib.get_close_matches(layer, sorted(on_path), n=3)
        raise UsageError(f"neuron_conductance: layer '{layer}' is not a tensor between input '{x}' and output '{y}'"
                         + (f"; did you mean {', '.join(close)}?" if close else ""))
    shape = b.shape(layer)
    if shape is not None and len(shape) != len(index) + 1:
        raise UsageError(f"neuron_conductance: neuron_index {index} has {len(index)} entries and layer '{layer}' "
                         f"{len(shape) - 1} axes after its batch axis {shape}: give one index per axis")
    outside = [(i, d) for i, d in zip(index, (shape or [None])[1:]) if isinstance(d, int) and i >= d]
    if outside:
        raise UsageError(f"neuron_conductance: neuron_index {index} lies outside layer '{layer}' of shape {shape}")
    kind = first_axes(t, [layer])[layer]
    if kind == "other":
        raise UsageError(f"neuron_conductance: layer '{layer}' of shape {shape} does not have the batch axis first (a "
                         "sequence-first block?), so neuron_index cannot name a unit of one sample: choose a tensor "
                         "[N, ...]")
    mask = neuron_mask(b, layer, index)

    def through_the_neuron(cb, forward, points, y_copy, seed, copies):
        """dy/dh_j * dh_j/dx at the points: to h's copy, masked to the neuron, then on to the points."""
        at_layer = copies[layer]
        g = reverse_pass(cb, forward, at_layer, y_copy, seed)
        if g is None:
            return None
        if kind == "unknown":  # the points must lie along its first axis, as along x's, for the mask to fit
            g = rows_checked(cb, g, first_size(cb, points))
        return reverse_pass(cb, forward, points, at_layer, cb.op("Mul", [g, mask]))

    return build_integrated_gradients(t, p, backward=through_the_neuron)


register_method(Method(
    "neuron_conductance",
    "Neuron conductance (Captum's NeuronConductance): integrated gradients with each point's gradient taken "
    "through one unit of a hidden tensor only.",
    build_neuron_conductance,
    (Param("layer", None, "the tensor holding the neuron: an ONNX tensor name", str, _tensor_name, optional=True),
     Param("neuron_index", None, "the neuron's index in one sample of layer, one entry per axis after the batch axis "
           "(e.g. 5 for [N, F], 3,0,1 for [N, C, H, W])", parse_index, _index_check, optional=True),
     Param("steps", 50, "number of points on the path (Captum's n_steps)", parse_int, positive_int),
     REFERENCE_INPUTS, REFERENCE_DATA,
     Param("integration", "riemann_trapezoid", "points and weights on the path (Captum's method and its "
           "default for NeuronConductance)", str, one_of(*INTEGRATION)),
     CHUNK),
    non_finite=at_the_reference,
))


register_method(Method(
    "conductance",
    "Conductance (Captum's LayerConductance): the gradient at each point of the path from the reference "
    "times the change of a tensor to the next point, summed; at the input the map, at keep= tensors theirs.",
    build_conductance,
    (Param("steps", 50, "intervals on the path (steps + 1 points; Captum's n_steps)", parse_int, positive_int),
     REFERENCE_INPUTS, REFERENCE_DATA,
     Param("integration", "gausslegendre", "the points on the path: those of this (steps+1)-point rule "
           "(Captum's method; riemann_trapezoid: k / steps, whose differences add up to h(x) - h(ref))",
           str, one_of(*INTEGRATION)),
     CHUNK),
    at_layer=as_carried, non_finite=at_the_reference,
))
