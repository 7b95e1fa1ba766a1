"""What occlusion, feature ablation and permutation and the Shapley methods share: each perturbation k replaces
a part of x (a window, a group of features) by a baseline (or, through ``replacement_of``, by other samples'
values: feature permutation), and every element of that part gets the drop of the selected output

    R_i = sum over perturbations k covering i of (y(x) - y(x with part k replaced)) (times a weight: Shapley)

summed over the perturbations in chunks inside one forward-only ONNX Loop (onnxattr/sampling.py). An output that
is one number for the batch (a loss) is perturbed in every sample at once; so is one whose rows are not the
samples (a box head's logits, one row per box of another input; a graph's readout over node rows), whose rows'
selected outputs are summed into that one number, as the gradient methods sum them.
"""

from __future__ import annotations

from typing import Callable

from onnx import TensorProto

from onnxattr.compiler import path_nodes
from onnxattr.errors import UsageError
from onnxattr.graph import GraphBuilder
from onnxattr.methods.base import Param, Target, chunk_size, reference_constant
from onnxattr.sampling import sample_loop
from onnxattr.select import build_seed, selected_value

BASELINES = Param("baselines", 0.0, "the value a perturbed feature takes (a number, or via the Python API an array "
                  "that broadcasts to x: one row, or one per sample)", per_sample=True)
MAX_PERTURBATIONS = 2**20  # forward passes: beyond this a typo (stride 1 on a large input, no mask) runs for hours


def perturbed_features(t: Target, method: str, does: str) -> list:
    """The explained input's feature dims (ints, None where fixed only at run time) for a method that
    perturbs them and measures the output's drop: an input without feature axes is refused, naming
    ``method`` and what it ``does`` to the features."""
    shape = t.b.shape(t.x)
    if shape is None or len(shape) < 2:
        raise UsageError(f"{method} {does} the features of '{t.x}', whose rank is "
                         f"{'unknown' if shape is None else len(shape)}; it needs [N, features...]")
    return [d if isinstance(d, int) else None for d in shape[1:]]


def rows_are_not_samples(t: Target) -> bool:
    """Whether the explained output's rows are something other than x's samples: another input's rows, or a fixed
    count other than x's fixed one (such models run one point per trip: chunk_size)."""
    y_rows, x_rows = (t.b.shape(t.y) or [None])[0], (t.b.shape(t.x) or [None])[0]
    fixed_apart = isinstance(y_rows, int) and isinstance(x_rows, int) and y_rows != x_rows
    return t.rows_input is not None or fixed_apart


def perturbation_loop(t: Target, p: dict, method: str, n, feats: str,
                      mask_of: Callable[[GraphBuilder, str], str],
                      factor: Callable[[GraphBuilder, str], str] | None = None,
                      weight_of: Callable[[GraphBuilder, str], str] | None = None,
                      mean_over=None,
                      replacement_of: Callable[[GraphBuilder, str, str, str], str] | None = None,
                      acc_like: str | None = None) -> str:
    """Sum over perturbations k = 0..n-1 of (y(x) - y(x_k)) * weight_k, x_k = x (1 - mask_k) + baseline mask_k
    (y: each sample's selected output; for an output that is one number for the whole batch, a loss, that
    number: each perturbation then changes every sample at once, and every row gets the same values, the
    batch's, where Captum returns that one row)
    (``p["baselines"]``). ``mask_of(cb, ks)``: float [c, 1, *F'] masks of this trip's perturbations ks,
    broadcasting to one sample; ``feats``: int64 [rank], x's feature dims at run time; ``n``, ``factor`` and
    ``mean_over`` as sample_loop takes them. The weights are the masks, or ``weight_of(cb, ks)`` (called after
    mask_of): float64 [c, 1, *F'], and then the products are summed in float64 (Shapley weights of both signs
    cancel) and the total returned in float32. ``replacement_of(cb, x_, ks, count)``: what a perturbed feature
    takes instead of the baseline, [c, N, *F] (x's rows in another order: feature_permutation). ``acc_like``:
    a float tensor [N, *A] whose shape the total takes instead of x's, the weights being [c, 1, *A] (kernel_shap
    keeps each coalition's drop apart: one-hot weights over [N, S])."""
    b, x = t.b, t.x
    rank = b.rank(x) - 1
    weight_rank = rank if acc_like is None else len(b.shape(acc_like)) - 1  # a weight's axes after [c*N]
    baseline = None if replacement_of else reference_constant(b, x, p["baselines"], "baselines")  # broadcast to x
    clean = selected_value(b, t.y, build_seed(b, t.y, t.neuron, "one", t.index))  # [N]
    rows_apart = rows_are_not_samples(t)
    masks = {}

    def points(cb, x_, ks, count):
        mask = mask_of(cb, ks)
        weight = mask if weight_of is None else weight_of(cb, ks)
        instead = baseline if replacement_of is None else replacement_of(cb, x_, ks, count)
        perturbed = cb.op("Add", [cb.op("Mul", [cb.op("Unsqueeze", [x_, cb.ints([0])]),
                                                cb.op("Sub", [cb.scalar(1.0, x_), mask])]),
                                  cb.op("Mul", [mask, instead])])  # [c, N, *F]
        n_ = cb.op("Slice", [cb.op("Shape", [x_]), cb.ints([0]), cb.ints([1])])
        rows = cb.op("Concat", [cb.op("Mul", [count, n_]), feats], axis=0)
        dims = feats if acc_like is None else cb.op("Slice", [cb.op("Shape", [acc_like]), cb.ints([1]),
                                                              cb.ints([2**62])])
        masks["rows"] = cb.op("Reshape", [cb.op("Expand", [weight, cb.op("Concat", [count, n_, dims], axis=0)]),
                                          cb.op("Concat", [cb.op("Mul", [count, n_]), dims], axis=0)])
        return cb.op("Reshape", [perturbed, rows])

    def drops(cb, selected, ks, count):
        if rows_apart:  # one trip per point (chunk_size): the drop of the rows' sum
            drop = cb.op("Sub", [cb.op("ReduceSum", [clean], keepdims=1), cb.op("ReduceSum", [selected], keepdims=1)])
        else:
            drop = cb.op("Sub", [cb.op("Tile", [clean, count]), selected])  # [c*N], sample-major like the points
        if weight_of is not None:
            drop = cb.op("Cast", [drop], to=TensorProto.DOUBLE)
        return cb.op("Mul", [cb.op("Reshape", [drop, cb.ints([-1] + [1] * weight_rank)]), masks["rows"]])

    for node in path_nodes(t.nodes, x, t.y, b)[0]:
        t.assignment[node.name] = ("forward", f"{method} runs the forward pass only")
    total = sample_loop(b, t.nodes, x, t.y, t.index, n, chunk_size(t, p), points, forward_only=drops, factor=factor,
                        mean_over=mean_over, wide=weight_of is not None, acc_like=acc_like)
    if weight_of is None:
        return total
    out = b.op("Cast", [total], to=TensorProto.FLOAT)  # the relevance's type (assemble): no float16 rounding
    b.set_info(out, acc_like or x)
    b.types[out] = TensorProto.FLOAT
    return out
