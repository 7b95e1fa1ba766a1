"""onnx's own test cases, run through the whole compiler: the single-op cases (onnx.backend.test.case.node: about
1,900 models with their data, written by the ONNX authors for every op version and attribute), and the small torch
exports at opsets 6 to 9 and sequence models shipped in onnx/backend/test/data (pytorch-converted, pytorch-operator,
simple).

For each case that onnxruntime can run, and each float input x of it, the first float output y is projected on a
fixed random v, s = sum(v * y), and ``gradient`` is compiled for x. Then either the
compiler refuses with an OnnxAttrError that names the op (or the input), or the compiled gradient equals central
differences of s computed by onnxruntime running the case's own model, along three random directions u:

    |<grad, d+> + <grad, d-> - (s(x + d+) - s(x - d-))| / 2  <=  1e-2 * scale,

with d+ = fl(x + h u) - x and d- = x - fl(x - h u) (the steps the float input actually takes, so that a large x,
onnx's softmax_large_number, is measured right), h = 3e-3, scale = |s(x + d+) - s(x)|/h + |s(x) - s(x - d-)|/h +
sum|grad * u|. onnxruntime's float32 forward carries 1e-7 relative noise, which h turns into ~1e-4 of the scale;
the largest error over all cases is under 5e-3 (MaxPool over random windows, where a step flips a near-tie);
1e-2 keeps that margin and fails a derivative off by a few percent. A direction along which the two one-sided
quotients disagree with the gradient by more than 2e-3 of the scale crosses a kink or a jump (a ReLU at 0, a tie
in a max, Floor) and says nothing: it is skipped, and a case with no other direction is skipped as such.
Before the check the float input moves by up to ±0.05 (seeded), off the examples' kinks, where that keeps the
output's shape and its finite entries; an infinite entry (an additive mask's -inf) does not move.

Of the 1,481 (node case, input) pairs run (onnx 1.23), 1,215 compile, over 118 op types, and are checked this way, and
266 are refused by name (rank-0 inputs, which onnxattr does not explain; axes or block shapes fed at run time; a
Resize's scales, a loss's class weights or a GroupNormalization's scale explained; training-mode BatchNormalization;
sequence-first recurrent inputs; Unique, OneHot and MelWeightMatrix, which have no backward rule;
DynamicQuantizeLinear, whose one float output, the scale, is held constant: its codes carry the gradient); of the
148 exported models' pairs, 141 compile (onnxruntime has no kernel for some of their old op versions,
AveragePool-1: there the reference forward is onnx's upgrade to opset 17, as onnxattr's) and 7 are refused (outputs
that read an input only through sequences). About 20 pairs are skipped at kinks. The sweep found the Pow,
ConvTranspose output_shape, LpNormalization, Attention and Scan-8 defects fixed since 574328c, which the emitters' own
tests did not reach; this test fails on each but the zero vector of LpNormalization, which the move above takes off
zero (its own test in tests/emitters/test_normalization.py keeps it). Its refusals led to the backward of CumProd,
Det, TensorScatter, volumetric GridSample, MaxPool with storage_order=1, float64 DeformConv and Conv and ConvTranspose
weights and Resize scales fed at run time, and to the expansion of LinearAttention and CausalConvWithState (each with
its own test under tests/emitters or in tests/test_expand.py).

A sweep of the cases' float16 copies (not kept: 3 minutes) found eight op families whose float16 backward failed onnx's
checker or had no float16 kernel on onnxruntime's CPU provider; test_gradient_of_float16_onnx_case keeps one or two
cases of each.

lrp.epsilon runs over the same cases (first float input): it compiles or is refused by name, and its map is finite
and of the input's shape. A sweep of ten LRP and modified-backprop methods over them found one defect (a Cast's
relevance under the LRP rules), which this catches.

Sweeps not kept (minutes each), with what they found, each now tested where the code lives: eleven LRP and
modified-backprop methods over the float16 and float64 copies (a DeformConv's modified forward lost the float type:
tests/lrp/test_units.py); the cases with their float inputs' first dim, then every dim but the channels, then
every dim declared symbolic, each map against the static model's (a symbolic dim that is 1 at run time and
broadcasts: tests/emitters/test_broadcast.py and test_linear.py; AveragePool's padded and ceil_mode windows and
stride-1 SAME pads over dynamic sizes: test_pooling.py and test_conv.py; CausalConvWithState whose definition onnx
cannot build without its channel count: tests/test_expand.py). The rest refused by name: ConvTranspose's
output_shape and auto_pad and the pools' channel count over symbolic sizes, Scans of a symbolic length.
"""

from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

import onnxattr
from onnxattr.errors import OnnxAttrError, SelectionError
from tests.test_dtypes import as_type

FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE}
H, KINK, RTOL = 3e-3, 2e-3, 1e-2
CONVERTED = {"Upsample": "Resize"}  # the opset upgrade makes an Upsample a Resize, which the refusal names
INFINITE_SLOPE = {"test_acosh_example"}  # its data hold x = 1, where acosh' is infinite (and x < 1 is outside it)


DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


@dataclass
class _Case:
    model: onnx.ModelProto
    data_sets: list  # [(inputs, outputs)], as onnx's node cases hold them


def _cases() -> dict:
    with warnings.catch_warnings():  # the case generators' own numpy overflow warnings
        warnings.simplefilter("ignore")
        from onnx.backend.test.case import node
        found = node.collect_testcases(None)
    cases = {c.name: c for c in found if len(c.model.graph.node) == 1 and c.data_sets
             and c.model.graph.node[0].domain in ("", "ai.onnx")}
    cases.update(_model_cases())
    return {name: c for name, c in cases.items() if _floats(c.model.graph.input) and _floats(c.model.graph.output)}


def _model_cases() -> dict:
    """onnx's small exported models (torch exports at opsets 6 to 9 in pytorch-converted and pytorch-operator;
    sequence models in simple), named "folder/model", with data of their inputs' shapes (standard normal floats).
    Their weights are also graph inputs (before IR 4 an initializer had to be): those inputs are dropped, as an
    exporter writes the weights today."""
    cases = {}
    for folder in ("pytorch-converted", "pytorch-operator", "simple"):
        for path in sorted(glob.glob(os.path.join(DATA, folder, "*", "model.onnx"))):
            model = onnx.load(path)
            weights = {t.name for t in model.graph.initializer}
            inputs = [i for i in model.graph.input if i.name not in weights]
            del model.graph.input[:]
            model.graph.input.extend(inputs)
            model.ir_version = max(model.ir_version, 4)
            files = glob.glob(os.path.join(os.path.dirname(path), "test_data_set_0", "input_*.pb"))
            files.sort(key=lambda f: int(f.rsplit("_", 1)[1].split(".")[0]))
            rng = np.random.default_rng(len(cases))  # their float data are torch's uninitialized memory (1e-310, 1e198)
            values = [rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
                      for v in (numpy_helper.to_array(onnx.load_tensor(f)) for f in files)]
            cases[f"{folder}/{os.path.basename(os.path.dirname(path))}"] = _Case(model, [(values, None)])
    return cases


def _floats(values, floats=FLOATS) -> list:
    """The names of the float tensors among graph inputs or outputs ``values``."""
    return [v.name for v in values if v.type.tensor_type.elem_type in floats]


CASES = _cases()


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _projected(model: onnx.ModelProto, y: str, v: np.ndarray) -> onnx.ModelProto:
    """The case's model with one output s [1, 1] = sum(v * y), as Reshape(y, [1, -1]) @ v [K, 1]: ops of every opset
    from 5 on, whatever y's rank (constants as Constant nodes: before IR 4 an initializer is also a graph input)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    g.node.extend([helper.make_node("Constant", [], ["test/v"], value=numpy_helper.from_array(v.reshape(-1, 1))),
                   helper.make_node("Constant", [], ["test/row"],
                                    value=numpy_helper.from_array(np.array([1, -1], np.int64))),
                   helper.make_node("Reshape", [y, "test/row"], ["test/y"]),
                   helper.make_node("MatMul", ["test/y", "test/v"], ["test/s"])])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("test/s", helper.np_dtype_to_tensor_dtype(v.dtype), [1, 1]))
    return out


def _runnable(case, which: int = 0, types=FLOATS):
    """(model, feeds, x, y, forward session, y's value) of a case the sweep can check for its float input number
    ``which`` (of the float ``types``), or the reason it cannot."""
    m = case.model
    if min(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) < 5:
        return "opset before 5"
    names = [i.name for i in m.graph.input]
    floats, outs = _floats(m.graph.input, types), _floats(m.graph.output, types)
    feeds = {n: np.asarray(a) for n, a in zip(names, case.data_sets[0][0])}  # (0-d values come as numpy scalars)
    if which >= len(floats):
        return f"no float input {which}"
    x, y = floats[which], outs[0]
    if not isinstance(feeds.get(x), np.ndarray) or feeds[x].size == 0:
        return "the float input is empty or not given"
    forward = None
    old = min(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) < 17
    for reference in (lambda: m, lambda: version_converter.convert_version(m, 17))[:2 if old else 1]:
        try:  # onnxruntime has no kernel for some old versions (AveragePool-1): then onnx's upgrade, as onnxattr's
            forward = _session(reference())
            y0 = forward.run([y], feeds)[0]
            break
        except Exception:  # noqa: BLE001 - an op or version onnxruntime does not run
            forward = None
    if forward is None:
        return "onnxruntime does not run it"
    moved = (feeds[x] + np.random.default_rng(0).uniform(-0.05, 0.05, feeds[x].shape)).astype(feeds[x].dtype)
    try:
        y1 = forward.run([y], {**feeds, x: moved})[0]
        if y1.shape == y0.shape and np.array_equal(np.isfinite(y1), np.isfinite(y0)):
            feeds[x], y0 = moved, y1
    except Exception:  # noqa: BLE001 - the moved input is out of the op's domain: keep the case's own
        pass
    if y0.size == 0:
        return "the output is empty"
    return m, feeds, x, y, forward, y0


def _compiled_map(method: str, name: str, which: int = 0):
    """((model, feeds, x, y, forward session, y's value), v, the map) of ``method`` compiled for the case's float input
    number ``which`` and run, the map checked to have x's shape; None where the compiler refuses it, naming an op of
    the case (or x itself); a skip where the case cannot run."""
    found = _runnable(CASES[name], which)
    if isinstance(found, str):
        pytest.skip(found)
    model, feeds, x, y, forward, y0 = found
    v = np.random.default_rng(1).standard_normal(y0.shape).astype(y0.dtype)
    ops = {n.op_type for n in model.graph.node}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compiled = onnxattr.compile(_projected(model, y, v), method, input=x)
        except OnnxAttrError as e:
            named = ops | {CONVERTED.get(o) for o in ops}
            assert any(n and n in str(e) for n in named) or isinstance(e, SelectionError) and x in str(e), str(e)
            return None
    session = _session(compiled)
    given = {i.name for i in session.get_inputs()}
    relevance = session.run(["relevance"], {k: a for k, a in feeds.items() if k in given})[0]
    assert relevance.shape == feeds[x].shape
    return found, v, relevance


@pytest.mark.parametrize("name,which", [(n, k) for n in sorted(CASES) for k in range(len(_floats(
    CASES[n].model.graph.input)))])
def test_gradient_of_onnx_node_case(name, which):
    compiled = _compiled_map("gradient", name, which)
    if compiled is None:
        return
    (model, feeds, x, y, forward, y0), v, grad = compiled
    grad = grad.astype(np.float64)
    op = "/".join(sorted({n.op_type for n in model.graph.node}))
    rng = np.random.default_rng(2)
    x0, dtype = feeds[x].astype(np.float64), feeds[x].dtype
    h = H if dtype == np.float32 else 1e-6

    def s(value):
        return float(np.sum(v.astype(np.float64) * forward.run([y], {**feeds, x: value.astype(dtype)})[0]))

    s0, checked = s(x0), 0
    for _ in range(3):
        u = rng.standard_normal(x0.shape) * np.isfinite(x0)  # (an additive mask's -inf stays)
        up, down = (x0 + h * u).astype(dtype).astype(np.float64), (x0 - h * u).astype(dtype).astype(np.float64)
        s_up, s_down = s(up), s(down)
        plus, minus = (s_up - s0) / h, (s0 - s_down) / h
        if not np.isfinite([plus, minus]).all():
            continue
        with np.errstate(invalid="ignore"):
            step_up, step_down = np.nan_to_num(up - x0), np.nan_to_num(x0 - down)  # 0 where x is infinite
        grad_up, grad_down = float(np.sum(grad * step_up)) / h, float(np.sum(grad * step_down)) / h
        scale = abs(plus) + abs(minus) + float(np.sum(np.abs(grad * u)))
        if abs((plus - grad_up) - (minus - grad_down)) > KINK * scale + 1e-4:
            continue  # a kink or a jump within h along u
        error = abs(grad_up + grad_down - plus - minus) / 2
        assert error <= RTOL * scale + 1e-5, (
            f"{op} ({name}): <grad, u> {(grad_up + grad_down) / 2:.6g}, difference quotient {(plus + minus) / 2:.6g}")
        checked += 1
    if not checked:
        pytest.skip("every direction tried crosses a kink or a jump")


def test_the_sweep_reaches_most_ops():
    """The sweep is not vacuous: the cases onnxruntime runs span well over a hundred op types."""
    ops = {CASES[n].model.graph.node[0].op_type for n in CASES if not isinstance(_runnable(CASES[n]), str)}
    assert len(ops) >= 120, sorted(ops)


@pytest.mark.parametrize("name", sorted(CASES))
def test_lrp_epsilon_on_onnx_case(name):
    """lrp.epsilon over the same cases, explained for their first float input: it compiles or is refused naming an
    op, and the compiled model runs and gives a map of the input's shape, finite where the data and outputs are.
    (The LRP rules pass relevance through Casts and other non-layer nodes by rules of their own: a Cast's passed
    relevance kept the type of its output, and an Attention with softmax_precision failed onnx's checker.)"""
    compiled = _compiled_map("lrp.epsilon", name)
    if compiled is None:
        return
    (model, feeds, x, y, forward, y0), v, relevance = compiled
    if np.isfinite(feeds[x]).all() and np.isfinite(y0).all() and name not in INFINITE_SLOPE:
        assert np.isfinite(relevance).all()


# float16 copies of cases whose backward failed in float16 (a constant or kernel of the wrong type: onnx's checker
# refused the compiled model, or onnxruntime's CPU provider had no float16 kernel for a ScatterElements add or an
# EyeLike), one or two per op
FLOAT16_CASES = ["test_gridsample_bilinear", "test_gridsample_nearest", "test_gridsample_reflection_padding",
                 "test_gridsample_bicubic", "test_gridsample_volumetric_bilinear_align_corners_0",
                 "test_basic_deform_conv_with_padding", "test_scatter_elements_with_reduction_max",
                 "test_resize_upsample_sizes_nearest", "test_resize_downsample_sizes_linear_pytorch_half_pixel",
                 "test_affine_grid_2d", "test_mvn", "test_sce_mean_weight",
                 "test_sce_NCd1d2d3_none_no_weight_negative_ii"]


@pytest.mark.parametrize("name", FLOAT16_CASES)
def test_gradient_of_float16_onnx_case(name):
    """The case in float16: its compiled gradient runs on onnxruntime's CPU provider and equals the float32 model's at
    the same (float16) point within 1e-2 of the map's largest value. float16 rounds by 4.9e-4 per op; over every
    float16 copy of onnx's cases that compiles (1,083 pairs) the largest difference was 8.2e-4 of that value."""
    case = CASES[name]
    half = _Case(as_type(case.model, "float16"), [([np.asarray(a).astype(np.float16) if np.asarray(a).dtype == np.float32
                                          else a for a in case.data_sets[0][0]], None)])
    found = _runnable(half, 0, {TensorProto.FLOAT16})
    if isinstance(found, str):
        pytest.skip(found)
    model, feeds, x, y, forward, y0 = found
    v = np.random.default_rng(1).standard_normal(y0.shape)
    maps = []
    for m, dtype in ((model, np.float16), (case.model, np.float32)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = _session(onnxattr.compile(_projected(m, y, v.astype(dtype)), "gradient", input=x))
        given = {i.name for i in session.get_inputs()}
        maps.append(session.run(["relevance"], {k: a.astype(dtype) if a.dtype == np.float16 else a
                                                for k, a in feeds.items() if k in given})[0])
    scale = np.abs(maps[1]).max()
    assert scale > 0 and np.abs(maps[0] - maps[1]).max() <= 1e-2 * scale
