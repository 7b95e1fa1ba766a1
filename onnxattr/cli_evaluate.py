"""``onnxattr evaluate``: region perturbation curves (pixel flipping) and their AOPC for several methods' maps
of one batch, or for maps made elsewhere (onnxattr/evaluate.py)."""

from __future__ import annotations

import json
import os


from onnxattr.cli_data import (
    add_pixel_options, check_outputs, data_files, feed_paths, load_feeds, load_npy, load_samples, name_paths,
    parse_sets, parse_target, preprocess_of,
)
from onnxattr.errors import UsageError
from onnxattr.curves import ORDERS
from onnxattr.evaluate import METRICS, evaluate
from onnxattr.scoring import Scorer
from onnxattr.output import save_arrays, save_image, save_text
from onnxattr.regions import PERTURBATIONS, REDUCTIONS


def add_parser(sub) -> None:
    v = sub.add_parser("evaluate", help="how faithful and how stable are the maps: region perturbation (AOPC), "
                       "infidelity, sensitivity, per method")
    v.add_argument("model", help="ONNX model file")
    v.add_argument("--method", "-m", action="append", metavar="M",
                   help="a method whose map is evaluated (repeatable; `random` is the baseline to beat)")
    v.add_argument("--relevance", action="append", metavar="NAME=FILE.npy",
                   help="a map made elsewhere (another library's), of the data's shape, evaluated under NAME "
                        "(repeatable)")
    v.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="method parameter, given to each --method that has it (repeatable)")
    v.add_argument("--patterns", metavar="FILE.npz", help="patterns from `onnxattr fit`, for pattern.net and "
                   "pattern.attribution")
    v.add_argument("--data", required=True, nargs="+", metavar="DATA",
                   help="input batch as .npy, or image files or a folder of them, as for explain")
    add_pixel_options(v)
    v.add_argument("--neuron", default="max", choices=["max", "index", "all"],
                   help="the neuron scored (and explained): each sample's largest on the data as given, one per "
                        "sample (--target), or their sum")
    v.add_argument("--target", help="neuron index per sample for --neuron index: 3 or 3,1,4")
    v.add_argument("--input", help="graph input to explain and perturb (default: the only float input)")
    v.add_argument("--output", help="graph output to explain and score (default: the first float output; the "
                   "logits before a trailing softmax)")
    v.add_argument("--labels", metavar="Y.npy", help="class labels, one integer per sample: the curves also "
                   "follow the model's accuracy (iNNvestigate's PerturbationAnalysis with an accuracy metric)")
    v.add_argument("--metric", action="append", choices=list(METRICS),
                   help="aopc (region perturbation, the default), infidelity (Captum's) or sensitivity (Captum's "
                        "sensitivity_max; methods only); repeatable")
    v.add_argument("--order", default="morf,lerf",
                   help="morf (most relevant first), lerf (least relevant first) or both (default)")
    v.add_argument("--steps", type=int, default=100, help="perturbation steps (default 100; fewer when every "
                   "region is replaced sooner)")
    v.add_argument("--regions-per-step", type=int, default=1, help="regions replaced at each step (default 1)")
    v.add_argument("--region", help="region size per spatial axis, e.g. 9,9, or one for all (default 9 on an "
                   "image's two spatial axes, else 1)")
    v.add_argument("--channel-axis", default="auto", help="one sample's channel axis, which a region spans "
                   "whole: auto (CHW or HWC images), none, or an axis number (-1: the last)")
    v.add_argument("--perturbation", help=f"what a region becomes: {', '.join(PERTURBATIONS)} "
                   "(N(0, 0.3^2) noise, iNNvestigate's) or a number (default: mean, each channel's mean over the "
                   "region, for regions of several elements; zeros for single elements)")
    v.add_argument("--reduce", default="mean", choices=list(REDUCTIONS),
                   help="how the map is reduced over channels (default mean, as iNNvestigate)")
    v.add_argument("--aggregate", default="mean", choices=list(REDUCTIONS),
                   help="how a region's relevance is summarized (default mean, as iNNvestigate)")
    v.add_argument("--pad-mode", default="reflect", help="numpy.pad mode that fills regions past the border "
                   "(default reflect, as iNNvestigate)")
    v.add_argument("--value-range", metavar="LO,HI", help="clip the values put into the input to this range")
    v.add_argument("--seed", type=int, default=0, help="seed of the random draws: the gaussian perturbation, "
                   "infidelity's and sensitivity's perturbations (default 0)")
    v.add_argument("--draws", type=int, help="infidelity's and sensitivity's perturbations per sample (default 10)")
    v.add_argument("--infidelity-perturbation", default="noise", choices=["noise", "subset"],
                   help="infidelity moves x to x - noise (N(0, noise-scale^2)), or takes a random subset of the "
                        "elements (each with probability --subset-fraction) to --baseline")
    v.add_argument("--noise-scale", type=float, default=0.1, help="infidelity's noise (default 0.1)")
    v.add_argument("--subset-fraction", type=float, default=0.5, help="infidelity's subset share (default 0.5)")
    v.add_argument("--baseline", type=float, default=0.0, help="infidelity's reference: the value a subset takes, "
                   "and what --by-inputs divides by (x - baseline); default 0")
    v.add_argument("--by-inputs", default="auto", choices=["auto", "yes", "no"],
                   help="infidelity reads the maps against the perturbation divided by x - baseline (yes: maps "
                        "that include the input's factor: input_t_gradient, integrated_gradients, LRP), or against "
                        "the perturbation itself (no: gradient, saliency); auto (the default) chooses per method, "
                        "and yes for --relevance maps")
    v.add_argument("--normalize", action="store_true", help="infidelity first scales each map by its "
                   "least-squares factor (Captum's normalize)")
    v.add_argument("--radius", type=float, default=0.02, help="sensitivity's noise: U(-radius, radius) "
                   "(default 0.02)")
    v.add_argument("--batch-size", type=int, help="read, explain and score the data in slices of this many "
                   "samples (default: slices of 64 images' values, their maps in explain's auto slices of 16)")
    v.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    v.add_argument("--feed", action="append", metavar="NAME=FILE.npy",
                   help="another graph input of the model, passed as given (an attention mask; repeatable)")
    v.add_argument("-o", "--out", metavar="FILE.npz", help="the curves: NAME|ORDER -> scores [steps+1, N], "
                   "NAME|ORDER|regions -> regions replaced before each score, NAME|infidelity, "
                   "NAME|sensitivity_max, targets")
    v.add_argument("--json", metavar="FILE.json", help="every metric per map and sample as JSON")
    v.add_argument("--plot", metavar="FILE.png", help="the curves as a chart: the mean score against the share of "
                   "regions replaced, one panel per order, one line per map")


def _ints(text: str | None, flag: str):
    if text is None:
        return None
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} must be integers separated by commas, got '{text}'") from None
    return values


def _settings(a) -> dict:
    perturbation = a.perturbation
    if perturbation is not None and perturbation not in PERTURBATIONS:
        try:
            perturbation = float(perturbation)
        except ValueError:
            raise UsageError(f"--perturbation must be one of {', '.join(PERTURBATIONS)} or a number, got "
                             f"'{a.perturbation}'") from None
    if a.channel_axis in ("auto", "none"):
        channel = None if a.channel_axis == "none" else "auto"
    else:
        channel = _ints(a.channel_axis, "--channel-axis")
        if len(channel) != 1:
            raise UsageError(f"--channel-axis takes one axis, got '{a.channel_axis}'")
        channel = channel[0]
    value_range = None
    if a.value_range is not None:
        try:
            value_range = tuple(float(t) for t in a.value_range.split(","))
        except ValueError:
            value_range = ()
        if len(value_range) != 2:
            raise UsageError(f"--value-range must be two numbers LO,HI, got '{a.value_range}'")
    return dict(steps=a.steps, regions_per_step=a.regions_per_step, region=_ints(a.region, "--region"),
                channel_axis=channel, perturbation=perturbation, reduce=a.reduce, aggregate=a.aggregate,
                pad_mode=a.pad_mode, value_range=value_range, seed=a.seed)


def _explain_metrics(a, result, metrics) -> list[str]:
    """One sentence per metric: what was done and which way is better."""
    out = []
    if "aopc" in metrics:
        first = next(iter(next(iter(result.curves.values())).values()))
        size = "x".join(map(str, first.region_shape))
        out.append(f"AOPC: {len(first.regions) - 1} steps, each replacing {a.regions_per_step} region"
                   f"{'s' if a.regions_per_step > 1 else ''} of {size} (of {first.total_regions} per sample) by "
                   f"{first.perturbation}; the mean drop of the explained output (higher is better most relevant "
                   "first, lower least relevant first); ABPC: their difference."
                   + (" Accuracy: the share of the steps at which a sample is still classified as labelled."
                      if a.labels else ""))
    if "infidelity" in metrics:
        how = f"N(0, {a.noise_scale:g}²) noise" if a.infidelity_perturbation == "noise" else \
            f"random subsets ({a.subset_fraction:g}) set to {a.baseline:g}"
        reading = {"yes": "per unit of x - baseline", "no": "per unit of input change",
                   "auto": "per unit of x - baseline, or of input change for local maps (the gradient family)"}
        out.append(f"Infidelity: {a.draws or 10} draws of {how}, maps read {reading[a.by_inputs]}"
                   f"{', normalized' if a.normalize else ''} (lower is better).")
    if "sensitivity" in metrics:
        out.append(f"Sensitivity max: the largest relative change of the map over {a.draws or 10} copies moved by "
                   f"U(-{a.radius:g}, {a.radius:g}) (lower is better).")
    return out


def cmd_evaluate(a) -> int:
    pixels = preprocess_of(a)
    maps = name_paths(a.relevance, "--relevance")
    # every file the run reads: data, maps, feeds, rule files given as methods, files named by --set (patterns,
    # feature masks, coalitions)
    reads = [*data_files(a.data), *maps.values(), *feed_paths(a).values(),
             *(m for m in a.method or [] if m.endswith(".toml")),
             *(v for v in parse_sets(a.set).values() if os.path.isfile(v)), *([a.patterns] if a.patterns else []),
             *([a.labels] if a.labels else [])]
    check_outputs({"-o": a.out, "--json": a.json, "--plot": a.plot}, reads, a.model, images=("--plot",))
    if a.out and not a.out.endswith(".npz"):
        raise UsageError(f"-o must name a .npz file (the curves by name), got '{a.out}'")
    if a.plot and a.metric and "aopc" not in a.metric:
        raise UsageError("--plot draws the perturbation curves: add --metric aopc")
    if (a.target is not None) != (a.neuron == "index"):
        raise UsageError("--target goes with --neuron index (and --neuron index needs it)")
    if a.batch_size is not None and a.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {a.batch_size}")
    orders = [o.strip() for o in a.order.split(",")]
    if not orders or any(o not in ORDERS for o in orders):
        raise UsageError(f"--order must be morf, lerf or morf,lerf, got '{a.order}'")
    settings = _settings(a)
    relevance = {name: load_npy(path, f"--relevance {name}", mmap=True) for name, path in maps.items()}
    labels = load_npy(a.labels, "--labels") if a.labels else None
    # images are resized to the model's input size: a session only for that (evaluate makes its own); the data and
    # the maps are read a slice at a time
    x = load_samples(a.data, lambda: Scorer(a.model, a.input, a.output, a.device).x_arg.shape, pixels, lazy=True)
    metrics = a.metric or ["aopc"]
    by_inputs = {"auto": None, "yes": True, "no": False}[a.by_inputs]
    infidelity = dict(n_perturb_samples=a.draws, perturbation=a.infidelity_perturbation, noise_scale=a.noise_scale,
                      fraction=a.subset_fraction, baselines=a.baseline, multiply_by_inputs=by_inputs,
                      normalize=a.normalize, seed=a.seed)
    sensitivity = dict(n_perturb_samples=a.draws, radius=a.radius, seed=a.seed)
    params = {**parse_sets(a.set), **({"patterns": a.patterns} if a.patterns else {})}
    result = evaluate(a.model, a.method or [], x, relevance=relevance, neuron=a.neuron, target=parse_target(a.target),
                      metrics=metrics, orders=orders, input=a.input, output=a.output, inputs=load_feeds(a),
                      params=params, batch_size=a.batch_size, device=a.device,
                      progress=lambda name: print(f"evaluating {name} ...", flush=True), infidelity=infidelity,
                      sensitivity=sensitivity, labels=labels, **settings)
    print("\n".join(_explain_metrics(a, result, metrics)))
    print(f"Mean ± standard error over {x.shape[0]} samples:")
    print(result.table())
    if a.out:
        save_arrays(result.arrays(), a.out, *reads, models=[a.model])
        print(f"wrote {a.out}")
    if a.plot:
        from onnxattr.plot import curves_chart

        label = "mean score" if a.neuron != "all" else "mean sum of outputs"
        save_image(curves_chart(result, label), a.plot, *reads, models=[a.model])
        print(f"wrote {a.plot}")
    if a.json:
        save_text(json.dumps(result.per_sample(), indent=1) + "\n", a.json, *reads, models=[a.model])
        print(f"wrote {a.json}")
    return 0
