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
"""

from __future__ import annotations

from onnxattr.compiler import path_nodes
from onnxattr.errors import UsageError
from onnxattr.methods.base import (
    Method, Param, Target, as_carried, chunk_size, one_of, parse_int, positive_int, reference_constant,
    register_method,
)
from onnxattr.methods.gradient import CHUNK, GAUSS_LEGENDRE_MAX, INTEGRATION, ig_quadrature, path_points
from onnxattr.sampling import Trip, sample_loop


def conductance_trip(cb, tensors: list[str], grad: str, trip: Trip):
    """For each tensor h: its gradient g and value v at this trip's points ([count*N, ...] each) become
    [count, N, ...]; each point k pairs with the one before it (the first with the previous trip's last,
    carried; zeros before the first trip), contributing g_{k-1} (v_k - v_{k-1})."""
    contributions, states = [], []
    for i, h in enumerate(tensors):
        value = trip.copies[h]
        g = grad if i == 0 else cb.kept.get(value)
        if g is None:  # the selected output does not depend on h at any point
            g = cb.zeros_like(value)
        prev_g, prev_v = trip.carried[2 * i], trip.carried[2 * i + 1]
        stacked = cb.op("Concat", [trip.count, cb.op("Shape", [prev_g])], axis=0)
        gs, vs = (cb.op("Reshape", [t, stacked], allowzero=1) for t in (g, value))
        before = [cb.op("Concat", [cb.op("Unsqueeze", [prev, cb.ints([0])]),
                                   cb.op("Slice", [t, cb.ints([0]), cb.ints([-1]), cb.ints([0])])], axis=0)
                  for prev, t in ((prev_g, gs), (prev_v, vs))]
        contributions.append(cb.op("Mul", [before[0], cb.op("Sub", [vs, before[1]])]))
        last = cb.ints([-1])
        states += [cb.op("Squeeze", [cb.op("Gather", [t, last], axis=0), cb.ints([0])]) for t in (gs, vs)]
    return contributions, states


def build_conductance(t: Target, p: dict) -> str:
    b, x, steps = t.b, t.x, p["steps"]
    ref = reference_constant(b, x, p["reference_inputs"])
    diff = b.op("Sub", [x, ref])
    if p["integration"] == "gausslegendre" and steps + 1 > GAUSS_LEGENDRE_MAX:
        raise UsageError(f"conductance: integration gausslegendre takes at most {GAUSS_LEGENDRE_MAX - 1} steps "
                         f"({GAUSS_LEGENDRE_MAX} points), got {steps}: use fewer steps or a riemann_* rule")
    alphas_k, _ = ig_quadrature(p["integration"], steps + 1)
    dtype = b.float_dtype(x)
    on_path = path_nodes(t.nodes, x, t.y, b)[1]  # a kept name off it is refused by name after the build
    tensors = [x] + sorted(h for h in b.keep if h != x and h in on_path)

    def points(cb, x_, ks, count):
        alphas = cb.op("Gather", [cb.const(alphas_k.astype(dtype), dtype, "conductance_alphas"), ks])
        return path_points(cb, x_, alphas, ref, diff, count)

    def per_trip(cb, grad, pts, ks, trip):
        contributions, states = conductance_trip(cb, tensors, grad, trip)
        return (contributions if len(tensors) > 1 else contributions[0]), states

    totals = sample_loop(b, t.nodes, x, t.y, t.index, steps + 1, chunk_size(t, p), points,
                         per_sample=per_trip, sums=len(tensors), acc_like=tensors,
                         carry_like=tuple(h for h in tensors for _ in range(2)))
    totals = totals if isinstance(totals, list) else [totals]
    for h, total in zip(tensors[1:], totals[1:]):
        b.kept[h] = total
    return totals[0]


register_method(Method(
    "conductance",
    "Conductance (Captum's LayerConductance): the gradient at each point of the path from the reference "
    "times the change of a tensor to the next point, summed; at the input the map, at keep= tensors theirs.",
    build_conductance,
    (Param("steps", 50, "intervals on the path (steps + 1 points; Captum's n_steps)", parse_int, positive_int),
     Param("reference_inputs", 0.0, "baseline (a number, or via the Python API an array that broadcasts to x: "
           "one row, or one per sample)", per_sample=True),
     Param("integration", "gausslegendre", "the points on the path: those of this (steps+1)-point rule "
           "(Captum's method; riemann_trapezoid: k / steps, whose differences add up to h(x) - h(ref))",
           str, one_of(*INTEGRATION)),
     CHUNK),
    at_layer=as_carried,
))
