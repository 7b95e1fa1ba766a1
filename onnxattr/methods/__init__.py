"""Method registry: every method name, its parameters and defaults, and its graph builder."""

from onnxattr.methods.base import REGISTRY, Method, Param, Target, get_method
from onnxattr.methods import attn_lrp, cam, deep_lift, gradient, gradient_shap, lrp, occlusion, pattern  # noqa: F401  (register the method families)

__all__ = ["REGISTRY", "Method", "Param", "Target", "get_method"]
