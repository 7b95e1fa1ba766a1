"""Random draws inside the compiled graph: Gaussian noise (smoothgrad, random, gradient_shap's noisy inputs),
uniform numbers (gradient_shap's baselines and path points, the Shapley orders) and random permutations of a
batch's rows (feature_permutation). Each is a seeded onnxruntime Random* node: a seed fixes the stream, and
inside a Loop body each trip continues the stream (new draws every trip).
"""

from __future__ import annotations

import functools

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxattr.errors import UnsupportedModelError
from onnxattr.methods.base import Param, optional_int, parse_optional_int

# onnxruntime reads the seed as a float32 attribute (integers exact up to 2^24) and seeds its generator
# with it, where 0 and 1 give the same stream: seed k is passed as 1 + (k mod (2^24 - 1)), distinct for
# every k in [0, 2^24 - 1)
SEED_STREAMS = 2**24 - 1
RANDOM_OPSET = 21  # the random ops' versions before opset 22, which every onnxruntime runs
SEED = Param("seed", 0, "random seed of the draws (None: onnxruntime's per-process seed; each new "
             "session in one process starts the same stream)", parse_optional_int,
             optional_int, optional=True)
OFFSET_STRIDE = 5_000_011  # between a seed's streams of different kinds (uniform's offset); far from +-1
PERMUTATION_TRIES = 64  # candidate permutations per draw: all of them the identity with odds (1/N!)^64


@functools.lru_cache(maxsize=None)
def onnxruntime_has_random(opset: int) -> bool:
    """Whether the installed onnxruntime runs RandomNormalLike in a model of this opset (1.32 has no
    kernel for the random ops' opset-22 versions: a model of opset 22 or newer fails to load)."""
    node = helper.make_node("RandomNormalLike", ["x"], ["y"], dtype=TensorProto.FLOAT)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - NotImplemented, or a newer opset it does not know at all
        return False
    return True


def random_opset_limit(opset: int) -> tuple[int, str] | None:
    """(opset, why) to convert a model of ``opset`` down to before a method emits random ops, or None
    when onnxruntime runs them at ``opset`` as it is."""
    if onnxruntime_has_random(opset):
        return None
    return RANDOM_OPSET, (f"the random draws of this method are RandomNormalLike/RandomUniformLike nodes, which "
                          f"onnxruntime {ort.__version__} cannot run at opset {opset}")


def gaussian(b, like: str, scale: float, seed, dtype: int) -> str | None:
    """N(0, scale^2) noise of ``like``'s shape, or None at scale 0: onnxruntime aborts the whole process
    on a RandomNormalLike with scale 0, so none is emitted."""
    if scale == 0:
        return None
    limit = random_opset_limit(b.opset)  # compile_model converts such a model down first
    if limit is not None:
        raise UnsupportedModelError(f"{limit[1]}; export the model with opset {limit[0]} or lower")
    return b.op("RandomNormalLike", [like], dtype=dtype, mean=0.0, scale=float(scale),
                seed=float(1 + seed % SEED_STREAMS) if seed is not None else None)


def uniform(cb, like: str, seed, offset: int, dtype: int = TensorProto.FLOAT) -> str:
    """U[0, 1) of ``like``'s shape in ``dtype`` (float32). onnxruntime's generator (minstd) seeded k starts at about
    k * 16807 / 2^31, tiny for small k, so the seed is scrambled by a bijection of [0, 2^24 - 1) first: every
    seed keeps a stream of its own, and the first draw is no longer near 0. A method's draws of another kind take
    another ``offset``, which moves the scrambled seed by OFFSET_STRIDE (not the seed by 1: seed s's second
    stream would be seed s + 1's first)."""
    stream = ((seed + 12345) * 2654435761 + offset * OFFSET_STRIDE) % SEED_STREAMS if seed is not None else None
    return cb.op("RandomUniformLike", [like], dtype=dtype, low=0.0, high=1.0,
                 seed=None if stream is None else float(1 + stream))


def random_orders(cb, dims: str, last: str, seed, offset: int) -> str:
    """int64 of shape ``dims`` (int64 [rank]) whose rows along the last axis (of size ``last``, int64 [1]) are
    uniformly random permutations of 0..last-1: the argsort of float64 uniforms (ties negligible)."""
    zeros = cb.op("ConstantOfShape", [dims], value=numpy_helper.from_array(np.zeros(1)))
    return cb.op("TopK", [uniform(cb, zeros, seed, offset, TensorProto.DOUBLE), last], n_out=2, axis=-1)[1]


def non_identity_permutations(cb, count: str, n: str, seed, offset: int) -> str:
    """int64 [count, n]: ``count`` (int64 [1]) random permutations of 0..n-1 (``n``: int64 [1]), each uniform over
    every permutation but the identity, as Captum's FeaturePermutation draws them (torch.randperm until one
    is not the identity). Each row is the argsort of float64 uniforms (a uniform permutation); of
    PERMUTATION_TRIES such candidates the first that is not the identity is taken (the rejection of a
    redraw loop, unrolled): the identity comes out only if all of them are it, with odds (1/n!)^64 (5e-20 for
    n = 2), and for n = 1, the only permutation there is."""
    orders = random_orders(cb, cb.op("Concat", [count, cb.ints([PERMUTATION_TRIES]), n], axis=0), n, seed,
                           offset)  # int64 [count, T, n]
    rows = cb.op("Range", [cb.const(0, "int64"), cb.op("Reshape", [n, cb.ints([])]), cb.const(1, "int64")])
    moved = cb.reduce("ReduceMax", cb.op("Cast", [cb.op("Not", [cb.op("Equal", [orders, rows])])],
                                         to=TensorProto.INT64), [2], keepdims=0)  # [count, T]: 1 where a row moves
    first = cb.op("ArgMax", [moved], axis=1, keepdims=1)  # the first candidate that moves a row (0 if none)
    pick = cb.op("Expand", [cb.op("Unsqueeze", [first, cb.ints([2])]), cb.op("Concat", [count, cb.ints([1]), n],
                                                                            axis=0)])
    return cb.op("Squeeze", [cb.op("GatherElements", [orders, pick], axis=1), cb.ints([1])])
