"""``onnxattr concepts``: the channels of a layer over a dataset, ranked by their relevance for the outputs, with
each channel's most relevant and most activating samples and its conditioned reference maps (Concept Relevance
Propagation's relevance maximization; onnxattr/concepts.py)."""

from __future__ import annotations

import os

import numpy as np

from onnxattr import viz
from onnxattr.api import Analyzer
from onnxattr.cli_data import (
    add_pixel_options, check_outputs, data_files, feed_paths, load_feeds, load_npy, load_samples, parse_sets,
    preprocess_of,
)
from onnxattr.concepts import concepts, shares
from onnxattr.errors import UsageError
from onnxattr.methods import get_method
from onnxattr.output import save_arrays, save_image
from onnxattr.runner_io import data_input


def add_parser(sub) -> None:
    c = sub.add_parser("concepts", help="a layer's channels over a dataset: their relevance, their most relevant "
                       "samples and conditioned reference maps (CRP)")
    c.add_argument("model", help="ONNX model file")
    c.add_argument("--method", "-m", required=True, metavar="M",
                   help="a method that forms its map in one reverse pass (the LRP family, gradient, ...), or a "
                        ".toml rule file")
    c.add_argument("--layer", required=True, metavar="TENSOR", help="the tensor whose channels are the concepts "
                   "(`onnxattr inspect` lists the tensor names)")
    c.add_argument("--data", required=True, nargs="+", metavar="DATA",
                   help="the dataset: a .npy array [N, ...], or image files or a folder of them")
    add_pixel_options(c)
    c.add_argument("--labels", metavar="Y.npy", help="one class per sample: each sample is explained at its label "
                   "(as zennit-crp explains its dataset's targets); default: at its largest output")
    c.add_argument("--top", type=int, default=8, help="samples kept per channel (default 8)")
    c.add_argument("--show", type=int, default=5, help="channels listed, largest mean relevance share first "
                   "(default 5)")
    c.add_argument("--channel", action="append", type=int, metavar="C",
                   help="a channel whose reference maps are made (repeatable; default with --references: the "
                        "channels listed)")
    c.add_argument("--reference-start", default="layer", choices=["layer", "output"],
                   help="reference maps start at the layer, from the channel's activation (zennit-crp's references: "
                        "what in the input makes the concept fire; the default), or at the explained output (CRP's "
                        "conditional heatmap: where the concept's evidence for the prediction or label lies)")
    c.add_argument("--receptive-field", action="store_true",
                   help="condition each reference map on the channel's most relevant unit in that sample only (the "
                        "evidence in its receptive field, zennit-crp's mask_rf), not on the whole channel")
    c.add_argument("--below", metavar="TENSOR", help="a tensor below the layer: for each listed channel, the "
                   "channels of TENSOR its relevance comes from in its most relevant samples (zennit-crp's attribution "
                   "graph), largest mean share first")
    c.add_argument("--condition-axis", type=int, default=1, metavar="AXIS",
                   help="the channel axis of --layer and --below (default 1; -1 for channels last)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    c.add_argument("--patterns", metavar="FILE.npz", help="patterns from `onnxattr fit` (pattern.* methods)")
    c.add_argument("--input", help="graph input to explain (default: the only float input)")
    c.add_argument("--output", help="graph output to explain (default: the first float output; the logits before "
                   "a trailing softmax)")
    c.add_argument("--batch-size", type=int, default=32, help="samples per run (default 32)")
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.add_argument("--feed", action="append", metavar="NAME=FILE.npy",
                   help="another graph input of the model, one row per sample (repeatable)")
    c.add_argument("-o", "--out", metavar="FILE.npz", help="relevance and activation [N, C] (sums per channel) and "
                   "their shares, top_relevance and top_activation [C, top] (sample indices), reference:C [top, ...], "
                   "with --receptive-field field:C [top] (each reference's unit: its flat index in the channel), "
                   "with --below below:C [top, C'] (the lower tensor's channels' relevance within channel C), and "
                   "for images files (each sample's file, in the order of the indices)")
    c.add_argument("--references", metavar="FILE.png", help="one row per channel: the heatmaps of its most "
                   "relevant samples, each conditioned on the channel")


def cmd_concepts(a) -> int:
    pixels = preprocess_of(a)
    reads = [*data_files(a.data), *feed_paths(a).values(), *([a.labels] if a.labels else []),
             *([a.method] if a.method.endswith(".toml") else []), *([a.patterns] if a.patterns else []),
             *(v for v in parse_sets(a.set).values() if os.path.isfile(v))]
    check_outputs({"-o": a.out, "--references": a.references}, reads, a.model, images=("--references",))
    if a.out and not a.out.endswith(".npz"):
        raise UsageError(f"-o must name a .npz file (the statistics by name), got '{a.out}'")
    if a.channel and not (a.references or a.out):
        raise UsageError("--channel chooses the channels whose reference maps are made: add --references FILE.png "
                         "or -o FILE.npz")
    for flag, value in (("--top", a.top), ("--show", a.show), ("--batch-size", a.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    params = {**parse_sets(a.set), **({"patterns": a.patterns} if a.patterns else {})}
    labels = load_npy(a.labels, "--labels") if a.labels else None
    x = load_samples(a.data, lambda: data_input(  # read a slice at a time (a folder: each image when it is run)
        Analyzer(a.method, a.model, input=a.input, output=a.output, **params).runner("max")).shape, pixels,
        lazy=True)
    common = dict(labels=labels, top=a.top, axis=a.condition_axis, batch_size=a.batch_size, inputs=load_feeds(a),
                  device=a.device, input=a.input, output=a.output, progress=True, receptive_field=a.receptive_field,
                  start=a.reference_start, **params)
    if a.references or a.channel or a.below:  # conditioned maps: refused before the dataset runs, not after
        method = get_method(a.method)
        if not method.conditional:
            raise UsageError(f"reference maps and --below condition maps on a channel, and {method.name} cannot be "
                             "conditioned (it is not one reverse pass): use an LRP method or the gradient family")
    result = concepts(a.model, a.method, a.layer, x, **common)
    if a.channel:  # before the table is printed
        result.check_channels(a.channel)
    mean_share = result.relevance_share.mean(axis=0)
    listed = [int(c) for c in np.argsort(-mean_share, kind="stable")[:a.show]]
    at = "its label" if labels is not None else "its largest output"
    print(f"concepts of {a.layer}: {result.relevance.shape[1]} channels over {len(x)} samples, each explained at "
          f"{at}; the {len(listed)} with the largest mean relevance share:")
    print(f"{'channel':>8} {'relevance share':>16} {'activation share':>17}  most relevant samples | most activating")
    for c in listed:
        print(f"{c:>8} {mean_share[c]:>16.4f} {result.activation_share[:, c].mean():>17.4f}  "
              f"{','.join(map(str, result.top_relevance[c]))} | {','.join(map(str, result.top_activation[c]))}")
    parts = {}
    if a.below:
        print(f"each channel's relevance in its {min(a.top, len(x))} most relevant samples comes from these channels "
              f"of {a.below} (mean share):")
        for c in listed:
            parts[c] = result.below(c, a.below, a.condition_axis)
            share = shares(parts[c]).mean(axis=0)
            order = np.argsort(-share, kind="stable")[:3]
            print(f"{c:>8}  " + ", ".join(f"{int(k)} ({share[k]:.3f})" for k in order))
    chosen = list(dict.fromkeys(a.channel or (listed if a.references else [])))
    result.add_references(chosen)
    if a.out:
        images = data_files(a.data) if not (len(a.data) == 1 and a.data[0].lower().endswith(".npy")) else []
        save_arrays({**result.arrays(), **{f"below:{c}": v for c, v in parts.items()},
                     **({"files": np.array(images)} if images else {})}, a.out, *reads, models=[a.model])
        print(f"wrote {a.out}")
    if a.references:
        rows = [viz.grid(result.references[c]) for c in chosen]
        save_image(viz.stack_rows(rows), a.references, *reads, models=[a.model])
        print(f"wrote {a.references} (rows: channels {', '.join(map(str, chosen))})")
    return 0
