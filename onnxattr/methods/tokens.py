"""A vision transformer's token maps read as Grad-CAM feature maps (what pytorch-grad-cam's reshape_transform does
by hand).

A ViT flattens its patch embedding, [N, C, h, w] to [N, C, h*w] then [N, h*w, C] (or a channels-last [N, h, w, C]
straight to [N, h*w, C]), and may put k class or register tokens before the patches. A token map
[N, k + h*w, C] after that is the grid [N, C, h, w] once its first k tokens are dropped. Only the tokens that
feed an attention reach the class token, so the default is the last LayerNorm output read by the last
attention (a block's norm1, as pytorch-grad-cam's ViT example picks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxattr.graph import live_nodes

MAX_PREFIX = 16  # class, distillation and register tokens before the patches


@dataclass(frozen=True)
class Grid:
    """The patch grid: rows x cols patches of ``channels`` features."""

    rows: int
    cols: int
    channels: int


def patch_grid(b, on_path, first: dict) -> tuple[Grid, int] | None:
    """The grid of the first flatten of a feature map into tokens on the path (a Reshape or Flatten from rank 4
    to rank 3 whose input's layout is known: channels first [N, C, h, w] -> [N, C, h*w], or channels last
    [N, h, w, C] -> [N, h*w, C]) and the flatten's place in ``on_path``; None when there is none."""
    for at, node in enumerate(on_path):
        if node.op_type not in ("Reshape", "Flatten"):
            continue
        shape, out = b.shape(node.input[0]), b.shape(node.output[0])
        if shape is None or out is None or len(shape) != 4 or len(out) != 3 or \
                not all(isinstance(d, int) for d in shape[1:]):
            continue
        _, p, q, r = shape
        layout = first.get(node.input[0])
        if layout is True and list(out[1:]) == [p, q * r]:
            return Grid(q, r, p), at
        if layout is False and list(out[1:]) == [p * q, r]:
            return Grid(p, q, r), at
    return None


def token_maps(b, on_path, live: set, grid: Grid, flatten: int, batch) -> dict[str, int]:
    """{tensor: its number of leading tokens} for the float tensors [N, k + rows*cols, channels] on the path after
    the flatten at ``on_path[flatten]`` (its own output [N, C, h*w] is none, whatever the sizes), 0 <= k <=
    MAX_PREFIX, not of another fixed batch size than the input's (the batch axis is often renamed on the way:
    a class token's Expand reads it from Shape(x))."""
    found = {}
    patches = grid.rows * grid.cols
    for node in on_path[flatten + 1:]:
        for o in node.output:
            shape = b.shape(o)
            if o in live and b.is_float(o) and shape is not None and len(shape) == 3 and \
                    shape[2] == grid.channels and isinstance(shape[1], int) and \
                    0 <= shape[1] - patches <= MAX_PREFIX and \
                    not (isinstance(batch, int) and isinstance(shape[0], int) and shape[0] != batch):
                found[o] = shape[1] - patches
    return found


def around_attention(on_path, live: set) -> tuple[set, set]:
    """(the tensors computed from the last attention's result, the tensors that it reads), the last attention being
    the last MatMul or Einsum of two tensors that both vary with the input; (all of the path's, none) when there is
    none. Only what the last attention reads reaches a class token read after it."""
    mixing = next((n for n in reversed(on_path) if n.op_type in ("MatMul", "Einsum") and len(n.input) == 2
                   and all(i in live for i in n.input)), None)
    if mixing is None:
        return {o for n in on_path for o in n.output}, set()
    reached = set(mixing.output)
    for node in on_path:
        if any(i in reached for i in node.input):
            reached.update(node.output)
    return reached, {o for n in live_nodes(on_path, list(mixing.input)) for o in n.output}


def default_token_map(on_path, read: set, maps: dict) -> str:
    """The last LayerNorm output among the token maps that the last attention reads (``read``, around_attention's);
    else the last token map it reads; else the last token map."""
    norms = {o for n in on_path if n.op_type == "LayerNormalization" for o in n.output[:1]}
    before = [t for t in maps if t in read]
    return ([t for t in before if t in norms] or before or list(maps))[-1]


def as_grid(b, tokens: str, prefix: int, grid: Grid) -> str:
    """[N, k + rows*cols, C] -> [N, C, rows, cols]: the first k tokens dropped, the patches in row-major order."""
    patches = b.op("Slice", [tokens, b.ints([prefix]), b.ints([prefix + grid.rows * grid.cols]), b.ints([1])])
    channels_first = b.op("Transpose", [patches], perm=[0, 2, 1])
    return b.op("Reshape", [channels_first, b.ints([0, grid.channels, grid.rows, grid.cols])])
