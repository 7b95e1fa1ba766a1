"""How faithful is a relevance map, and how stable? ``evaluate`` scores several methods' maps and given ones at the
same neurons per sample: by region perturbation curves and their AOPC (curves.py), and by Captum's infidelity and
sensitivity_max (metrics.py); the data is read and evaluated a slice at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from onnxattr.api import Analyzer
from onnxattr.curves import ORDERS, CurveSettings, PerturbationCurve, curve
from onnxattr.errors import DataError, UsageError
from onnxattr.feeds import as_array, read_by_rows, sliceable
from onnxattr.methods import get_method
from onnxattr.metrics import InfidelitySettings, SensitivitySettings, infidelity_of, sensitivity_of
from onnxattr.scoring import ScoredBatch, Scorer, check_labels, check_target, map_of_data, scored, settings_of

METRICS = ("aopc", "infidelity", "sensitivity")


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
    x = x if sliceable(x) else as_array(x, "input data", "; give an array [N, ...]")
    if not x.shape:
        scorer.cast(x)  # refuses it
    n = x.shape[0]
    if not n:
        raise DataError("the data holds no samples")
    scorer.check_count(n)
    inputs = scorer.feeds(inputs, n)
    analyzers = {name: Analyzer(name, model, neuron_selection_mode="all" if neuron == "all" else "index",
                                input=scorer.x, output=output, device=device, providers=providers, **per_method[name])
                 for name in methods}
    rows = scorer.slice_rows(x.shape[1:])
    if rows < n:  # where a method's maps would change with the slices, the data runs whole, as analyze's "auto"
        refused = next((why for why in (a.slices_refused(x) for a in analyzers.values()) if why), "")
        if refused and batch_size is not None:
            raise UsageError(refused)
        rows = n if refused else rows
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
