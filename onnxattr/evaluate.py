"""How faithful is a relevance map? Region perturbation (pixel flipping; Samek et al. 2017, "Evaluating the
visualization of what a deep neural network has learned"; iNNvestigate's tools.PerturbationAnalysis): replace the
input's regions in the order the map ranks them and follow the explained output. With s_k the selected neuron's
score after k steps (k = 0: the data as given) over L steps,

    AOPC = 1/(L+1) · Σ_{k=0..L} (s_0 − s_k)

per sample. Most relevant first (MoRF), a faithful map makes the score fall fast (AOPC large); least relevant
first (LeRF) it should hold (AOPC small); ABPC = AOPC(MoRF) − AOPC(LeRF) is the area between the two curves.
The model runs on onnxruntime, one forward pass per step over the batch (several steps stacked into one run).
``evaluate`` scores several methods' maps and given ones at the same neurons, by these curves and by Captum's
infidelity and sensitivity_max (metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from onnxattr.api import Analyzer
from onnxattr.errors import DataError, UsageError, check_positive_int
from onnxattr.methods import get_method
from onnxattr.metrics import InfidelitySettings, SensitivitySettings, infidelity_of, sensitivity_of
from onnxattr.regions import (
    Layout, RegionPerturber, check_pad_mode, check_perturbation, check_reductions, layout, region_ranks,
    region_scores,
)
from onnxattr.feeds import read_by_rows
from onnxattr.scoring import (
    ScoredBatch, Scorer, check_labels, check_relevance, check_seed, check_target, map_of_data, scored, scored_batch,
    settings_of,
)

ORDERS = ("morf", "lerf")
METRICS = ("aopc", "infidelity", "sensitivity")
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


@dataclass
class Evaluation:
    """Per map, for one batch and one neuron per sample (``targets``; None: neuron 'all'): perturbation curves
    per order, and the infidelity and sensitivity_max per sample where they ran."""

    targets: np.ndarray | None
    curves: dict = field(default_factory=dict)  # map name -> order -> PerturbationCurve
    infidelity: dict = field(default_factory=dict)  # map name -> [N]
    sensitivity: dict = field(default_factory=dict)  # method name -> [N] (a given map has none)
    names: list = field(default_factory=list)

    @classmethod
    def joined(cls, parts: list, names: list) -> "Evaluation":
        """One evaluation of consecutive slices' evaluations, their samples in order."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]

        def rows(key, name):
            return np.concatenate([getattr(p, key)[name] for p in parts])

        out = cls(None if first.targets is None else np.concatenate([p.targets for p in parts]), names=names)
        out.curves = {name: {o: PerturbationCurve.joined([p.curves[name][o] for p in parts]) for o in by_order}
                      for name, by_order in first.curves.items()}
        out.infidelity = {name: rows("infidelity", name) for name in first.infidelity}
        out.sensitivity = {name: rows("sensitivity", name) for name in first.sensitivity}
        return out

    def aopc(self, name: str, order: str) -> np.ndarray:
        return self.curves[name][order].aopc

    def abpc(self, name: str) -> np.ndarray | None:
        """[N]: AOPC(MoRF) − AOPC(LeRF), when both orders ran."""
        c = self.curves.get(name, {})
        return c["morf"].aopc - c["lerf"].aopc if "morf" in c and "lerf" in c else None

    def columns(self) -> list[tuple[str, callable]]:
        """(heading, name -> [N] or None) for every metric that ran."""
        cols = []
        orders = [o for o in ORDERS if any(o in c for c in self.curves.values())]
        for o in orders:
            cols.append((f"AOPC {o.upper()}", lambda n, o=o: self.curves[n][o].aopc if o in self.curves.get(n, {})
                         else None))
        if len(orders) == 2:
            cols.append(("ABPC", self.abpc))
        for o in orders:
            if any(c[o].correct is not None for c in self.curves.values() if o in c):
                cols.append((f"accuracy {o.upper()}", lambda n, o=o: self._accuracy(n, o)))
        if self.infidelity:
            cols.append(("infidelity", self.infidelity.get))
        if self.sensitivity:
            cols.append(("sensitivity max", self.sensitivity.get))
        return cols

    def _accuracy(self, name: str, order: str) -> np.ndarray | None:
        """[N]: the share of the curve's points at which sample n is still classified as labelled."""
        c = self.curves.get(name, {}).get(order)
        return None if c is None or c.correct is None else c.correct.mean(axis=0)

    def table(self) -> str:
        """One line per map: the mean over samples of each metric, ± its standard error."""
        cols = self.columns()
        width = max([len(n) for n in self.names] + [6])
        lines = [f"{'method':{width}}  " + "  ".join(f"{h:>17}" for h, _ in cols)]
        for name in self.names:
            lines.append(f"{name:{width}}  " + "  ".join(f"{_mean_se(get(name)):>17}" for _, get in cols))
        return "\n".join(lines)

    def per_sample(self) -> dict:
        """name -> {metric: [N] as a list}: aopc_morf, aopc_lerf, abpc, infidelity, sensitivity_max (a value that
        is not finite, from a map that overflowed, as None: JSON has no NaN)."""
        out = {}
        for name in self.names:
            row = {f"aopc_{o}": c.aopc for o, c in self.curves.get(name, {}).items()}
            row.update({f"accuracy_{o}": self._accuracy(name, o) for o, c in self.curves.get(name, {}).items()
                        if c.correct is not None})
            for key, value in (("abpc", self.abpc(name)), ("infidelity", self.infidelity.get(name)),
                               ("sensitivity_max", self.sensitivity.get(name))):
                if value is not None:
                    row[key] = value
            out[name] = {k: [float(v) if np.isfinite(v) else None for v in np.asarray(vs, np.float64)]
                         for k, vs in row.items()}
        return out

    def arrays(self) -> dict:
        """name|order -> scores [steps+1, N], name|order|regions -> regions replaced, name|infidelity and
        name|sensitivity_max -> [N], and the targets."""
        out = {}
        for name, by_order in self.curves.items():
            for order, c in by_order.items():
                out[f"{name}|{order}"] = c.scores
                out[f"{name}|{order}|regions"] = c.regions
                if c.correct is not None:
                    out[f"{name}|{order}|correct"] = c.correct
        for name, v in self.infidelity.items():
            out[f"{name}|infidelity"] = v
        for name, v in self.sensitivity.items():
            out[f"{name}|sensitivity_max"] = v
        if self.targets is not None:
            out["targets"] = self.targets
        return out


def _mean_se(v) -> str:
    if v is None:
        return "-"
    v = np.asarray(v, np.float64)
    if len(v) < 2:
        return f"{v.mean():.4g}"
    return f"{v.mean():.4g} ± {v.std(ddof=1) / np.sqrt(len(v)):.2g}"


def evaluate(model, methods=(), x=None, relevance: dict | None = None, neuron: str = "max", target=None,
             metrics=("aopc",), orders=ORDERS, input: str | None = None, output: str | None = None,
             inputs: dict | None = None, params: dict | None = None, batch_size: int | None = None,
             device: str | None = None, providers=None, progress=None, infidelity: dict | None = None,
             sensitivity: dict | None = None, labels=None, **settings) -> Evaluation:
    """Score each method's map of x (and each given map, ``relevance``: name -> array of x's shape, e.g. from
    another library), all at the same neuron per sample (chosen on the data as given), by each of ``metrics``:
    "aopc" (perturbation curves in each of ``orders``; ``settings`` as perturbation_curve's), "infidelity"
    (``infidelity``: metrics.infidelity's settings) and "sensitivity" (sensitivity_max; methods only;
    ``sensitivity``: its settings; ``labels``: class labels [N], with which the curves also follow the accuracy).
    ``params``: method parameters, each given to the methods that have it (a name
    no method has is an error); ``batch_size`` as analyze's (None: "auto", slices of 16 images' values where they
    change no map); ``progress``: a callable(str) told of each map (and slice). x (and a given map) may be data read
    by rows (a memory-mapped .npy, onnxattr.read_images): it is evaluated a slice at a time, ``batch_size`` samples
    or 64 images of 3 x 224 x 224 worth of values (Scorer.slice_rows), and the slices' results are joined in order;
    each sample's random draws are seeded by its row (draws.py), so slicing moves none of them."""
    if x is None:
        raise UsageError("evaluate needs the data x")
    methods = [methods] if isinstance(methods, str) else list(methods)
    relevance = dict(relevance or {})
    if not methods and not relevance:
        raise UsageError("nothing to evaluate: give methods or relevance maps")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics or any(m not in METRICS for m in metrics) or len(set(metrics)) < len(metrics):
        raise UsageError(f"metrics must be some of {', '.join(METRICS)}, got {metrics!r}")
    orders = [orders] if isinstance(orders, str) else list(orders)
    if not orders or any(o not in ORDERS for o in orders) or len(set(orders)) < len(orders):
        raise UsageError(f"orders must be one or both of {', '.join(ORDERS)}, got {orders!r}")
    if not all(isinstance(k, str) for k in relevance):
        raise UsageError("relevance must map names (strings) to arrays")
    names = methods + list(relevance)
    if len(set(names)) < len(names):
        raise UsageError(f"a map name is given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    if metrics == ["sensitivity"] and not methods:
        raise UsageError("sensitivity re-explains moved copies of the data, so it needs methods; given maps "
                         "(relevance=, --relevance) take aopc or infidelity")
    s = settings_of(CurveSettings, settings, "evaluate")
    inf = _draws_by_rows(settings_of(InfidelitySettings, infidelity, "infidelity"))
    sens = _draws_by_rows(settings_of(SensitivitySettings, sensitivity, "sensitivity"))
    per_method = _split_params(methods, params or {})
    scorer = Scorer(model, input, output, device, providers, batch_size)
    x = read_by_rows(x)
    if not x.shape:
        scorer.cast(x)  # refuses it
    n = x.shape[0]
    if not n:
        raise DataError("the data holds no samples")
    scorer.check_count(n)
    inputs = scorer.feeds(inputs, n)
    rows = scorer.slice_rows(x.shape[1:])
    # everything that can be refused is refused now, not after the methods before it have run
    relevance = {name: map_of_data(r, x.shape, f"the map '{name}'") for name, r in relevance.items()}
    head, head_feeds = scorer.cast(x[:rows]), scorer.feed_rows(inputs, n, 0, rows)
    y = scorer.outputs(head, head_feeds)
    if neuron == "index":  # checked for every sample before any runs
        target = check_target(target, n, y.shape[1])
    first = scored(scorer, head, neuron, _target_rows(target, 0, rows), head_feeds, y)
    labels = check_labels(labels, n, first.outputs)
    if labels is not None and "aopc" not in metrics:
        raise UsageError("labels give the accuracy along the perturbation curves: add the aopc metric")
    if "aopc" in metrics:
        s.check_for(x.shape, first.x.dtype)
    if "infidelity" in metrics:
        inf.check_for(x.shape)
    if "sensitivity" in metrics:
        sens.check_for(x.shape)
    mode = "all" if first.targets is None else "index"
    analyzers = {name: Analyzer(name, model, neuron_selection_mode=mode, input=scorer.x, output=output, device=device,
                                providers=providers, **per_method[name]) for name in methods}
    run = _Run(names, analyzers, relevance, metrics, orders, s, inf, sens, labels, scorer.slices(batch_size),
               per_method, progress, n)
    parts = [run.evaluate(first, 0)]
    for start in range(rows, n, rows):
        parts.append(run.evaluate(_scored_rows(scorer, x, start, start + rows, neuron, target, inputs), start))
    return Evaluation.joined(parts, names)


def _draws_by_rows(settings):
    """The settings with given draws as data read by rows (a list as an array)."""
    return settings if settings.draws is None else replace(settings, draws=read_by_rows(settings.draws))


def _scored_rows(scorer: Scorer, x, start: int, stop: int, neuron: str, target, inputs: dict) -> ScoredBatch:
    """Samples start..stop of x, read, cast and scored (``target``: as check_target gives it, or None)."""
    feeds = scorer.feed_rows(inputs, x.shape[0], start, stop)
    return scored(scorer, scorer.cast(x[start:stop]), neuron, _target_rows(target, start, stop), feeds)


def _target_rows(target, start: int, stop: int):
    """The targets of samples start..stop: a checked one per sample sliced, anything else as it is."""
    return target[start:stop] if isinstance(target, np.ndarray) and target.ndim == 1 else target


@dataclass
class _Run:
    """What each slice of an evaluation shares: the maps (methods' analyzers, given maps), the metrics and their
    settings, and the whole data's labels and sample count."""

    names: list
    analyzers: dict
    relevance: dict
    metrics: list
    orders: list
    curve: CurveSettings
    infidelity: InfidelitySettings
    sensitivity: SensitivitySettings
    labels: np.ndarray | None
    slices: object
    params: dict
    progress: object
    count: int

    def evaluate(self, b: ScoredBatch, start: int) -> Evaluation:
        """Every map and metric on samples start.. of the data (b: them, scored)."""
        stop = start + len(b.x)
        labels = None if self.labels is None else self.labels[start:stop]
        inf, sens = (st if st.draws is None else replace(st, draws=st.draws[start:stop])
                     for st in (self.infidelity, self.sensitivity))
        result = Evaluation(b.targets, names=self.names)
        for name in self.names:
            if self.progress:
                self.progress(name if len(b.x) == self.count else f"{name}, samples {start + 1}-{stop} of {self.count}")
            analyzer = self.analyzers.get(name)
            if analyzer is None:
                r = np.asarray(self.relevance[name][start:stop], np.float64)
            else:
                if start and analyzer.method.random and "sensitivity" in self.metrics:
                    analyzer.restart()  # the map and its moved copies' maps start from the same draws
                r = analyzer.analyze(b.x, neuron_selection=b.targets, inputs=b.inputs, batch_size=self.slices)
            if "aopc" in self.metrics:
                result.curves[name] = {o: curve(b.scorer, b.x, r, b.targets, o, self.curve, b.inputs,
                                                (b.first, b.choices), labels, start) for o in self.orders}
            if "infidelity" in self.metrics:
                result.infidelity[name] = infidelity_of(b.scorer, b.x, r, b.targets, b.first, inf, b.inputs,
                                                        None if analyzer is None else name, self.params.get(name),
                                                        start)
            if "sensitivity" in self.metrics and analyzer is not None:
                result.sensitivity[name] = sensitivity_of(analyzer, b.x, b.targets, sens, b.inputs, self.slices,
                                                          base=r, first_row=start)
        return result


def _split_params(methods: list, params: dict) -> dict:
    """method -> the ``params`` it has; a parameter no method has is a UsageError."""
    out = {}
    used = set()
    for name in methods:
        known = {p.name for p in get_method(name).params}
        out[name] = {k: v for k, v in params.items() if k in known}
        used |= set(out[name])
    unused = sorted(set(params) - used)
    if unused:
        raise UsageError(f"no method given has a parameter '{unused[0]}' (methods: {', '.join(methods) or 'none'})")
    return out
