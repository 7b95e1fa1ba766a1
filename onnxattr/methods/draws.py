"""Random draws inside the compiled graph: Gaussian noise (smoothgrad, random, gradient_shap's noisy inputs)
and uniform numbers (gradient_shap's baselines and path points, the Shapley orders). Each is a seeded onnxruntime Random* node: a seed fixes the stream, and
inside a Loop body each trip continues the stream (new draws every trip).
"""

from __future__ import annotations

import functools

import onnxruntime as ort
from onnx import TensorProto, helper

from onnxattr.errors import UnsupportedModelError

# onnxruntime reads the seed as a float32 attribute (integers exact up to 2^24) and seeds its generator
# with it, where 0 and 1 give the same stream: seed k is passed as 1 + (k mod (2^24 - 1)), distinct for
# every k in [0, 2^24 - 1)
SEED_STREAMS = 2**24 - 1
RANDOM_OPSET = 21  # the random ops' versions before opset 22, which every onnxruntime runs


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
    seed keeps a stream of its own, and the first draw is no longer near 0."""
    return cb.op("RandomUniformLike", [like], dtype=dtype, low=0.0, high=1.0,
                 seed=None if seed is None else float(1 + ((seed + offset + 12345) * 2654435761) % (2**24 - 1)))

