"""Command line: ``onnxattr compile | explain | inspect | fit | compare | evaluate | concepts | methods``. Errors
print one line and exit non-zero (codes in onnxattr/errors.py); no traceback reaches the user for a problem with their
input."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

from onnxattr import viz
from onnxattr.api import Analyzer, compile as compile_model, inspect as inspect_model
from onnxattr import cli_concepts, cli_evaluate
from onnxattr.cli_explain import explain_and_write, explained_neurons, per_sample_sums, sums_text
from onnxattr.cli_data import (
    analyzer_input_shape, check_outputs, condition_specs, data_files, feed_paths, load_conditions,
    add_pixel_options, check_image_folder, graph_input_shape, is_folder_output, load_classes, load_feeds, load_samples,
    parse_sets, parse_target, preprocess_of, sample_image_paths,
)
from onnxattr.cli_parser import HintingParser
from onnxattr.compare import compare_analyzers
from onnxattr.errors import DataError, OnnxAttrError, OnnxAttrWarning, UsageError
from onnxattr.image_files import IMAGE_SUFFIXES
from onnxattr.methods import REGISTRY
from onnxattr.output import ReadFiles, check_destination, refuse_overwriting_input, save_model, save_text
from onnxattr.runner_io import explained_shape


def batch_size(text: str) -> int | str:
    """--batch-size: a number of samples, or auto."""
    return text if text == "auto" else int(text)


def _batch_size_option(parser) -> None:
    parser.add_argument("--batch-size", type=batch_size, default="auto", metavar="N|auto",
                        help="run the data in slices of this many samples, with a progress bar (memory grows with "
                             "the batch; the same map, but for the random methods' noise; feature_permutation "
                             "refuses slices); default auto: slices of 16 images of 3x224x224 (that many values) "
                             "where the data hold more, and one run where slices would change the map")


def _check_batch_size(a) -> None:
    if a.batch_size != "auto" and a.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer or auto, got {a.batch_size}")


def _method(a) -> str:
    """--method NAME, or --rules FILE (a preset file is a method of its own)."""
    if a.rules and a.method:
        raise UsageError("give either --method or --rules FILE, not both")
    if a.rules:
        if not a.rules.endswith(".toml"):
            raise UsageError(f"--rules expects a .toml rule file, got '{a.rules}'")
        return a.rules
    if not a.method:
        raise UsageError("--method is required (or --rules FILE); `onnxattr methods` lists the methods")
    return a.method


def _common(p, neuron=True):
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--method", "-m", help="attribution method (see `onnxattr methods`)")
    p.add_argument("--rules", metavar="FILE.toml", help="your own LRP rule map instead of --method "
                   "(same format as the presets in rules/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--patterns", metavar="FILE.npz", help="patterns from `onnxattr fit` (pattern.* methods)")
    if neuron:
        p.add_argument("--neuron", default="max", choices=["max", "index", "all"],
                       help="which output neuron to explain: the largest, one given per sample, or their sum")
    p.add_argument("--input", help="graph input to explain (default: the only float input)")
    p.add_argument("--output", help="graph output to explain (default: the first float output)")


TABLE_ROWS = 32  # compare's table: the first samples shown, then the worst of all

KEEP_HELP = ("the relevance at this tensor of the model too (repeatable; the single-pass methods: the LRP family, "
             "gradient, ...)")


def build_parser() -> argparse.ArgumentParser:
    parser = HintingParser(prog="onnxattr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="write a model that also outputs `relevance`")
    _common(c)
    c.add_argument("-o", "--out", required=True, help="compiled model path (never the input)")
    c.add_argument("--keep", action="append", metavar="TENSOR", help=KEEP_HELP + " as output relevance:TENSOR")
    c.add_argument("--condition", action="append", metavar="TENSOR", dest="condition_names",
                   help="condition the map on this tensor (Concept Relevance Propagation; repeatable, one behind the "
                        "other): the compiled model takes input condition:TENSOR, a mask broadcasting to the tensor "
                        "([N, C, 1, 1] for channels), and only relevance through the tensor, masked, reaches the input")
    e = sub.add_parser("explain", help="compile, run on data, save the relevance map")
    _common(e)
    e.add_argument("--data", required=True, nargs="+", metavar="DATA",
                   help="input batch as .npy, or image files (png, jpg, ...) or a folder of them, one sample each "
                        "(resized to the model's input size when it is fixed, then --preprocess); read a slice "
                        "(--batch-size) at a time")
    add_pixel_options(e)
    e.add_argument("--target", help="neuron index per sample for --neuron index: 3 or 3,1,4")
    e.add_argument("--classes", metavar="FILE.txt", help="the output's class names, one per line (line k names "
                   "neuron k), printed beside each sample's explained neuron")
    e.add_argument("--heatmap", help="write a heatmap PNG (one tile per sample), or into a folder (an existing one, "
                   "or a path ending in /) one PNG per sample, named after its image (a .npy batch: its name and the "
                   "sample's number)")
    e.add_argument("--graymap", help="write a graymap PNG (absolute relevance), or one per sample into a folder, "
                   "as --heatmap")
    e.add_argument("--cmap", choices=list(viz.COLORMAPS), metavar="NAME",
                   help="the heatmap's colour map: seismic (matplotlib's, iNNvestigate's; the default) or one of "
                        "Zennit's: " + ", ".join(n for n in viz.COLORMAPS if n != "seismic"))
    e.add_argument("--level", type=float,
                   help="the heatmap's contrast (Zennit's level): relevance beyond 1/level of the largest |value| "
                        "gets the colour map's ends (default 1)")
    e.add_argument("--overlay", action="store_true",
                   help="draw the heatmap over the input in grey, each element's colour as opaque as it is "
                        "relevant (the data must have the relevance's shape: an image, not token ids)")
    e.add_argument("-o", "--out", help="relevance as .npy")
    e.add_argument("--keep", action="append", metavar="TENSOR", help=KEEP_HELP + "; its sum per sample is printed")
    e.add_argument("--keep-out", metavar="FILE.npz", help="the relevance at each --keep tensor, by name")
    e.add_argument("--condition", action="append", metavar="TENSOR=CHANNELS",
                   help="the map of these channels of the tensor only (Concept Relevance Propagation): relevance "
                        "through the tensor, masked to channels 3 or 3,7 (numbers along --condition-axis), or by "
                        "MASK.npy (floats: a mask broadcasting to the tensor; integers: channel numbers, one row per "
                        "sample, or one number per sample as a vector [N]); repeatable for tensors one behind the "
                        "other")
    e.add_argument("--condition-axis", type=int, metavar="AXIS",
                   help="the channel axis of the --condition tensors (default 1; -1 for channels last)")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    _batch_size_option(e)
    e.add_argument("--feed", action="append", metavar="NAME=FILE.npy",
                   help="another graph input of the model, passed as given: an attention mask [N, S], a graph's "
                        "adjacency (repeatable; the Loop methods, integrated_gradients, smoothgrad, vargrad, "
                        "gradient_shap, deep_lift_shap, occlusion, feature_ablation, feature_permutation and the "
                        "Shapley methods, give each of a sample's points its rows when the input's first axis is "
                        "declared as the batch axis, else share it)")
    i = sub.add_parser("inspect", help="show which rule each node on the explained path gets")
    _common(i, neuron=False)
    f = sub.add_parser("fit", help="learn the patterns of pattern.net / pattern.attribution from data")
    _common(f, neuron=False)
    f.add_argument("--data", required=True, nargs="+", metavar="DATA",
                   help="training inputs as .npy [N, ...], or image files or a folder of them, one sample each "
                        "(resized to the model's input size when it is fixed, then --preprocess); read batch by "
                        "batch")
    add_pixel_options(f)
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    f.add_argument("--feed", action="append", metavar="NAME=FILE.npy",
                   help="another graph input of the model, the same for every batch (repeatable)")
    f.add_argument("-o", "--out", required=True, help="patterns .npz")
    d = sub.add_parser("compare", help="audit two exports of one model: explain the same data in both, "
                       "compare outputs and maps per sample")
    _common(d)
    d.add_argument("other", help="the second ONNX model (another export of the same network)")
    d.add_argument("--data", required=True, nargs="+", metavar="DATA",
                   help="input batch as .npy in the first model's layout, or image files or a folder of them, one "
                        "sample each (numbered in the table in the order given, a folder's by name)")
    add_pixel_options(d)
    d.add_argument("--target", help="neuron index per sample for --neuron index: 3 or 3,1,4")
    d.add_argument("--perm", help="the data's axes in the second model's order, e.g. 0,2,3,1 (default: found "
                   "from the declared input shapes)")
    d.add_argument("--input-b", help="graph input to explain in the second model (default: as for the first)")
    d.add_argument("--output-b", help="graph output to explain in the second model")
    d.add_argument("--tolerance", type=float, help="exit with code 1 when a map differs by more than this "
                   "(max |Ra - Rb| / max |Ra|) or the models choose different neurons")
    d.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    _batch_size_option(d)
    d.add_argument("--feed", action="append", metavar="NAME=FILE.npy",
                   help="another graph input, given to each model that has it (repeatable)")
    d.add_argument("--feed-b", action="append", metavar="NAME=FILE.npy",
                   help="a graph input of the second model only, in place of a --feed of that name (an attention "
                        "mask in the second export's layout; repeatable)")
    d.add_argument("--json", metavar="FILE.json", help="also write the per-sample numbers as JSON")
    cli_evaluate.add_parser(sub)
    cli_concepts.add_parser(sub)
    sub.add_parser("methods", help="list methods, their parameters and defaults")
    parser.commands = dict(sub.choices)
    return parser


def _all_params(a) -> dict:
    """--set pairs, plus --patterns FILE as the ``patterns`` parameter."""
    out = parse_sets(a.set)
    if getattr(a, "patterns", None):
        out["patterns"] = a.patterns
    return out


def _input_files(a) -> list:
    """Every file the command reads besides the model: --data, --rules, --patterns (or --set patterns=),
    --feed, --classes."""
    sets = parse_sets(getattr(a, "set", None))
    return [*data_files(getattr(a, "data", None)), a.rules, a.patterns,
            sets.get("patterns") if isinstance(sets.get("patterns"), str) else None, *feed_paths(a).values(),
            *feed_paths(a, "feed_b").values(),
            *(s for s in condition_specs(a).values() if isinstance(s, str)), getattr(a, "classes", None)]


def cmd_compile(a) -> int:
    refuse_overwriting_input(a.out, *_input_files(a), models=[a.model])
    check_destination(a.out)
    if not a.out.endswith(".onnx"):
        raise UsageError(f"-o writes the compiled ONNX model: name a .onnx file, got '{a.out}'")
    model = compile_model(a.model, _method(a), neuron=a.neuron, input=a.input, output=a.output, keep=a.keep or (),
                          condition=a.condition_names or (), **_all_params(a))
    save_model(model, a.out, a.model)
    print(f"wrote {a.out} (outputs: {', '.join(o.name for o in model.graph.output)})")
    return 0


def cmd_explain(a) -> int:
    pixels = preprocess_of(a)  # a mistake in these options is reported before any work
    classes = load_classes(a.classes) if a.classes else None
    if a.keep_out and not a.keep:
        raise UsageError("--keep-out writes the relevance at the --keep tensors: add --keep TENSOR")
    if a.keep_out and not a.keep_out.endswith(".npz"):
        raise UsageError(f"--keep-out must name a .npz file (one array per kept tensor), got '{a.keep_out}'")
    reads = _input_files(a)  # listed once: a folder of images is read from disk to list them
    images = {"--heatmap": a.heatmap, "--graymap": a.graymap}
    folders = {flag: path for flag, path in images.items() if is_folder_output(path)}
    files = {flag: path for flag, path in images.items() if flag not in folders}
    check_outputs({"-o": a.out, **files, "--keep-out": a.keep_out}, reads, a.model,
                  images=("--heatmap", "--graymap"))
    for flag, path in folders.items():
        check_image_folder(path, flag)
    if len(folders) == 2 and os.path.realpath(a.heatmap) == os.path.realpath(a.graymap):
        raise UsageError("--heatmap and --graymap name the same folder, where their files would take the same "
                         "names: give each its own")
    if a.out and not a.out.endswith(".npy"):
        raise UsageError(f"-o writes the relevance as a .npy array, got '{a.out}'"
                         + (": for an image use --heatmap or --graymap" if a.out.lower().endswith(IMAGE_SUFFIXES) else
                            ": name a .npy file"))
    if a.level is not None and not (np.isfinite(a.level) and a.level > 0):
        raise UsageError(f"--level must be a number > 0, got {a.level}")
    for given, flag in ((a.overlay, "--overlay"), (a.cmap, "--cmap"), (a.level, "--level")):
        if given and not a.heatmap:
            raise UsageError(f"{flag} is an option of the heatmap (--graymap shows |relevance| in grey): add "
                             "--heatmap FILE.png")
    _check_batch_size(a)
    if a.target is not None and a.neuron != "index":
        raise UsageError(f"--target picks the neuron for --neuron index, not --neuron {a.neuron}: add --neuron index")
    if a.neuron == "index" and a.target is None:
        raise UsageError("--neuron index needs --target (one index, or one per sample: 3,1,4)")
    analyzer = Analyzer(_method(a), a.model, neuron_selection_mode=a.neuron, input=a.input, output=a.output,
                        device=a.device, keep=a.keep or (), **_all_params(a))
    mode = "index" if a.target is not None else analyzer.mode
    conditions = load_conditions(a)
    masked = tuple(conditions or ())
    x = load_samples(a.data, analyzer_input_shape(analyzer, mode, masked), pixels, lazy=True)
    per_sample = {flag: sample_image_paths(path, data_files(a.data), len(x)) for flag, path in folders.items()}
    read = ReadFiles(reads, [a.model])  # found once for the many files of a folder of maps
    for paths in per_sample.values():  # refused before the run, not after it
        for path in paths:
            read.refuse(path)
    if a.overlay:  # the map must sit on the data: refused before the run, not after it
        explained = explained_shape(analyzer.runner(mode, masked))
        if len(explained) != x.ndim or any(isinstance(d, int) and d != n for d, n in zip(explained[1:], x.shape[1:])):
            raise DataError(f"--overlay draws the heatmap over the data, and the data {list(x.shape)} are not what "
                            f"is explained ({[d if isinstance(d, int) else '?' for d in explained]}: a tensor "
                            "computed from them, such as an embedding of token ids): leave --overlay out")
    run = dict(neuron_selection=parse_target(a.target), inputs=load_feeds(a), batch_size=a.batch_size, progress=True,
               condition=conditions, condition_axis=1 if a.condition_axis is None else a.condition_axis)
    draw = dict(cmap=a.cmap or "seismic", level=a.level or 1.0, overlay=a.overlay)
    undo = (lambda rows: rows) if pixels is None else pixels.undo  # an overlay draws over the image's pixels
    shown = explain_and_write(analyzer, x, run, a.out, a.keep_out, images, per_sample, draw, undo, read)
    used = ", ".join(next(iter(analyzer._runners.values())).providers)
    print(f"relevance {shown.shape} via {used}; sum per sample: {sums_text(shown.sums)}")
    neurons = "" if masked else explained_neurons(analyzer, mode, parse_target(a.target), shown.outputs, classes)
    if neurons:
        print(f"explained per sample: {neurons}")
    for name, kept in shown.kept.items():
        print(f"relevance at {name} {list(kept.shape)}; sum per sample: {sums_text(per_sample_sums(kept))}")
    for path in (a.out, a.keep_out):
        if path:
            print(f"wrote {path}")
    for flag, path in images.items():
        if path:
            kind = flag.lstrip("-")
            print(f"wrote {shown.shape[0]} {kind}s into {path}" if flag in per_sample else f"wrote {path}")
    return 0


def cmd_inspect(a) -> int:
    rows = inspect_model(a.model, _method(a), input=a.input, output=a.output, tensors=True, **_all_params(a))
    width = max([len(r[0]) for r in rows] + [4])
    out_width = max([len(r[2]) for r in rows] + [6])
    print(f"{'node':{width}}  {'op':20}  {'output':{out_width}}  rule")
    for name, op, tensor, rule, why in rows:
        print(f"{name:{width}}  {op:20}  {tensor:{out_width}}  {rule}" + (f"  [{why}]" if why else ""))
    return 0


def cmd_fit(a) -> int:
    refuse_overwriting_input(a.out, *_input_files(a), models=[a.model])
    if not a.out.endswith(".npz"):
        raise UsageError(f"-o must name a .npz file, got '{a.out}'")
    check_destination(a.out)
    analyzer = Analyzer(_method(a), a.model, input=a.input, output=a.output, device=a.device,
                        **_all_params(a))
    if analyzer.method.family != "pattern":
        raise UsageError(f"method '{analyzer.method.name}' learns nothing; fit is for pattern.net and "
                         "pattern.attribution")
    data = load_samples(a.data, lambda: graph_input_shape(analyzer.model, a.input), preprocess_of(a), lazy=True)
    if data.ndim == 0:
        raise DataError(f"{a.data[0]}: holds a single number; fit reads an array [N, ...] of samples")
    analyzer.fit(data, batch_size=a.batch_size, inputs=load_feeds(a))
    analyzer.save_patterns(a.out)
    print(f"wrote {a.out} ({analyzer.params['patterns']})")
    return 0


def cmd_compare(a) -> int:
    pixels = preprocess_of(a)
    if a.json:
        refuse_overwriting_input(a.json, *_input_files(a), models=[a.model, a.other])
        check_destination(a.json)
    if (a.target is not None) != (a.neuron == "index"):
        raise UsageError("--target goes with --neuron index (and --neuron index needs it)")
    if a.tolerance is not None and not 0 <= a.tolerance < float("inf"):
        raise UsageError(f"--tolerance must be a finite number >= 0, got {a.tolerance}")
    _check_batch_size(a)
    perm = None
    if a.perm is not None:
        try:
            perm = [int(p) for p in a.perm.split(",")]
        except ValueError:
            raise UsageError(f"--perm must be axis numbers separated by commas, got '{a.perm}'") from None
    first, second = (Analyzer(_method(a), model, neuron_selection_mode=a.neuron, input=i, output=o, device=a.device,
                              **_all_params(a))
                     for model, i, o in ((a.model, a.input, a.output), (a.other, a.input_b or a.input,
                                                                         a.output_b or a.output)))
    # read a slice at a time, and only the per-sample report kept: a dataset of any size
    x = load_samples(a.data, analyzer_input_shape(first, "index" if a.target is not None else first.mode), pixels,
                     lazy=True)
    feeds = load_feeds(a)
    # a feed goes to each model that has such an input (to both when neither has: the error names it)
    names = [{i.name for i in an.model.graph.input} for an in (first, second)]
    own = [{k: v for k, v in feeds.items() if k in names[i] or k not in names[1 - i]} for i in (0, 1)]
    own[1].update(load_feeds(a, "feed_b"))
    result = compare_analyzers(first, second, x, parse_target(a.target), perm, own[0], own[1],
                               batch_size=a.batch_size, progress=True, keep_maps=False)
    print(f"{first.method.name} on {a.model} (a) and {a.other} (b), neuron {a.neuron}"
          + ("" if result.perm == tuple(range(len(x.shape))) else f", data transposed {list(result.perm)} for b") + ":")
    print(result.table(TABLE_ROWS))
    if len(result.samples) > TABLE_ROWS and not a.json:
        print(f"note: the table shows the first {TABLE_ROWS} of {len(result.samples)} samples, and the worst of all; "
              "--json writes every one")
    if not result.outputs_compared:
        print("note: the explained outputs were not compared (not a graph output of both, or of shapes that differ "
              "beyond the axis order)")
    if result.other_orders:
        print(f"note: {result.other_orders} other axis order{'s' if result.other_orders > 1 else ''} of the data "
              f"also fit b's declared input; {list(result.perm)} moves the fewest axes (--perm chooses another)")
    if a.json:
        save_text(json.dumps(result.as_dict(), indent=1) + "\n", a.json, *_input_files(a), models=[a.model, a.other])
        print(f"wrote {a.json}")
    problems = result.problems(a.tolerance) if a.tolerance is not None else []
    if problems:
        print(f"onnxattr: {'; '.join(problems)} (--tolerance {a.tolerance:g})", file=sys.stderr)
        return 1
    return 0


def cmd_methods(a) -> int:
    seen = set()
    for name, m in sorted(REGISTRY.items()):
        if m.name in seen:
            continue
        seen.add(m.name)
        also = f" (also: {', '.join(m.aliases)})" if m.aliases else ""
        print(f"{m.name:32s} {m.doc}{also}")
        settings = [f"{p.name} = {p.default!r}" for p in m.params]
        width = max(map(len, settings), default=0)
        for setting, p in zip(settings, m.params):
            print(f"    {setting:{width}}  {p.doc}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        commands = {"compile": cmd_compile, "explain": cmd_explain, "inspect": cmd_inspect,
                    "fit": cmd_fit, "compare": cmd_compare, "evaluate": cli_evaluate.cmd_evaluate,
                    "concepts": cli_concepts.cmd_concepts,
                    "methods": cmd_methods}
        with warnings.catch_warnings():
            show = warnings.showwarning

            def one_line(message, category, *where, **kw):
                """onnxattr's warnings (a provider that fell back, all-zero patterns) as one line, like
                errors; other libraries' keep their file and line."""
                if issubclass(category, OnnxAttrWarning):
                    print(f"onnxattr: warning: {message}", file=sys.stderr)
                else:
                    show(message, category, *where, **kw)

            warnings.showwarning = one_line
            return commands[args.command](args)
    except (OnnxAttrError, OnnxAttrWarning) as e:  # a warning here: a filter made it an error
        print(f"onnxattr: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("onnxattr: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`onnxattr inspect ... | head`); files are already written
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe stopped


if __name__ == "__main__":
    sys.exit(main())
