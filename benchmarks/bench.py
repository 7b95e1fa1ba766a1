"""Side-by-side speed of onnxattr's compiled explanation graphs, onnxruntime's forward, Zennit and Captum.

Run it with an interpreter that has the `bench` extra (torch==2.13.0 CPU, zennit, captum) and onnxattr's
own dependencies; onnxattr is imported from this checkout:

    python benchmarks/bench.py --models resnet50 --batch 1                 # one group, prints a table
    python benchmarks/bench.py --models vgg16 --batch 1 --methods sampling
    python benchmarks/bench.py --report                                    # RESULTS.md from all groups

Each invocation builds the models by hand (benchmarks/nets.py; random weights, fixed seed, eval mode),
exports them once into a cache folder (torch.onnx.export, dynamo=False, opset 17, dynamic batch),
compiles every onnxattr method (timing the compile), then times every configuration interleaved:
one warm-up round, then --repeats rounds in which each configuration runs once; min and median are
kept, with a 0.2 s pause before each call so that one library's spinning worker threads do not
slow the next. torch and onnxruntime get the same number of threads (--threads; onnxruntime's
intra_op_num_threads, torch.set_num_threads). Peak memory is the high-water RSS (VmHWM) of a fresh
process that imports only what one configuration needs, loads or builds the model and runs it twice.
Results go to benchmarks/results/<machine>/<model>-b<batch>-<group>.json (<machine>: the CPU's name and
widest SIMD, so runs on different hosts are kept apart); --report merges them into benchmarks/RESULTS.md,
one section per machine.

Groups: `fast` = forward, gradient and the LRP family; `sampling` = integrated gradients and SmoothGrad
with 64 samples (each run is ~64 backward passes: give them their own invocation, as every shell command
here must finish in 10 minutes); `fast-a` and `fast-b` = `fast` in two halves, for a model and batch
whose sessions do not all fit in memory at once (VGG16 at batch 8 on a 24 GiB machine); `transformer` =
forward, gradient and attn_lrp against LXT 2.1 on `--models vit_b16` (LXT installed with
`pip install --no-deps lxt==2.1`; its rules are loaded as tests/oracles/make_lxt.py does); `captum-more` =
Grad-CAM, GradientSHAP (16 draws) and Occlusion (49 windows) against Captum's; `noise-tunnel` = VarGrad
(16 copies) against Captum's NoiseTunnel and beta_smooth against Zennit's BetaSmooth; `shapley` = Shapley values
of 4 blocks, Shapley value sampling over 16 blocks (2 orders) and DeepLIFT SHAP (4 baselines) against Captum's;
`permutation` = feature permutation of 16 blocks against Captum's FeaturePermutation (`--batch 2` or more);
`kernel-shap` = KernelSHAP over 16 blocks (32 coalitions) against Captum's KernelShap; `lime` = LIME (the same
coalition count, Captum's defaults otherwise: cosine similarity, Lasso) against Captum's Lime; `conductance` =
conductance over 33 points (32 steps, Gauss-Legendre), at the input and kept at a ResNet50 block's output in one
run, against Captum's LayerConductance at that block (`--models resnet50`); `metrics` = sensitivity_max, infidelity and
one region-perturbation curve of the gradient map against Captum's metrics (benchmarks/metrics_bench.py); `crp` =
8 maps of one image conditioned on one channel each of a ResNet50 block's output (EpsilonPlusFlat, Concept Relevance
Propagation: the image repeated, a mask per row) against zennit-crp's CondAttribution with those 8 conditions
(installed with `pip install --no-deps zennit-crp==0.6.0`), beside one plain EpsilonPlusFlat map of each library;
`recurrent` = on `--models lstm` or `gru` (two bidirectional LSTM or GRU layers over 100 steps), the gradient,
lrp.epsilon and IG-64 against Captum's Saliency and IntegratedGradients; `quantized` = on `--models
resnet50,resnet50-qdq,resnet50-qop` (the float model and onnxruntime's quantize_static of it in QDQ and QOperator
format: int8 weights per channel, uint8 activations calibrated on 8 random images), the forward (the quantized
exports' fused into onnxruntime's integer kernels), gradient and the three LRP methods, against no reference.
The onnxruntime forward is timed in every group, so each ratio comes from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

CACHE = Path(os.environ.get("ONNXATTR_BENCH_CACHE", Path.home() / ".cache" / "onnxattr-bench"))
RESULTS = HERE / "results"

from configs import (  # noqa: E402  (benchmarks/ is on the path)
    CALIBRATION_IMAGES, CONDUCTANCE_BLOCK, CONDUCTANCE_STEPS, CRP_CONCEPTS, GROUPS, KS_SAMPLES, NT_SAMPLES,
    OCCLUSION_STRIDE, OCCLUSION_WINDOW, OURS, PAUSE, PERMUTATIONS_PER_EVAL, QUANTIZED, STEPS, SV_ORDERS, blocks,
    dls_baselines, input_shape,
)
from report import write_report  # noqa: E402
import metrics_bench  # noqa: E402


# ---- models -----------------------------------------------------------------------------------------
def onnx_path(model: str) -> Path:
    return CACHE / f"{model}.onnx"


def compiled_path(model: str, method: str) -> Path:
    return CACHE / f"{model}.{method}.onnx"


def ensure_exported(model: str) -> Path:
    path = onnx_path(model)
    if not path.exists():
        import nets

        base, _, fmt = model.rpartition("-")
        if fmt in QUANTIZED:
            quantize(ensure_exported(base), path, QUANTIZED[fmt], input_shape(base))
            return path
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        nets.export(nets.build(model), str(tmp), input_shape(model))
        tmp.replace(path)
    return path


def quantize(source: Path, path: Path, fmt: str, shape: tuple) -> None:
    """onnxruntime's quantize_static of ``source`` in format ``fmt`` (QDQ or QOperator): int8 weights per output
    channel, uint8 activations calibrated (min-max) on CALIBRATION_IMAGES uniform random images, seed 0."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    name = onnx_input_name(source)

    class Images(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{name: rng.random((1, *shape), dtype=np.float32)} for _ in range(CALIBRATION_IMAGES)])

        def get_next(self):
            return next(self.feeds, None)

    tmp = path.with_suffix(".tmp")
    quantize_static(str(source), str(tmp), Images(), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    tmp.replace(path)


def onnx_input_name(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return next(i.name for i in graph.input if i.name not in weights)


def compile_method(model: str, name: str) -> float:
    """Compile once into the cache; returns the compile time in seconds."""
    import onnx

    import onnxattr

    spec = OURS[name]
    t = time.perf_counter()
    params = {k: v() if callable(v) else v for k, v in spec.get("params", {}).items()}  # arrays made here
    compiled = onnxattr.compile(str(onnx_path(model)), spec["method"], keep=spec.get("keep", ()),
                                condition=spec.get("condition", ()), **params)
    seconds = time.perf_counter() - t
    onnx.save(compiled, str(compiled_path(model, name)))
    return seconds


# ---- runnable configurations ---------------------------------------------------------------------
def _stub_torchvision():
    """zennit imports torchvision's ResNet blocks at import time; torchvision cannot be installed next
    to the pinned torch. Stand-in classes make the import work (we do not use zennit's ResNet canonizer:
    our ResNet is hand-written)."""
    import types

    import torch

    if "torchvision" in sys.modules:
        return
    tv, models, resnet = (types.ModuleType(n) for n in ("torchvision", "torchvision.models",
                                                         "torchvision.models.resnet"))
    resnet.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
    resnet.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
    tv.models, models.resnet = models, resnet
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})


def make_runner(config: str, model: str, x, threads: int, device: str = "cpu"):
    """A zero-argument function running ``config`` once on input x (numpy) on ``device``; setup is done here.
    On CUDA the input goes from host memory and the outputs come back to it in every call (numpy in, numpy
    out, as the Python API runs); torch's calls end with a synchronization, so each time is the whole call."""
    torch_runner = _torch_runner(config, model, x, threads, device)
    if torch_runner is not None:
        if device == "cpu":
            return torch_runner
        import torch

        def synchronized():
            out = torch_runner()
            torch.cuda.synchronize()
            return out
        return synchronized
    lib, _, name = config.partition(".")
    if lib == "onnxattr" and name in metrics_bench.CONFIGS:
        return metrics_bench.ours(name, str(onnx_path(model)), x, threads)
    if lib in ("ort", "onnxattr"):
        from onnxattr.runtime import Runner
        import onnx

        path = onnx_path(model) if lib == "ort" else compiled_path(model, name)
        runner = Runner(onnx.load(str(path)), device, threads=threads)
        if runner.fallback:
            raise SystemExit(f"{config}: {runner.fallback}")
        feeds = {runner.input_names[0]: x}
        if lib == "onnxattr" and OURS.get(name, {}).get("condition"):  # one image, a one-hot channel mask per row
            import numpy as np

            from onnxattr.condition import CONDITION, conditioned_shapes

            if len(x) != 1:
                raise SystemExit("the crp group explains the concepts of one image: --batch 1")
            feeds = {runner.input_names[0]: np.repeat(x, CRP_CONCEPTS, 0)}
            for tensor, shape in conditioned_shapes(runner.session.get_modelmeta().custom_metadata_map).items():
                mask = np.zeros((CRP_CONCEPTS, shape[1], 1, 1), np.float32)
                mask[np.arange(CRP_CONCEPTS), np.arange(CRP_CONCEPTS)] = 1.0
                feeds[CONDITION + tensor] = mask
        return lambda: runner.run(feeds)
    raise KeyError(config)


def _torch_runner(config: str, model: str, x, threads: int, device: str):
    """The torch side of make_runner (the model, Zennit, Captum, LXT on ``device``); None for onnxattr and
    onnxruntime's configurations."""
    lib, _, name = config.partition(".")
    if lib in ("ort", "onnxattr"):
        return None
    import torch

    import nets

    torch.set_num_threads(threads)
    net = nets.build(model).to(device)
    xt = torch.from_numpy(x).to(device)
    with torch.no_grad():
        target = net(xt).argmax(1)  # the references are given the class; onnxattr finds it in-graph
    if config == "torch.forward":
        def run():
            with torch.no_grad():
                return net(xt)
        return run
    if lib == "captum" and name in metrics_bench.CONFIGS:
        return metrics_bench.captum(name, net, xt, target)
    if lib == "captum":
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

        xg = xt.clone().requires_grad_(True)
        if name == "saliency":
            sal = Saliency(net)
            return lambda: sal.attribute(xg, target=target, abs=False)
        if name == "integrated_gradients":
            ig = IntegratedGradients(net)
            return lambda: ig.attribute(xg, baselines=0.0, target=target, n_steps=STEPS, method="riemann_left",
                                        internal_batch_size=16 * x.shape[0])
        if name in ("smoothgrad", "vargrad"):
            nt = NoiseTunnel(Saliency(net))
            samples = STEPS if name == "smoothgrad" else NT_SAMPLES
            return lambda: nt.attribute(xg, nt_type=name, nt_samples=samples, nt_samples_batch_size=16,
                                        stdevs=1.0, target=target, abs=False)
        from captum.attr import GradientShap, LayerAttribution, LayerGradCam, Occlusion

        if name == "grad_cam":  # the module whose output is onnxattr's default layer: the last block / pool
            layer = net.layers[-1] if hasattr(net, "layers") else net.features[-1]
            cam = LayerGradCam(net, layer)
            return lambda: LayerAttribution.interpolate(cam.attribute(xg, target=target, relu_attributions=True),
                                                        tuple(x.shape[2:]), "bilinear")
        if name == "gradient_shap":
            gs, baselines = GradientShap(net), torch.zeros((4,) + tuple(x.shape[1:]), device=device)
            return lambda: gs.attribute(xg, baselines=baselines, n_samples=16, target=target)
        if name in ("shapley_values", "shapley_value_sampling"):
            from captum.attr import ShapleyValues, ShapleyValueSampling

            exact = name == "shapley_values"
            sv = ShapleyValues(net) if exact else ShapleyValueSampling(net)
            mask = torch.from_numpy(blocks(2 if exact else 4))[None].to(device)
            extra = {} if exact else {"n_samples": SV_ORDERS}

            def run():
                with torch.no_grad():
                    return sv.attribute(xt, baselines=0.0, target=target, feature_mask=mask,
                                        perturbations_per_eval=8, **extra)
            return run
        if name in ("kernel_shap", "lime"):
            from captum.attr import KernelShap, Lime

            ks = (KernelShap if name == "kernel_shap" else Lime)(net)
            mask = torch.from_numpy(blocks(4))[None].to(device)

            def run():
                with torch.no_grad():
                    return ks.attribute(xt, baselines=0.0, target=target, feature_mask=mask, n_samples=KS_SAMPLES,
                                        perturbations_per_eval=8)
            return run
        if name == "feature_permutation":
            from captum.attr import FeaturePermutation

            fp, mask = FeaturePermutation(net), torch.from_numpy(blocks(4))[None].to(device)

            def run():
                with torch.no_grad():
                    return fp.attribute(xt, target=target, feature_mask=mask,
                                        perturbations_per_eval=PERMUTATIONS_PER_EVAL)
            return run
        if name == "layer_conductance":  # the block whose output onnxattr keeps (configs.CONDUCTANCE_TENSOR)
            from captum.attr import LayerConductance

            lc = LayerConductance(net, net.layers[CONDUCTANCE_BLOCK])
            return lambda: lc.attribute(xg, baselines=0.0, target=target, n_steps=CONDUCTANCE_STEPS,
                                        internal_batch_size=16 * x.shape[0])
        if name == "deep_lift_shap":
            from captum.attr import DeepLiftShap

            dls, baselines = DeepLiftShap(net), torch.from_numpy(dls_baselines()).to(device)
            return lambda: dls.attribute(xg, baselines=baselines, target=target)
        if name == "occlusion":
            occ = Occlusion(net)

            def run():
                with torch.no_grad():
                    return occ.attribute(xt, sliding_window_shapes=OCCLUSION_WINDOW, strides=OCCLUSION_STRIDE,
                                         baselines=0.0, target=target, perturbations_per_eval=8)
            return run
    if config == "lxt.attn_lrp":  # x * x.grad through LXT's rule functions (tests/oracles/make_lxt.py)
        onehot = torch.nn.functional.one_hot(target, 1000).float()

        def run():
            xg = xt.clone().requires_grad_(True)
            net(xg, lxt="attn").backward(onehot)
            return xg * xg.grad
        return run
    if lib == "zennit":
        _stub_torchvision()
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import BetaSmooth, EpsilonPlusFlat, LayerMapComposite, layer_map_base
        from zennit.rules import Epsilon, ZPlus
        from zennit.types import Convolution, Linear

        canon = [SequentialMergeBatchNorm()]
        composite = {
            "gradient": None,
            "epsilon": LayerMapComposite(layer_map_base() + [(Convolution, Epsilon()), (Linear, Epsilon())],
                                         canonizers=canon),
            "epsilon_plus_flat": EpsilonPlusFlat(canonizers=canon),
            # Deep Taylor's z+ everywhere, gradient through ReLUs (as onnxattr's deep_taylor)
            "zplus": LayerMapComposite([(Convolution, ZPlus()), (Linear, ZPlus())], canonizers=canon),
            "beta_smooth": BetaSmooth(),
            "crp": None,
        }[name]
        onehot = torch.nn.functional.one_hot(target, 1000).float()
        seed = (lambda out: onehot) if name in ("gradient", "beta_smooth") else (lambda out: out * onehot)
        if name == "crp":  # zennit-crp: 8 conditions on one image, which it repeats (exclude_parallel)
            from crp.attribution import CondAttribution

            attribution, layer = CondAttribution(net), f"layers.{CONDUCTANCE_BLOCK}"
            conditions = [{"y": [int(target[0])], layer: [c]} for c in range(CRP_CONCEPTS)]
            xg = xt.clone().requires_grad_(True)
            return lambda: attribution(xg, conditions, EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]))
        attributor = Gradient(net, composite)
        attributor.__enter__()  # hooks registered once, outside the timed calls
        xg = xt.clone().requires_grad_(True)
        return lambda: attributor(xg, seed)
    raise KeyError(config)


# ---- timing ----------------------------------------------------------------------------------------
def time_group(model: str, batch: int, configs: list[str], repeats: int, threads: int, device: str = "cpu") -> dict:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch,) + input_shape(model)).astype(np.float32)
    runners = {}
    for c in configs:
        runners[c] = make_runner(c, model, x, threads, device)
    times = {c: [] for c in configs}
    for c, run in runners.items():  # warm-up round
        run()
    for _ in range(repeats):
        for c, run in runners.items():
            time.sleep(PAUSE)  # let the previous library's spinning worker threads go idle
            t = time.perf_counter()
            run()
            times[c].append(time.perf_counter() - t)
    return {c: {"min": min(v), "median": float(np.median(v)), "runs": v} for c, v in times.items()}


def child_memory(config: str, model: str, batch: int, threads: int) -> None:
    """In a fresh process: build, run twice, print the peak RSS in MiB."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch,) + input_shape(model)).astype(np.float32)
    run = make_runner(config, model, x, threads)
    run()
    run()
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """VmHWM of this process (ru_maxrss would carry the parent's high-water mark over fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(config: str, model: str, batch: int, threads: int) -> float | None:
    out = subprocess.run([sys.executable, __file__, "--child-memory", config, "--models", model,
                          "--batch", str(batch), "--threads", str(threads)],
                         capture_output=True, text=True, timeout=1800)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    except (IndexError, ValueError, KeyError):
        print(f"  memory of {config} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None


# ---- machine ----------------------------------------------------------------------------------------
def machine(device: str = "cpu") -> dict:
    import numpy
    import onnx
    import onnxruntime

    info = {"python": platform.python_version(), "numpy": numpy.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "cores": os.cpu_count(), "platform": platform.platform()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        flags = next(ln for ln in text.splitlines() if ln.startswith("flags"))
        info["simd"] = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "fma") if f" {f}" in flags)
        # hosts that share a name ("AMD EPYC") differ by generation: recorded beside the results
        for field in ("cpu family", "model"):
            info[field.replace(" ", "_")] = next(ln.split(":", 1)[1].strip() for ln in text.splitlines()
                                                 if ln.split(":")[0].strip() == field)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("torch", "zennit", "captum", "lxt"):
        try:
            info[mod] = version(mod)
        except PackageNotFoundError:
            pass
    if device == "cuda":  # the GPU's name and driver, and whether TF32 may round float32 products
        info["device"] = "cuda"
        info["onnxruntime_build"] = ", ".join(onnxruntime.get_available_providers())
        try:
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            smi = subprocess.run(query, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[0]
            info["gpu"], info["driver"], info["gpu_memory"] = (f.strip() for f in smi.split(","))
        except (OSError, IndexError, ValueError, subprocess.SubprocessError):
            info["gpu"] = "unknown GPU"
        try:
            import torch

            info["torch_cuda"] = torch.version.cuda
            info["torch_tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32,
                                  "matmul": torch.backends.cuda.matmul.allow_tf32}
        except ImportError:
            pass
    info["load_before"] = os.getloadavg()[0]
    return info


def machine_key(info: dict) -> str:
    """A folder name for the machine: its CPU's name and widest SIMD, e.g. amd-epyc-avx2; the GPU's name for
    CUDA runs, e.g. nvidia-h200-cuda."""
    if info.get("device") == "cuda":
        name, tail = info["gpu"], "cuda"
    else:
        simd = info.get("simd", "").split()
        widest = next((f for f in ("avx512f", "avx2") if f in simd), "generic")
        name, tail = info.get("cpu") or "cpu", widest.replace("avx512f", "avx512")
    words = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).split("-")
    return "-".join(part for part in words + [tail] if part)


# ---- main -------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16,resnet50")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--methods", default="fast", help="a group (fast, sampling, transformer, captum-more, "
                    "noise-tunnel, shapley, permutation, kernel-shap, lime, conductance, metrics, crp, recurrent, "
                    "quantized) or comma-separated configs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="3 repeats, no memory runs (a smoke test)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--report", action="store_true", help="write RESULTS.md from benchmarks/results/*/*.json")
    ap.add_argument("--tag", help="name of this group's result file when --methods lists configurations")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where onnxruntime and torch run "
                    "(cuda: onnxruntime-gpu's CUDA provider and torch on the GPU; no peak-memory runs)")
    ap.add_argument("--child-memory", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.report:
        print(write_report(HERE / "RESULTS.md", RESULTS))
        return
    if a.child_memory:
        child_memory(a.child_memory, a.models, int(a.batch), a.threads)
        return
    configs = GROUPS.get(a.methods) or a.methods.split(",")
    group = a.methods if a.methods in GROUPS else (a.tag or "custom")
    if "ort.forward" not in configs:
        configs = ["ort.forward"] + configs  # every ratio comes from the same run
    repeats = 3 if a.quick else a.repeats
    for model in a.models.split(","):
        ensure_exported(model)
        info = machine(a.device)
        compile_s = {}
        for c in configs:
            lib, _, name = c.partition(".")
            if lib == "onnxattr" and name not in metrics_bench.CONFIGS:  # the metrics compile in their setup
                compile_s[name] = compile_method(model, name)
                print(f"{model}: compiled {name} in {compile_s[name]:.2f} s", flush=True)
        for batch in (int(b) for b in a.batch.split(",")):
            times = time_group(model, batch, configs, repeats, a.threads, a.device)
            memory = {}
            if not (a.quick or a.no_memory or a.device == "cuda"):
                memory = {c: peak_memory(c, model, batch, a.threads) for c in configs}
            result = {"model": model, "batch": batch, "group": group, "repeats": repeats, "threads": a.threads,
                      "machine": info, "compile": compile_s, "times": times, "memory": memory,
                      "load_after": os.getloadavg()[0]}
            folder = RESULTS / machine_key(info)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{model}-b{batch}-{group}.json").write_text(json.dumps(result, indent=1))
            fwd = times["ort.forward"]["min"]
            for c, v in times.items():
                print(f"{model} b{batch} {c:34s} min {v['min'] * 1e3:9.1f} ms  median {v['median'] * 1e3:9.1f}"
                      f"  x fwd {v['min'] / fwd:5.2f}  mem {memory.get(c)}", flush=True)


if __name__ == "__main__":
    main()
