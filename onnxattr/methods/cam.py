"""Grad-CAM (Selvaraju et al. 2017) and Guided Grad-CAM, as Captum's LayerGradCam and GuidedGradCam compute
them. At a feature map A [N, C, *S] on the path (by default the last one before the spatial axes collapse,
the output of a ResNet's last block or a VGG's last pool):

    alpha_c = mean over S of dy/dA_c        cam = relu(sum_c alpha_c A_c)        [N, 1, *S]

then resized to the input's spatial size (bilinear, as the paper does, or nearest) and the same in every
channel of the relevance. guided_grad_cam is guided backprop's map times that upsampled cam.
"""

from __future__ import annotations

import numpy as np

from onnxattr.compiler import path_nodes, reverse_pass
from onnxattr.errors import UsageError
from onnxattr.methods.base import Method, Param, Target, one_of, register_method
from onnxattr.methods.gradient import backward, relu_rule
from onnxattr.select import build_seed

# ops whose output has every spatial axis of size 1: the spatial axes have collapsed there
COLLAPSING = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})


def channels_first_view(b, on_path, x: str) -> tuple[str, list[int] | None]:
    """(the tensor whose axes 2.. are x's spatial axes, the permutation that took x there or None): x itself,
    or, for a channels-last input (a Keras model through tf2onnx), the Transpose that moves its last axis to 1."""
    rank = b.rank(x)
    first = [0, rank - 1] + list(range(1, rank - 1)) if rank else None
    for node in on_path:
        if node.op_type == "Transpose" and node.input[0] == x and rank and rank >= 3:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm == first:
                return node.output[0], perm
    return x, None


def feature_maps(b, on_path, live: set, rank: int) -> list[str]:
    """Tensors on the path of the input's rank laid out channels first: not a Transpose's output (Keras
    models transpose back to channels last before they flatten) and not known to be 1 on every spatial axis."""
    found = []
    for node in on_path:
        if node.op_type in COLLAPSING or node.op_type == "Transpose":
            continue
        for o in node.output:
            shape = b.shape(o)
            if o in live and b.is_float(o) and shape is not None and len(shape) == rank and \
                    not all(d == 1 for d in shape[2:]):
                found.append(o)
    return found


def choose_layer(b, on_path, live: set, x: str, y: str, rank: int, layer: str | None) -> str:
    maps = feature_maps(b, on_path, live, rank)
    if layer is None:
        if not maps:
            raise UsageError(f"no feature map [N, C, spatial...] of rank {rank} lies between input '{x}' and output "
                             f"'{y}' for Grad-CAM; name one with layer=TENSOR (`onnxattr inspect` lists the nodes)")
        return maps[-1]
    if layer not in live or layer == x:
        hint = f" (feature maps on the path: {', '.join(maps[-5:])})" if maps else ""
        raise UsageError(f"layer '{layer}' is not a tensor between input '{x}' and output '{y}'{hint}")
    if (b.rank(layer) or 0) < 3:
        raise UsageError(f"layer '{layer}' has rank {b.rank(layer)}; Grad-CAM needs a feature map [N, C, spatial...]")
    return layer


def grad_cam(t: Target, p: dict, guided: bool = False) -> str:
    """The upsampled cam, expanded to x's shape (``guided``: for guided_grad_cam, whose guided backprop runs
    through the nodes before the layer too)."""
    b, x, y = t.b, t.x, t.y
    on_path, live = path_nodes(t.nodes, x, y, b)
    view, perm = channels_first_view(b, on_path, x)
    layer = choose_layer(b, on_path, live, x, y, b.rank(view) or 0, p["layer"])
    seed = build_seed(b, y, t.neuron, "one", t.index)
    grad = reverse_pass(b, t.nodes, layer, y, seed)
    rank = b.rank(layer)
    spatial = list(range(2, rank))
    if grad is None:
        grad = b.zeros_like(layer)
    alpha = b.reduce("ReduceMean", grad, spatial)
    cam = b.reduce("ReduceSum", b.op("Mul", [alpha, layer]), [1])
    if p["relu"]:
        cam = b.op("Relu", [cam])
    empty = b.const(np.zeros(0, np.float32), np.float32, "empty")
    lead = b.op("Slice", [b.op("Shape", [cam]), b.ints([0]), b.ints([2])])
    size = b.op("Slice", [b.op("Shape", [view]), b.ints([2]), b.ints([2**62])])
    sizes = b.op("Concat", [lead, size], axis=0)
    if p["interpolation"] == "linear":
        up = b.op("Resize", [cam, empty, empty, sizes], mode="linear", coordinate_transformation_mode="half_pixel")
    else:
        up = b.op("Resize", [cam, empty, empty, sizes], mode="nearest", coordinate_transformation_mode="asymmetric",
                  nearest_mode="floor")
    if perm is not None:
        up = b.op("Transpose", [up], perm=list(np.argsort(perm)))
    producer = {o: n for n in on_path for o in n.output}
    before, stack = set(), [layer]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in before:
            before.add(node.name)
            stack.extend(node.input)
    for node in on_path:
        if guided and node.op_type == "Relu":
            t.assignment[node.name] = ("guided_backprop", "guided backprop's part")
        if layer in node.output:
            t.assignment[node.name] = ("grad_cam layer", "its output is the feature map" + (
                "; guided backprop's part too" if guided and node.op_type == "Relu" else ""))
        elif node.name in before and not guided:
            t.assignment[node.name] = ("none", f"before the Grad-CAM layer '{layer}'")
    out = b.op("Expand", [up, b.op("Shape", [x])])
    b.set_info(out, x)
    return out


def build_guided_grad_cam(t: Target, p: dict) -> str:
    guided = backward(t, rule_for=relu_rule("guided"))
    return t.b.op("Mul", [guided, grad_cam(t, p, guided=True)])


def parse_bool(s: str) -> bool:
    low = s.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError(s)


def _is_bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _optional_name(s: str):
    return None if s.lower() in ("none", "") else s


def _tensor_name(v):
    return None if v is None or isinstance(v, str) else "must be a tensor name"


CAM_PARAMS = (
    Param("layer", None, "the feature map: an ONNX tensor name (None: the last one before the spatial axes "
          "collapse)", _optional_name, _tensor_name, optional=True),
    Param("relu", True, "keep only the positive part of the cam, as Grad-CAM does (Captum's relu_attributions)",
          parse_bool, _is_bool),
    Param("interpolation", "linear", "resizing the cam to the input: 'linear' (the paper's bilinear) or 'nearest'",
          str, one_of("linear", "nearest")),
)

register_method(Method(
    "grad_cam", "Grad-CAM: relu(sum_c mean(dy/dA_c) A_c) at a feature map A, resized to the input.",
    grad_cam, CAM_PARAMS))
register_method(Method(
    "guided_grad_cam", "Guided Grad-CAM: guided backprop times the resized Grad-CAM map.",
    build_guided_grad_cam, CAM_PARAMS))
