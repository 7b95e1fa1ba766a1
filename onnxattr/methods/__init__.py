"""Method registry: every method name, its parameters and defaults, and its graph builder."""

from onnxattr.methods.base import REGISTRY, Method, Param, Target, get_method
from onnxattr.methods import gradient  # noqa: F401  (registers the gradient family)

__all__ = ["REGISTRY", "Method", "Param", "Target", "get_method"]
