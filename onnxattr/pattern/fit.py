"""fit: learn the patterns of every kernel layer on the explained path from data.

The statistics graph is the canonical model with each layer's input x and pre-activation output y
(after fused bias/BatchNorm) added as graph outputs. It runs over the data one batch at a time; the
sums of onnxattr.pattern.stats are updated in float64 in numpy, so memory depends on the batch size,
never on the number of samples. Batches are visited in order: the result is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper
from tqdm import tqdm

from onnxattr.canonicalize import canonicalize
from onnxattr.errors import DataError, check_positive_int, naming_the_model, warn
from onnxattr.feeds import sliceable
from onnxattr.graph import GraphBuilder
from onnxattr.load import check_input_model, load_model, model_label
from onnxattr.pattern.layers import conv_geometry, from_kd, model_digest, pattern_layers, to_kd, weight
from onnxattr.pattern.stats import LayerStats
from onnxattr.pattern.store import DegeneratePatternWarning, Patterns, all_zero
from onnxattr.runtime import Runner
from onnxattr.select import choose_input, choose_output


def statistics_model(canon: onnx.ModelProto, b: GraphBuilder, names) -> onnx.ModelProto:
    """A copy of ``canon`` that also outputs the tensors ``names``."""
    stats = onnx.ModelProto()
    stats.CopyFrom(canon)
    have = {o.name for o in stats.graph.output} | {i.name for i in stats.graph.input}
    for name in dict.fromkeys(names):
        if name not in have:
            stats.graph.output.append(helper.make_tensor_value_info(name, b.types[name], None))
    return stats


def batches(data, batch_size: int):
    """(iterator over input batches, number of batches or None): an array is cut into slices of
    ``batch_size`` (a np.load(..., mmap_mode='r') array is read slice by slice); any other iterable
    yields whole batches, or (x, y[, w]) tuples whose first item is the batch."""
    if data is None or isinstance(data, (str, bytes)) or not (hasattr(data, "__iter__") or hasattr(data, "shape")):
        raise DataError(f"fit needs data: an array [N, ...] or an iterable of batches, got {type(data).__name__}")
    if sliceable(data):
        if len(data.shape) == 0:
            raise DataError("fit got a single number; pass an array [N, ...] of samples")
        n = data.shape[0]
        return (data[i:i + batch_size] for i in range(0, n, batch_size)), math.ceil(n / batch_size)

    def gen():
        for item in data:
            yield item[0] if isinstance(item, tuple) else item

    return gen(), (len(data) if hasattr(data, "__len__") else None)


def fit_patterns(model, data, pattern_type: str = "relu", batch_size: int = 32, input: str | None = None,
                 output: str | None = None, device: str | None = None, providers=None,
                 progress: bool = True, label: str | None = None, inputs: dict | None = None) -> Patterns:
    """Patterns of every kernel layer between the explained input and output, learned from ``data``
    (``label``: the model's name in messages; its path by default; ``inputs``: the model's other graph
    inputs, the same for every batch)."""
    from onnxattr.feeds import as_input, other_feeds  # the same input checks as analyze()

    batch_size = check_positive_int("batch_size", batch_size)
    proto = load_model(model)
    label = label or model_label(model)
    with naming_the_model(label):
        check_input_model(proto, label)
        canon = canonicalize(proto, label, float_layers=True)  # as compile does for the pattern methods
        x = choose_input(canon, input)
        b = GraphBuilder(canon)
        _, y = choose_output(canon, b, output)
        nodes = list(canon.graph.node)
        digest = model_digest(nodes, b)
        layers = pattern_layers(b, nodes, x, y)
    stats = {name: LayerStats(pattern_type, conv_geometry(b, u)) for name, u in layers.items()}
    fetch = list(dict.fromkeys(t for u in layers.values() for t in (u.x, u.out) if t != x))
    runner = Runner(statistics_model(canon, b, fetch), device, providers)
    arg = runner.session.get_inputs()[runner.input_names.index(x)]
    others = other_feeds(runner, {x}, inputs)
    it, total = batches(data, batch_size)
    samples = 0
    # the bar shows on a terminal only (disable=None), so logs and error output stay clean
    for batch in tqdm(it, total=total, desc="fit patterns", unit="batch", disable=None if progress else True):
        xb = as_input(batch, arg)
        if xb.shape[0] == 0:
            continue
        if not np.isfinite(xb).all():
            raise DataError(f"fit data holds NaN or inf (in samples {samples} to {samples + xb.shape[0] - 1}); "
                            "patterns learned from it would be NaN")
        values = dict(zip(fetch, runner.run({x: xb, **others}, fetch) if fetch else []))
        values[x] = xb
        with np.errstate(all="ignore"):  # a layer that overflows is named below, not by numpy
            for name, u in layers.items():
                stats[name].update(values[u.x], values[u.out])
        samples += xb.shape[0]
    if samples == 0:
        raise DataError("fit got no data: pass an array [N, ...] or an iterable of batches")
    arrays, zero = {}, []
    for name, u in layers.items():
        w = weight(b, u)
        with np.errstate(all="ignore"):  # non-finite sums or a cast that overflows: named below
            kd = stats[name].pattern(to_kd(u, w))
            arrays[name] = from_kd(u, kd, w)
        if not np.isfinite(arrays[name]).all():
            where = ("its input or output overflows on this data; scale the data down" if not np.isfinite(kd).all()
                     else f"they exceed the range of the layer's {arrays[name].dtype} weights (patterns do not "
                          "scale with the data); explain a float32 copy of the model")
            raise DataError(f"{label}: the patterns of layer '{name}' are not finite: {where}")
        if not kd.any():
            zero.append(name)
    if zero:
        seen = "this sample" if samples == 1 else f"these {samples} samples"
        why = ("the layers were never active or their outputs did not vary" if pattern_type == "relu"
               else "the layers' outputs did not vary")
        warn(f"{label}: {all_zero(zero, len(layers))}: on {seen} {why}, and pattern.net/pattern.attribution "
             "maps will be zero there; fit on more, and more varied, data", DegeneratePatternWarning)
    return Patterns(digest, pattern_type, arrays, samples)
