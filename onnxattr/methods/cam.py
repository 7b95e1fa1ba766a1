"""Grad-CAM (Selvaraju et al. 2017) and Guided Grad-CAM, as Captum's LayerGradCam and GuidedGradCam compute
them. At a feature map A [N, C, *S] on the path (by default the last one before the spatial axes collapse,
the output of a ResNet's last block or a VGG's last pool):

    alpha_c = mean over S of dy/dA_c        cam = relu(sum_c alpha_c A_c)        [N, 1, *S]

then resized to the input's spatial size (bilinear, as the paper does, or nearest) and the same in every
channel of the relevance. guided_grad_cam is guided backprop's map times that upsampled cam. A vision
transformer's token map [N, k + h*w, C] is read as the grid [N, C, h, w] (onnxattr.methods.tokens).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxattr.compiler import path_nodes, reverse_pass
from onnxattr.emitters.reduce import is_global_average
from onnxattr.errors import UsageError
from onnxattr.graph import live_nodes, node_reads
from onnxattr.methods.base import Method, Param, Target, one_of, register_method
from onnxattr.methods.gradient import backward, rectifier_test, relu_rule
from onnxattr.methods.tokens import around_attention, as_grid, default_token_map, patch_grid, token_maps
from onnxattr.select import build_seed

# ops whose output has every spatial axis of size 1: the spatial axes have collapsed there
COLLAPSING = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})


# ops that read their input channels first by definition: the tensor they read fixes the layout
CHANNELS_FIRST_OPS = frozenset({"Conv", "ConvInteger", "ConvTranspose", "MaxPool", "AveragePool", "LpPool",
                                "BatchNormalization", "InstanceNormalization", "LRN", "GlobalAveragePool",
                                "GlobalMaxPool", "GlobalLpPool"})


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def to_channels_first(rank: int) -> list[int]:
    """The permutation [N, spatial..., C] -> [N, C, spatial...]."""
    return [0, rank - 1, *range(1, rank - 1)]


def layouts(b, on_path, x: str) -> tuple[dict, list[int] | None]:
    """({tensor: True where its axes are laid out channels first, False where channels last, absent when
    unknown}, the permutation taking x to channels first or None when x is channels first).
    Each Transpose moving the last axis to 1 (or back) flips the layout along the path; x's own layout is
    read off the first channels-first op (Conv, pools, BatchNorm) whose input has a known layout, else off a
    Transpose to channels first reading x (channels first without one). A channels-first op writes channels first
    even where its input's layout was lost (after a non-local block's reshapes, or a SpaceToDepth stem written as
    reshapes before the first convolution). Then, walking back, what a channels-first op or a global average reads
    is channels first, what a global average over the axes between the first and the last reads is channels last
    (a timm Swin's head), and so are the same-rank inputs of the ops before it other than Transpose, Reshape and
    Flatten."""
    rank = b.rank(x)
    if not rank or rank < 3:
        return {}, None
    to_first = to_channels_first(rank)
    flip = {x: False}
    x_last = _walk_forward(b, on_path, rank, flip, None)
    if x_last is None:  # no channels-first op reads a known layout: a Transpose to channels first reading x
        x_last = any(n.op_type == "Transpose" and n.input[0] == x and _perm(n) == to_first for n in on_path)
        if not any(n.op_type in CHANNELS_FIRST_OPS for n in on_path):
            return {t: f == x_last for t, f in flip.items()}, (to_first if x_last else None)
        _walk_forward(b, on_path, rank, flip, x_last)  # a TResNet's stem: its convolutions write channels first
    for node in reversed(on_path):  # a MobileViT's patches folded back by Reshapes, then resized, then convolved
        reads_channels_first = node.op_type in CHANNELS_FIRST_OPS or is_global_average(b, node)
        reads_channels_last = is_global_average(b, node, channels_last=True)  # a timm Swin's [N, h, w, C]
        if (reads_channels_first or reads_channels_last) and node.input[0] not in flip and \
                b.rank(node.input[0]) == rank:
            flip[node.input[0]] = x_last if reads_channels_first else not x_last
        elif node.op_type not in ("Transpose", "Reshape", "Flatten") and any(o in flip for o in node.output):
            f = next(flip[o] for o in node.output if o in flip)
            for i in node.input:
                if i and i not in flip and b.rank(i) == rank and b.is_float(i):
                    flip[i] = f
    first = {t: f == x_last for t, f in flip.items()}  # flipped from x's layout iff x is channels last
    return first, (to_first if x_last else None)


def _walk_forward(b, on_path, rank: int, flip: dict, x_last: bool | None) -> bool | None:
    """Fills ``flip`` ({tensor: flipped from x's layout}) along the path; returns x_last, read off the first
    channels-first op whose input's layout is known when ``x_last`` is None (None if there is none). A
    channels-first op whose input's layout is unknown writes channels first once x_last is known."""
    to_first = to_channels_first(rank)
    to_last = [0] + list(range(2, rank)) + [1]
    for node in on_path:
        known = [flip[i] for i in node.input if i in flip]
        if not known:
            if node.op_type in CHANNELS_FIRST_OPS and x_last is not None:  # channels first whatever it reads
                flip.update({o: x_last for o in node.output if o and b.rank(o) == rank})
            continue
        f = known[0]
        if x_last is None and node.op_type in CHANNELS_FIRST_OPS and node.input[0] in flip:
            x_last = flip[node.input[0]]  # its input is channels first: x is channels last iff flipped an odd time
        if node.op_type == "Transpose":
            if _perm(node) not in (to_first, to_last):
                continue  # another permutation: layout unknown from here
            f = not f
        for o in node.output:
            if o and b.rank(o) == rank:
                flip[o] = f
    return x_last


# ops that keep the spatial size of their one varying input: the walk back from a collapsed map goes through them
POINTWISE = frozenset({"Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu",
                       "Selu", "Softplus", "Mul", "Add", "Sub", "Div", "BatchNormalization", "Identity", "Dropout",
                       "Cast"})


def collapsed(b, on_path) -> set:
    """Maps of symbolic spatial size (dynamic H/W exports) that are 1x1 at run time all the same: a Flatten to
    [N, K] feeding a Gemm/MatMul whose weight has K = C rows reads a [N, C, 1, ...] map (an AvgPool2d(7) on a 7x7
    map), and so do the ops back to the pool or conv that made it."""
    producer = {o: n for n in on_path for o in n.output}
    consumers = {}
    for n in on_path:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    gone = set()
    for node in on_path:
        if node.op_type not in ("Flatten", "Reshape") or b.rank(node.output[0]) != 2:
            continue
        t, shape = node.input[0], b.shape(node.input[0])
        out = b.shape(node.output[0])
        if shape is None or len(shape) < 3 or not isinstance(shape[1], int) or out[0] != shape[0] or \
                node.op_type == "Flatten" and any(a.name == "axis" and a.i != 1 for a in node.attribute):
            continue
        ks = set()
        for c in consumers.get(node.output[0], []):
            w = b.shape(c.input[1]) if len(c.input) > 1 else None
            trans = any(a.name == "transB" and a.i for a in c.attribute)
            if c.op_type in ("Gemm", "MatMul") and c.input[0] == node.output[0] and w is not None and len(w) == 2:
                ks.add(w[1] if trans else w[0])
        if ks != {shape[1]}:
            continue
        while t is not None and t not in gone:
            gone.add(t)
            n = producer.get(t)
            if n is None or n.op_type not in POINTWISE or len(
                    [i for i in n.input if i in producer]) != 1:
                break
            t = next(i for i in n.input if i in producer)
    return gone


def feature_maps(b, on_path, live: set, rank: int, first: dict, batch=None) -> list[str]:
    """Tensors on the path of the input's rank of a known layout: channels first, or channels last with two spatial
    axes or more (a timm Swin's [N, h, w, C] stages; [N, T, C] are tokens) unless a Transpose's copy of a
    channels-first map, which is the map. The layout is tracked through the Transposes, so a Keras model's
    transpose back to channels last before it flattens is a copy, a torchvision Swin's permute to channels first
    before it pools is a map; an attention's heads reshaped back to [N, T, C], of a layout lost on the way, are
    none. They come from the first convolution, pool or norm of the path on (not a recurrent net's steps
    [N, 1, C]), with the input's batch size ``batch`` first where both are known (not a sequence-first tensor
    [T, N, C]; a name shape inference made up, unk__0, is no size known), and not known to be 1 on every spatial
    axis. Nothing computed from a global pool's output alone is one (a ConvNeXt's LayerNorm over the pooled
    [N, 1, 1, C], an ASPP's pooled branch upsampled), whatever its shape: the spatial axes have collapsed there;
    nor is a Pad's output, its input's features with a border of constants (a TorchScript export's ZeroPad2d,
    which the dynamo exporter folds into the next convolution), nor a sequence unsqueezed to one row
    [N, C, 1, L] (the dynamo exporter's AdaptiveAvgPool1d)."""
    found, gone = [], collapsed(b, on_path)
    pooled: set = set()
    start = next((k for k, n in enumerate(on_path) if n.op_type in CHANNELS_FIRST_OPS), len(on_path))
    for node in on_path[start:]:  # from the first convolution (or pool, norm) on: a recurrent net's steps are none
        floats = [i for i in node.input if i in live]
        if node.op_type in COLLAPSING or is_global_average(b, node) or is_global_average(b, node, channels_last=True) \
                or (floats and all(i in pooled for i in floats)):
            pooled.update(node.output)
            continue
        if node.op_type == "Pad":  # its input's features and a border of constants: the input is the map
            continue
        if node.op_type == "Unsqueeze" and _adds_spatial_axis(b, node, rank):  # a sequence viewed as a 1 x L image
            continue
        for o in node.output:
            shape, layout = b.shape(o), first.get(o)
            if layout is False and (node.op_type == "Transpose" or rank < 4):
                continue  # a channels-first map's copy (that map is the one), or a sequence's tokens [N, T, C]
            spatial = (shape[2:] if layout else shape[1:-1]) if shape is not None else None
            if o in live and b.is_float(o) and shape is not None and len(shape) == rank and \
                    layout is not None and o not in gone and \
                    (batch is None or _unknown(shape[0]) or shape[0] == batch) and not all(d == 1 for d in spatial):
                found.append(o)
    return found


def _unknown(dim) -> bool:
    """No size known when compiling: none, or a name that onnx's shape inference made up (unk__7, as a TorchScript
    GLPN's or DPT's maps carry after a Reshape to a computed shape), which says nothing against the batch."""
    return dim is None or (isinstance(dim, str) and dim.startswith("unk__"))


def _adds_spatial_axis(b, node, rank: int) -> bool:
    """An Unsqueeze that inserts an axis after the channels: [N, C, L] -> [N, C, 1, L] (the dynamo exporter's
    AdaptiveAvgPool1d over tokens) is a sequence, not a grid. Its axes are an input (canonical models are at opset
    17 or later), a scalar where the dynamo exporter writes one."""
    axes = b.value(node.input[1]) if len(node.input) > 1 else None
    return axes is not None and any(int(a) % rank >= 2 for a in np.atleast_1d(axes))


def cuts(on_path, live: set, x: str) -> set:
    """The tensors that every path from x to the output passes through. In the path's topological order, a path
    leaves the nodes up to k by a tensor made there and read after; when the tensor a node makes is the only one
    left open after it, every path passes through it, and otherwise one that is open goes round it."""
    reads = [[i for i in node_reads(node) if i in live] for node in on_path]
    last_read = {}
    for k, ins in enumerate(reads):
        for i in ins:
            last_read[i] = k
    open_ = {x} if x in last_read else set()
    found = set()
    for k, node in enumerate(on_path):
        open_ = {t for t in open_ if last_read[t] > k}
        made = [o for o in node.output if o in live and last_read.get(o, -1) > k]
        open_.update(made)
        if len(open_) == 1 and made:
            found.add(made[0])
    return found


def last_cut(on_path, live: set, x: str, maps: list[str]) -> str:
    """The last of ``maps`` that every path from x to the output passes through: not a map inside one branch of an
    Inception block whose other branches go round it (Inception-v3 at 96 px, where the block after collapses the
    maps to 1x1), but the block's input; the last map when none is one."""
    through = cuts(on_path, live, x)
    return next((m for m in reversed(maps) if m in through), maps[-1])


def choose_layer(b, on_path, live: set, x: str, y: str, rank: int, layer: str | None,
                 first: dict) -> tuple[str, tuple | None]:
    """The feature map, and (its number of leading tokens, the patch grid) when it is a ViT's token map
    (onnxattr.methods.tokens), else None. By default a token map after the patch embedding's flatten, else the
    last feature map that every path passes through (last_cut)."""
    batch = (b.shape(x) or [None])[0]
    maps = feature_maps(b, on_path, live, rank, first, batch)
    flatten = patch_grid(b, on_path, first) if rank == 4 else None
    grid = flatten[0] if flatten is not None else None
    tokens = token_maps(b, on_path, live, *flatten, batch) if flatten is not None else {}
    if layer is None and tokens:
        after, read = around_attention(on_path, live)
        chosen = default_token_map(on_path, read, tokens)
        place = {o: k for k, n in enumerate(on_path) for o in n.output}
        conv = next((k for k, n in enumerate(on_path) if k > place[chosen] and n.op_type in CHANNELS_FIRST_OPS
                     and n.op_type not in COLLAPSING), None)
        # a map neither computed from the last attention nor read by it (a CoaT's convolutional position encoding
        # of the last block's values, added beside the attention) reaches no class token: its Grad-CAM is 0
        later = [m for m in maps if place[m] > place[chosen] and (m in after or m in read and (
            first.get(m) is False or conv is not None and place[m] >= conv))]
        if not later:  # a ViT; else a map computed from the last attention (a non-local block in a CNN, a timm
            return chosen, (tokens[chosen], grid)  # SwinV2-CR's last stage), or one it reads that a convolution follows
        return later[-1], None
    if layer in tokens:
        return layer, (tokens[layer], grid)
    if layer is None:
        if not maps:
            raise UsageError(f"no feature map [N, C, spatial...] of rank {rank} lies between input '{x}' and output "
                             f"'{y}' for Grad-CAM; name one with layer=TENSOR (`onnxattr inspect` lists the nodes)")
        return last_cut(on_path, live, x, maps), None
    if layer not in live or layer == x:
        hint = f" (feature maps on the path: {', '.join(maps[-5:])})" if maps else ""
        raise UsageError(f"layer '{layer}' is not a tensor between input '{x}' and output '{y}'{hint}")
    if (b.rank(layer) or 0) < 3:
        raise UsageError(f"layer '{layer}' has rank {b.rank(layer)}; Grad-CAM needs a feature map [N, C, spatial...]")
    first_axis = (b.shape(layer) or [None])[0]
    if batch is not None and not _unknown(first_axis) and first_axis != batch:
        raise UsageError(f"layer '{layer}' has {first_axis} on its first axis where input '{x}' has its batch "
                         f"({batch}); Grad-CAM needs a feature map [N, C, spatial...] with the batch first")
    if b.rank(layer) != rank:
        raise UsageError(f"layer '{layer}' has rank {b.rank(layer)} and input '{x}' rank {rank}: the cam of a "
                         "feature map [N, C, spatial...] is resized to the input's spatial axes, which needs the same rank"
                         + ("" if rank != 4 or (b.rank(layer) or 0) != 3 else "; a ViT's token map [N, tokens, C] "
                            "counts as one after a flatten of a feature map [N, C, h, w] into h*w tokens"))
    return layer, None


def grad_cam(t: Target, p: dict, guided=None) -> str:
    """The upsampled cam, expanded to x's shape (``guided``: for guided_grad_cam, the test of the rectifiers
    whose guided backprop runs through the nodes before the layer too)."""
    b, y = t.b, t.y
    on_path, live = path_nodes(t.nodes, t.x, y, b)
    x = signal_channels(b, on_path, t.x) or t.x  # a 1-D signal [N, L]: its [N, 1, L] view, read by the convolutions
    first, perm = layouts(b, on_path, x)
    layer, tokens = choose_layer(b, on_path, live, x, y, b.rank(x) or 0, p["layer"], first)
    seed = build_seed(b, y, t.neuron, "one", t.index)
    grad = reverse_pass(b, t.nodes, layer, y, seed)
    if grad is None:
        grad = b.zeros_like(layer)
    activation = layer
    if tokens is not None:  # a ViT's token map: its patches as the grid [N, C, rows, cols]
        activation, grad = (as_grid(b, a, *tokens) for a in (layer, grad))
    elif first.get(layer) is False:  # [N, spatial..., C] -> [N, C, spatial...]
        rank = b.rank(layer)
        activation, grad = (b.op("Transpose", [a], perm=to_channels_first(rank)) for a in (layer, grad))
    spatial = list(range(2, b.rank(x)))
    alpha = b.reduce("ReduceMean", grad, spatial)
    cam = b.reduce("ReduceSum", b.op("Mul", [alpha, activation]), [1])
    if p["relu"]:
        cam = b.op("Relu", [cam])
    empty = b.const(np.zeros(0, np.float32), np.float32, "empty")
    lead = b.op("Slice", [b.op("Shape", [cam]), b.ints([0]), b.ints([2])])
    spatial_of_x = (perm or list(range(b.rank(x))))[2:]  # x's spatial axes in channels-first order
    size = b.op("Gather", [b.op("Shape", [x]), b.ints(spatial_of_x)], axis=0)
    cam_type = b.float_type(layer)
    if cam_type == onnx.TensorProto.DOUBLE:  # onnxruntime's CPU Resize has no double kernel
        cam = b.op("Cast", [cam], to=onnx.TensorProto.FLOAT)
    sizes = b.op("Concat", [lead, size], axis=0)
    if p["interpolation"] == "linear":
        up = b.op("Resize", [cam, empty, empty, sizes], mode="linear", coordinate_transformation_mode="half_pixel")
    else:
        up = b.op("Resize", [cam, empty, empty, sizes], mode="nearest", coordinate_transformation_mode="asymmetric",
                  nearest_mode="floor")
    if b.float_type(up) != b.float_type(t.x):  # the map in x's type: a float64 cam, or a float16 layer after a Cast
        up = b.op("Cast", [up], to=b.float_type(t.x))  # of a float32 input (onnxconverter-common's keep_io_types)
    if perm is not None:
        up = b.op("Transpose", [up], perm=[int(i) for i in np.argsort(perm)])
    before = {node.name for node in live_nodes(on_path, [layer])}
    what = ("the feature map" + (", channels last" if first.get(layer) is False else "")) if tokens is None else (
        f"a token map, read as the {tokens[1].rows}x{tokens[1].cols} patch grid"
        + (f" after {tokens[0]} leading token{'s' if tokens[0] > 1 else ''}" if tokens[0] else ""))
    for node in on_path:
        if guided is not None and guided(node):
            t.assignment[node.name] = ("guided_backprop", "guided backprop's part")
        if layer in node.output:
            t.assignment[node.name] = ("grad_cam layer", f"its output is {what}" + (
                "; guided backprop's part too" if guided is not None and guided(node) else ""))
        elif node.name in before and guided is None:
            t.assignment[node.name] = ("none", f"before the Grad-CAM layer '{layer}'")
    if x != t.x:
        out = b.op("Reshape", [up, b.op("Shape", [t.x])])  # [N, 1, L] -> [N, L]
    else:
        out = b.op("Expand", [up, b.op("Shape", [x])])
    b.set_info(out, t.x)
    return out


def signal_channels(b, on_path, x: str) -> str | None:
    """For a 1-D signal x [N, L] (raw audio), the [N, 1, L] that an Unsqueeze or Reshape on the path makes of it for
    the convolutions (wav2vec2's feature encoder): its feature maps [N, C, T] have that view's rank. None otherwise."""
    if b.rank(x) != 2:
        return None
    for node in on_path:
        if node.op_type in ("Unsqueeze", "Reshape") and node.input[0] == x:
            shape = b.shape(node.output[0])
            if shape is not None and len(shape) == 3 and shape[1] == 1:
                return node.output[0]
    return None


def build_guided_grad_cam(t: Target, p: dict) -> str:
    rectifies = rectifier_test(t)
    guided = backward(t, rule_for=relu_rule("guided", rectifies))
    return t.b.op("Mul", [guided, grad_cam(t, p, guided=rectifies)])


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
          "collapse; a vision transformer's: the tokens its last attention reads)", _optional_name, _tensor_name,
          optional=True),
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
