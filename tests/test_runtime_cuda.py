"""onnxattr/runtime.py on onnxruntime's CUDA provider: every method's compiled graph runs there, no node the
compiler appended falls back to the CPU, and the maps equal the CPU's. Skipped without onnxruntime-gpu and a GPU
(CI has neither); benchmarks/cuda.sh runs it on a GPU machine.

Tolerance: the CUDA sessions run with TF32 off (``use_tf32=0``), so float32 products round as on the CPU and
the maps differ only by summation order (cuDNN's algorithms, the atomics of ScatterElements' add): 1e-3
relative, 1e-4 of the map's largest value absolute, which leaves room for LRP's division by small stabilized
denominators and is far below any difference a wrong kernel makes. The exported models' maps also get 8 times
what a one-ulp change of the input does to the CPU's map (rounding_noise), as a deep net's LRP map is that
sensitive: yolov8n's lrp.epsilon map moved one of its 24576 values by 1.4e-4 of its max on an H200."""

import io
import os
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxattr
from onnxattr.cli import main as cli_main
from onnxattr.methods import REGISTRY
from onnxattr.runtime import Runner, node_placement
from tests.lrp.nets import resnet_like
from tests.test_cuda_coverage import METHODS, PARAMS, THIRDPARTY, a_neuron

CUDA_EP = "CUDAExecutionProvider"
pytestmark = pytest.mark.skipif(CUDA_EP not in ort.get_available_providers(),
                                reason="needs onnxruntime-gpu and a GPU (see the README's GPU section)")
STRICT = [(CUDA_EP, {"use_tf32": "0"}), "CPUExecutionProvider"]
FLOATS = {"float", "double", "float16", "bfloat16"}
ROOT = Path(__file__).resolve().parents[1]


def float_nodes_off_cuda(placed, appended_only=False):
    """Nodes that produce a floating tensor and ran elsewhere than CUDA (shape arithmetic, int64, stays on the
    CPU by design); ``appended_only``: those the compiler appended (named oa/...), not the model's own, and only
    the true fallbacks among them (no CUDA kernel; node_placement's ``fallback``), not those onnxruntime put on
    the CPU because all their inputs were there (a scale read off Shape, or what follows a model's own node
    without a CUDA kernel: torch_stn's AffineGrid)."""
    return sorted(f"{p['op']} {p['node']}" for p in placed if p["provider"] != CUDA_EP and FLOATS & set(p["outputs"])
                  and (not appended_only or p["node"].startswith("oa/") and p.get("fallback", True)))


def run_both(compiled, feeds):
    cpu = Runner(compiled, "cpu").run(feeds)
    cuda = Runner(compiled, providers=STRICT)
    assert cuda.providers[0] == CUDA_EP and cuda.fallback is None
    return cpu, cuda.run(feeds)


def assert_same_maps(cpu, cuda, what, noise=None):
    """``noise``: per output, how far a one-ulp change of the input moves the CPU's map (rounding_noise); the
    absolute tolerance is at least 8 times that, room for the few ulps per layer that cuDNN's algorithms
    round differently."""
    for k, (a, b) in enumerate(zip(cpu, cuda)):
        assert a.shape == b.shape, what
        if np.issubdtype(a.dtype, np.floating):
            scale = float(np.abs(a[np.isfinite(a)]).max(initial=0.0))
            atol = max(1e-4 * max(scale, 1e-30), 8 * noise[k] if noise else 0.0)
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=atol, err_msg=what)
        else:
            np.testing.assert_array_equal(b, a, err_msg=what)


def rounding_noise(compiled, feeds, draws=3):
    """Per output, the largest change of the CPU's result when each input element moves by one ulp (relative
    2^-23, random sign): how much float32 rounding alone moves this map. A deep detector's LRP map (yolov8n,
    max 3e-21) moves by up to 7e-5 of its max, against 1e-4 allowed by the default tolerance."""
    runner = Runner(compiled, "cpu")
    base = runner.run(feeds)
    worst = [0.0] * len(base)
    for d in range(draws):
        signs = {k: np.random.default_rng(100 + d).choice([-1.0, 1.0], v.shape) for k, v in feeds.items()}
        moved = runner.run({k: (v * (1 + 2.0 ** -23 * signs[k])).astype(v.dtype) for k, v in feeds.items()})
        for k, (a, b) in enumerate(zip(base, moved)):
            if np.issubdtype(a.dtype, np.floating):
                finite = np.isfinite(a) & np.isfinite(b)
                worst[k] = max(worst[k], float(np.abs(b - a)[finite].max(initial=0.0)))
    return worst


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_cuda_and_equals_the_cpu(method):
    net = resnet_like(bias=True, batchnorm=True)
    params = a_neuron(net) if method == "neuron_conductance" else PARAMS.get(method, {})
    compiled = onnxattr.compile(net, method, **params)
    x = np.random.default_rng(0).standard_normal((3, 2, 8, 8)).astype(np.float32)
    feeds = {compiled.graph.input[0].name: x}
    placed = node_placement(compiled, feeds, providers=STRICT)
    assert any(p["provider"] == CUDA_EP for p in placed)
    off = float_nodes_off_cuda(placed)
    assert not off, f"{method}: float nodes ran on the CPU: {off}"
    cpu, cuda = run_both(compiled, feeds)
    if REGISTRY[method].random:  # CUDA draws other numbers from the same seed: the shapes, and finite maps
        assert [a.shape for a in cpu] == [b.shape for b in cuda] and np.isfinite(cuda[-1]).all()
    else:
        assert_same_maps(cpu, cuda, method)


def _feeds(model, rng):
    shape = [d.dim_value or {"height": 64, "width": 64}.get(d.dim_param, 2)
             for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {model.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("name", ["opset_sweep_9", "opset_sweep_17", "paddle_cnn", "torch_dynamo_modern",
                                  "torch_stn", "keras_transformer", "yolov8n"])
@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon", "lrp.epsilon_plus_flat", "integrated_gradients"])
def test_exported_models_run_on_cuda_and_equal_the_cpu(name, method):
    """Exports from torch (both exporters), Keras, Paddle and Ultralytics: no appended node falls back to the
    CPU (a model's own op without a CUDA kernel may: onnxruntime's business, reported by node_placement)."""
    model = onnx.load(os.path.join(THIRDPARTY, f"{name}.onnx"))
    compiled = onnxattr.compile(model, method)
    feeds = _feeds(model, np.random.default_rng(1))
    off = float_nodes_off_cuda(node_placement(compiled, feeds, providers=STRICT), appended_only=True)
    assert not off, f"{name} {method}: appended float nodes ran on the CPU: {off}"
    cpu, cuda = run_both(compiled, feeds)
    assert_same_maps(cpu, cuda, f"{name} {method}", noise=rounding_noise(compiled, feeds))


def test_the_cli_reports_the_cuda_provider(tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        rc = cli_main(["explain", str(ROOT / "models" / "digits_cnn.onnx"), "--method", "lrp.epsilon", "--data",
                  str(ROOT / "models" / "digits_sample.npy"), "--device", "cuda", "-o", str(tmp_path / "r.npy")])
    assert rc == 0
    assert f"via {CUDA_EP}" in out.getvalue()
    want = onnxattr.create_analyzer("lrp.epsilon", str(ROOT / "models" / "digits_cnn.onnx")).analyze(
        np.load(ROOT / "models" / "digits_sample.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), want, rtol=1e-2, atol=1e-3 * np.abs(want).max())
