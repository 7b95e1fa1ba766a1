"""One perturbation curve (region perturbation, pixel flipping; Samek et al. 2017, "Evaluating the visualization
of what a deep neural network has learned"; iNNvestigate's tools.PerturbationAnalysis): replace the input's regions
in the order the map ranks them and follow the explained output. With s_k the selected neuron's score after k steps
(k = 0: the data as given) over L steps,

    AOPC = 1/(L+1) · Σ_{k=0..L} (s_0 − s_k)

per sample. Most relevant first (MoRF), a faithful map makes the score fall fast (AOPC large); least relevant
first (LeRF) it should hold (AOPC small); ABPC = AOPC(MoRF) − AOPC(LeRF) is the area between the two curves.
The model runs on onnxruntime, one forward pass per step over the batch (several steps stacked into one run).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from onnxattr.errors import DataError, UsageError, check_positive_int
from onnxattr.regions import (
    Layout, RegionPerturber, check_pad_mode, check_perturbation, check_reductions, layout, region_ranks,
    region_scores,
)
from onnxattr.scoring import Scorer, check_labels, check_relevance, check_seed, scored_batch, settings_of

ORDERS = ("morf", "lerf")
ROWS_PER_RUN = 32  # perturbed samples per forward pass, several steps together


@dataclass
class PerturbationCurve:
    """One order's curve: ``scores[k, n]`` is sample n's selected output after ``regions[k]`` of its
    ``total_regions`` regions (of ``region_shape`` each) were replaced (``regions[0]`` = 0: the data as given)."""

    order: str
    regions: np.ndarray
    scores: np.ndarray
    total_regions: int
    region_shape: tuple = ()
    perturbation: object = None  # what a replaced region became
    correct: np.ndarray | None = None  # [L+1, N] bool: the model's choice equals the sample's label (labels given)

    @property
    def aopc(self) -> np.ndarray:
        """[N]: the mean drop of the score over the curve's points, the first (no drop) included."""
        return (self.scores[0] - self.scores).mean(axis=0)

    @property
    def accuracy(self) -> np.ndarray | None:
        """[L+1]: the share of samples the model still classifies as labelled after each step (iNNvestigate's
        PerturbationAnalysis with an accuracy metric); None without labels."""
        return None if self.correct is None else self.correct.mean(axis=1)

    @staticmethod
    def joined(parts: list) -> "PerturbationCurve":
        """One curve of consecutive slices' curves (the same steps), their samples in order."""
        if len(parts) == 1:
            return parts[0]
        correct = None if parts[0].correct is None else np.concatenate([p.correct for p in parts], axis=1)
        return replace(parts[0], scores=np.concatenate([p.scores for p in parts], axis=1), correct=correct)


@dataclass
class CurveSettings:
    """How regions are formed, ranked and replaced, and how many steps the curve takes (see
    perturbation_curve)."""

    steps: int = 100
    regions_per_step: int = 1
    region: object = None
    channel_axis: object = "auto"
    perturbation: object = None  # "mean" for regions of several elements, "zeros" for single ones
    reduce: str = "mean"
    aggregate: str = "mean"
    pad_mode: str = "reflect"
    value_range: object = None
    seed: int | None = 0

    def check(self) -> None:
        for name in ("steps", "regions_per_step"):
            check_positive_int(name, getattr(self, name))
        if self.perturbation is not None:
            check_perturbation(self.perturbation)
        check_pad_mode(self.pad_mode)
        check_reductions(self.reduce, self.aggregate)
        check_seed(self.seed)
        if self.value_range is not None:
            try:
                lo, hi = (float(v) for v in self.value_range)
            except (TypeError, ValueError):
                raise UsageError(f"value_range must be two numbers (lo, hi), got {self.value_range!r}") from None
            if not lo <= hi:
                raise UsageError(f"value_range must have lo <= hi, got {self.value_range!r}")

    def layout(self, x_shape) -> Layout:
        """The regions of samples of ``x_shape`` [N, ...]."""
        return layout(tuple(x_shape[1:]), self.channel_axis, self.region)

    def check_for(self, x_shape, dtype) -> None:
        """What depends on the data: its regions (more than one per sample) and the perturbation's value."""
        lay = self.layout(x_shape)
        if lay.count(x_shape[1:]) == 1:
            raise UsageError(f"samples of shape {list(x_shape[1:])} hold a single region of {list(lay.region)}, so "
                             "every map would score alike: give a smaller region")
        self.perturbation_for(lay, dtype)

    def perturbation_for(self, lay: Layout, dtype) -> object:
        """The perturbation: the one set, else "mean" (regions of several elements) or "zeros" (single elements,
        whose own mean is themselves); a number must fit the data's float type."""
        single = int(np.prod(lay.region)) == 1
        p = self.perturbation if self.perturbation is not None else ("zeros" if single else "mean")
        if p == "mean" and single:
            raise UsageError("perturbation 'mean' puts each region's own mean in its place, and regions of one "
                             "element would not change: give a larger region, or perturb with zeros or a number")
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            top = float(np.finfo(dtype).max)
            for what, v in (("perturbation", p), *(("value_range", b) for b in (self.value_range or ()))):
                if not isinstance(v, str) and abs(float(v)) > top:
                    raise DataError(f"{what} {float(v):g} is beyond what the model's input type {dtype.name} holds "
                                    f"(at most {top:g})")
        return p


def curve(scorer: Scorer, x: np.ndarray, relevance, targets, order: str, settings: CurveSettings,
          inputs: dict | None = None, first: tuple | None = None,
          labels: np.ndarray | None = None, first_row: int = 0) -> PerturbationCurve:
    """The curve of one map and one order (x already cast, ``inputs`` as scorer.feeds returns them; ``first``: the
    scores and choices of x, when known; ``labels``: class labels [N], to follow the model's accuracy too;
    ``first_row``: x's first row in the data, which seeds the gaussian perturbation's draws)."""
    relevance = check_relevance(relevance, x.shape)
    lay: Layout = settings.layout(x.shape)
    perturbation = settings.perturbation_for(lay, x.dtype)
    scores = region_scores(relevance, lay, settings.reduce, settings.aggregate, settings.pad_mode)
    ranks = region_ranks(scores, order)
    total = lay.count(x.shape[1:])
    steps = min(settings.steps, -(-total // settings.regions_per_step))  # the curve stops once all are replaced
    counts = [min(k * settings.regions_per_step, total) for k in range(steps + 1)]
    perturber = RegionPerturber(x, ranks, lay, perturbation, settings.pad_mode, settings.value_range, settings.seed,
                                first_row)
    per_run = scorer.batches_per_run(len(x), inputs, ROWS_PER_RUN)  # a larger batch runs faster per row
    out, choices = [], []
    todo = counts if first is None else counts[1:]
    if first is not None:
        out.append(first[0])
        choices.append(first[1])
    for start in range(0, len(todo), per_run):
        scores, chosen = scorer.stacked([perturber.upto(c) for c in todo[start:start + per_run]], targets, inputs)
        out.extend(scores)
        choices.extend(chosen)
    correct = None if labels is None else np.stack(choices) == labels[None]
    return PerturbationCurve(order, np.asarray(counts, np.int64), np.stack(out), total, lay.region, perturbation,
                             correct)


def perturbation_curve(model, x, relevance, neuron: str = "max", target=None, order: str = "morf",
                       input: str | None = None, output: str | None = None, inputs: dict | None = None,
                       batch_size: int | None = None, device: str | None = None, providers=None, labels=None,
                       **settings) -> PerturbationCurve:
    """Replace x's regions in the order ``relevance`` (x's shape) ranks them and score the model after each
    step. Settings: ``steps`` (100) of ``regions_per_step`` (1) regions each, stopping once all are replaced;
    ``region``: its size per spatial axis (9 on an image's two, else 1); ``channel_axis`` of one sample ("auto":
    CHW or HWC images; None: every axis spatial); ``perturbation``: "mean" (each region's channel mean; the default
    for regions of several elements), "zeros" (the default for single elements), "invert", "gaussian" (N(0, 0.3²))
    or a number; ``reduce`` over channels and ``aggregate`` over a region:
    "mean" (iNNvestigate's defaults), "sum" or "max"; ``pad_mode`` (numpy.pad's, "reflect") fills regions past
    the border; ``value_range`` (lo, hi) clips what is put in; ``seed`` for "gaussian". ``neuron``/``target``
    choose the scored neuron as analyze does; ``order``: "morf" or "lerf"; ``inputs``: the model's other graph
    inputs; ``batch_size``: rows per forward pass; ``labels``: class labels [N], to follow the accuracy too."""
    s = settings_of(CurveSettings, settings, "perturbation_curve")
    b = scored_batch(model, x, neuron, target, input, output, inputs, batch_size, device, providers)
    s.check_for(b.x.shape, b.x.dtype)
    labels = check_labels(labels, len(b.x), b.outputs)
    return curve(b.scorer, b.x, relevance, b.targets, order, s, b.inputs, (b.first, b.choices), labels)
