"""Undo numpy-style broadcasting in a gradient: sum it back to the shape of an operand."""

from onnxattr.graph import GraphBuilder


def unbroadcast(b: GraphBuilder, g: str, target: str, full: str | None = None, runtime: bool = False) -> str:
    """ReduceSum ``g`` over the axes where ``target`` was broadcast, then give it target's shape.

    When target's rank and dims are known and each dim is an int or the same as g's there (the same symbolic
    name, or g's is 1), the axes are found at compile time: the leading axes target lacks and the axes where
    target has 1. A symbolic dim of target where g's is another or unknown may be 1 at run time, as a's dims
    [1, ...] broadcast against [3, ...] do when both are symbolic; then the axes come from
    NonZero(Shape(g) != Shape(target) padded with leading ones), reduced with
    noop_with_empty_axes=1 (without that flag an empty axes list reduces every axis).
    ``full`` names a tensor of g's shape (the forward output) when g itself has no recorded shape.
    ``runtime``: always compare the shapes at run time (a symbolic dim of target may be 1 there).
    """
    gs, ts = b.shape(full or g), b.shape(target)
    if not runtime and gs is not None and ts is not None and None not in ts and len(gs) >= len(ts) and all(
            isinstance(t, int) or t == d or d == 1 for t, d in zip(ts, gs[len(gs) - len(ts):])):
        lead = len(gs) - len(ts)
        axes = list(range(lead)) + [
            lead + i for i, t in enumerate(ts) if t == 1 and gs[lead + i] != 1
        ]
        if not axes:
            return g
        out = b.op("ReduceSum", [g, b.ints(axes)], keepdims=1)
        out = b.op("Reshape", [out, b.shape_of(target)])
        b.set_info(out, target)
        return out
    g_rank, t_rank = b.rank(full or g), b.rank(target)
    shp_g = b.op("Shape", [g])
    shp_t = b.op("Shape", [target])
    if g_rank is not None and t_rank is not None and g_rank > t_rank:
        shp_t_pad = b.op("Concat", [b.ints([1] * (g_rank - t_rank)), shp_t], axis=0)
    else:
        shp_t_pad = shp_t
    mismatch = b.op("Not", [b.op("Equal", [shp_g, shp_t_pad])])
    axes = b.op("Reshape", [b.op("NonZero", [mismatch]), b.ints([-1])])
    red = b.op("ReduceSum", [g, axes], keepdims=1, noop_with_empty_axes=1)
    out = b.op("Reshape", [red, shp_t])
    b.set_info(out, target)
    return out
