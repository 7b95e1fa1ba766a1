"""Method registry: every method name, its parameters and defaults, and its graph builder."""

from onnxattr.methods.base import REGISTRY, Method, Param, Target, get_method
from onnxattr.methods import (  # noqa: F401  (register the method families)
    attn_lrp, cam, conductance, deep_lift, feature_ablation, gradient, gradient_shap, kernel_shap, lime, lrp, occlusion,
    pattern, shapley,
)

__all__ = ["REGISTRY", "Method", "Param", "Target", "get_method"]
