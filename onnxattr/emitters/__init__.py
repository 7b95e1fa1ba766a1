"""Backward emitters: one module per op family, each registering the VJP of its ops.

An emitter has the signature ``vjp(b, node, grads, need) -> list`` where ``b`` is the
:class:`~onnxattr.graph.GraphBuilder`, ``grads[i]`` names the gradient (or relevance) arriving at
``node.output[i]`` (``None`` when nothing arrives there), and ``need[i]`` says whether input ``i`` lies on
the explained path. It returns one entry per input: the name of that input's gradient, or ``None``.
Emitters use only standard ONNX ops, keep dynamic dims dynamic and are exact (checked numerically in
tests/emitters).
"""

from onnxattr.emitters.registry import VJPS, ZERO_GRAD_OPS, register

# importing the families fills the registry
from onnxattr.emitters import (  # noqa: E402,F401
    activations,
    arithmetic,
    conv,
    deform_conv,
    einsum,
    fourier,
    grid_sample,
    linear,
    loss,
    normalization,
    pooling,
    quantize,
    recurrent,
    reduce,
    resize,
    roi_align,
    shape,
    trigonometric,
)

__all__ = ["VJPS", "ZERO_GRAD_OPS", "register"]
