"""Captum's explanation metrics on onnxruntime: infidelity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity
of Explanations") and sensitivity_max, per sample.

    infidelity   = 1/S Σ_j (Σ_i R_i I_ij − (f(x) − f(x − ξ_j)))²,   I_j = ξ_j / (x − b) or ξ_j
    sensitivity  = max_j ‖Φ(x + δ_j) − Φ(x)‖ / ‖Φ(x)‖,               δ_j ~ U(−radius, radius)

with f the selected neuron's score, R the map of x, Φ a method's map and S draws per sample. Lower is better for
both. Draws come from numpy's generator, one seeded per sample (draws.py), or are given (``draws``), one row per
sample and draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxattr.api import Analyzer
from onnxattr.draws import INFIDELITY, SENSITIVITY, per_sample, sample_generators
from onnxattr.errors import DataError, UsageError, check_positive_int
from onnxattr.methods import REGISTRY
from onnxattr.scoring import Scorer, check_relevance, check_seed, scored_batch, settings_of

INFIDELITY_PERTURBATIONS = ("noise", "subset")
ROWS_PER_RUN = 64  # perturbed samples per forward pass


def _finite(name: str, value, low: float = 0.0, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value) \
            or value < low or (strict and value == low):
        raise UsageError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


def _draw_count(n_perturb_samples, draws) -> int:
    """The draws per sample: ``n_perturb_samples`` (10 when None), or as many as ``draws`` holds."""
    if n_perturb_samples is not None:
        check_positive_int("n_perturb_samples", n_perturb_samples)
    if draws is None:
        return 10 if n_perturb_samples is None else int(n_perturb_samples)
    count = np.shape(draws)[1] if np.ndim(draws) >= 2 else 0
    if n_perturb_samples is not None and count != n_perturb_samples:
        raise DataError(f"draws holds {count} draws per sample and n_perturb_samples is {n_perturb_samples}")
    return count


def _draws(draws, n: int, samples: int, shape: tuple, name: str) -> np.ndarray | None:
    if draws is None:
        return None
    d = np.asarray(draws, np.float64)
    if d.shape != (n, samples, *shape) or not samples:
        raise DataError(f"{name} has shape {list(d.shape)}; expected one per sample and draw "
                        f"[{n}, S, {', '.join(map(str, shape))}]")
    if not np.isfinite(d).all():
        raise DataError(f"{name} holds NaN or inf")
    return d


@dataclass
class InfidelitySettings:
    """How infidelity perturbs x (see ``infidelity``)."""

    n_perturb_samples: int | None = None
    perturbation: str = "noise"
    noise_scale: float = 0.1
    fraction: float = 0.5
    baselines: object = 0.0
    multiply_by_inputs: bool | None = None  # None: by the method (includes_input), True for a given map
    normalize: bool = False
    draws: object = None
    seed: int | None = 0

    def check(self) -> None:
        if self.perturbation not in INFIDELITY_PERTURBATIONS:
            raise UsageError(f"perturbation must be one of {', '.join(INFIDELITY_PERTURBATIONS)}, got "
                             f"{self.perturbation!r}")
        _draw_count(self.n_perturb_samples, self.draws)
        if self.perturbation == "noise":
            _finite("noise_scale", self.noise_scale)
        else:
            _finite("fraction", self.fraction)
            if self.fraction > 1:
                raise UsageError(f"fraction must be at most 1, got {self.fraction!r}")
        if not np.ndim(self.baselines):
            _finite("baselines", self.baselines, low=-np.inf)
        check_seed(self.seed)

    def baselines_for(self, x_shape) -> np.ndarray:
        """The baselines broadcast to the data (float64), or a DataError."""
        try:
            return np.broadcast_to(np.asarray(self.baselines, np.float64), tuple(x_shape))
        except ValueError:
            raise DataError(f"baselines of shape {list(np.shape(self.baselines))} do not broadcast to the data "
                            f"{list(x_shape)}") from None

    def check_for(self, x_shape) -> None:
        """What depends on the data: the baselines broadcast to it, given draws have its shape."""
        self.baselines_for(x_shape)
        _draws(self.draws, x_shape[0], _draw_count(self.n_perturb_samples, self.draws), tuple(x_shape[1:]), "draws")


LOCAL_METHODS = {"gradient", "beta_smooth", "deconvnet", "guided_backprop", "grad_cam", "guided_grad_cam",
                 "pattern.net"}  # maps without the input's factor: read per unit of input change


def includes_input(method: str | None, params: dict | None = None) -> bool:
    """Whether a method's maps carry the input's factor (x ⊙ ∂y/∂x, integrated gradients, LRP, the perturbation
    methods: their sums approach output differences), so infidelity reads them per unit of x − baseline; the
    gradient family, Grad-CAM and PatternNet's signal are local. smoothgrad and vargrad follow their ``base``; an
    unknown method (a given map) is taken as including it, as Captum's infidelity_perturb_func_decorator does."""
    if method in REGISTRY:
        method = REGISTRY[method].name  # an alias (gradient.baseline) as its method
    if method in ("smoothgrad", "vargrad"):
        return (params or {}).get("base") == "input_t_gradient"
    return method not in LOCAL_METHODS


def infidelity_of(scorer: Scorer, x: np.ndarray, relevance, targets, f0: np.ndarray, st: InfidelitySettings,
                  inputs: dict | None = None, method: str | None = None, params: dict | None = None,
                  first_row: int = 0) -> np.ndarray:
    """infidelity's value for x (cast; ``inputs`` as scorer.feeds returns them; rows ``first_row``.. of the data,
    whose numbers seed each sample's draws), its selected neurons and their scores ``f0`` [N] (float64);
    ``method`` (with ``params``) made the map, when known (multiply_by_inputs None).
    Draws go in groups of at most ROWS_PER_RUN perturbed rows (memory stays a few copies of that many samples,
    whatever the draw count)."""
    relevance = check_relevance(relevance, x.shape)
    s = _draw_count(st.n_perturb_samples, st.draws)
    n, shape = len(x), x.shape[1:]
    xd = x.astype(np.float64)
    base = st.baselines_for(x.shape)
    given = _draws(st.draws, n, s, shape, "draws")
    rngs = sample_generators(st.seed, INFIDELITY, first_row, n) if given is None else []
    per_run = scorer.batches_per_run(n, inputs, ROWS_PER_RUN)
    by_inputs = st.multiply_by_inputs if st.multiply_by_inputs is not None else includes_input(method, params)
    if by_inputs:
        denom = xd - base
        denom = np.where(denom == 0, 1.0, denom)  # Captum's safe_div: 0/0 read as 0/1
    a, d = np.empty((n, s)), np.empty((n, s))
    for start in range(0, s, per_run):
        js = range(start, min(start + per_run, s))
        rows = []
        for j in js:
            if given is not None:
                draw = given[:, j]
            elif st.perturbation == "noise":
                draw = per_sample(rngs, lambda g: g.normal(0.0, st.noise_scale, shape))
            else:
                draw = per_sample(rngs, lambda g: g.random(shape) < st.fraction)
            xi = draw if st.perturbation == "noise" else draw * (xd - base)
            perturbed = (xd - xi).astype(x.dtype)
            moved = xd - perturbed.astype(np.float64)  # what the model really sees moved
            if by_inputs:
                moved = moved / denom
            rows.append(perturbed)
            a[:, j] = (moved * relevance).reshape(n, -1).sum(1)
        d[:, js.start:js.stop] = f0[:, None] - scorer.stacked(rows, targets, inputs)[0].T
    if not st.normalize:
        return ((a - d) ** 2).mean(1)
    aa, ad, dd = (a * a).sum(1), (a * d).sum(1), (d * d).sum(1)
    beta = ad / np.where(aa == 0, 1.0, aa)
    return (beta * beta * aa - 2 * beta * ad + dd) / s


def infidelity(model, x, relevance, neuron: str = "max", target=None, input: str | None = None,
               output: str | None = None, inputs: dict | None = None, batch_size: int | None = None,
               device: str | None = None, providers=None, **settings) -> np.ndarray:
    """[N]: Captum's infidelity of the map ``relevance`` (x's shape). Each of ``n_perturb_samples`` (10) draws
    moves x to x − ξ: ``perturbation`` "noise" ξ ~ N(0, ``noise_scale``²) (0.1), or "subset" ξ = M ⊙ (x −
    ``baselines``) with each element in M with probability ``fraction`` (½) (``draws``: the ξ, or the 0/1 masks M,
    [N, S, *sample]; else from ``seed``). The map is read against I = ξ / (x − baselines) (0/0 read as ξ / 1, as
    Captum's safe_div) with ``multiply_by_inputs`` (None or True: maps that include the input's factor, such as
    input_t_gradient, integrated_gradients, LRP), else against I = ξ (gradient, saliency). ``normalize`` first
    scales the map by the least-squares β = Σ a d / Σ a², as Captum's."""
    st = settings_of(InfidelitySettings, settings, "infidelity")
    b = scored_batch(model, x, neuron, target, input, output, inputs, batch_size, device, providers)
    st.check_for(b.x.shape)
    return infidelity_of(b.scorer, b.x, relevance, b.targets, b.first, st, b.inputs)


@dataclass
class SensitivitySettings:
    """How sensitivity_max moves x (see ``sensitivity_max``)."""

    n_perturb_samples: int | None = None
    radius: float = 0.02
    draws: object = None
    seed: int | None = 0

    def check(self) -> None:
        _draw_count(self.n_perturb_samples, self.draws)
        _finite("radius", self.radius)
        check_seed(self.seed)

    def check_for(self, x_shape) -> None:
        """Given draws have the data's shape."""
        _draws(self.draws, x_shape[0], _draw_count(self.n_perturb_samples, self.draws), tuple(x_shape[1:]), "draws")


def sensitivity_of(analyzer: Analyzer, x: np.ndarray, targets, st: SensitivitySettings, inputs: dict | None = None,
                   slices: int | str | None = None, base: np.ndarray | None = None,
                   first_row: int = 0) -> np.ndarray:
    """sensitivity_max's value for x (cast; rows ``first_row``.. of the data, whose numbers seed each sample's
    draws) explained by ``analyzer`` at ``targets`` (``base``: the map of x from the analyzer's first call, or
    after a restart, when known). A method that draws random numbers explains every copy from a new
    session, so that each starts from the same draws as the map of x did: the change measured is the map's, not
    the noise's."""
    s = _draw_count(st.n_perturb_samples, st.draws)
    n, shape = len(x), x.shape[1:]
    given = _draws(st.draws, n, s, shape, "draws")
    rngs = sample_generators(st.seed, SENSITIVITY, first_row, n) if given is None else []
    if base is None:
        base = analyzer.analyze(x, neuron_selection=targets, inputs=inputs, batch_size=slices)
    base = np.asarray(base, np.float64)
    if base.shape[0] != n:
        raise DataError(f"{analyzer.method.name} returned {base.shape[0]} maps for {n} samples")
    norm = np.sqrt((base.reshape(n, -1) ** 2).sum(1))
    norm = np.where(norm == 0, 1.0, norm)
    worst = np.zeros(n)
    xd = x.astype(np.float64)
    for j in range(s):  # one explained batch per draw: a sample's other inputs keep their rows
        delta = given[:, j] if given is not None else per_sample(rngs, lambda g: g.uniform(-st.radius, st.radius,
                                                                                           shape))
        moved = (xd + delta).astype(x.dtype)
        if analyzer.method.random:
            analyzer.restart()
        r = analyzer.analyze(moved, neuron_selection=targets, inputs=inputs, batch_size=slices).astype(np.float64)
        worst = np.maximum(worst, np.sqrt(((r - base).reshape(n, -1) ** 2).sum(1)) / norm)
    return worst


def sensitivity_max(model, method: str, x, neuron: str = "max", target=None, input: str | None = None,
                    output: str | None = None, inputs: dict | None = None, batch_size: int | None = None,
                    device: str | None = None, providers=None, n_perturb_samples: int | None = None,
                    radius: float = 0.02, draws=None, seed: int | None = 0, **params) -> np.ndarray:
    """[N]: Captum's sensitivity_max of ``method`` (with its ``params``): the largest change of the map, relative
    to the map's Frobenius norm (1 where that is 0), over ``n_perturb_samples`` (10) copies of x moved by
    U(−``radius``, ``radius``) noise (``draws``: that noise, [N, S, *sample]; else from ``seed``), each explained
    at the neuron chosen on x."""
    st = SensitivitySettings(n_perturb_samples, radius, draws, seed)
    st.check()
    b = scored_batch(model, x, neuron, target, input, output, inputs, batch_size, device, providers)
    st.check_for(b.x.shape)
    analyzer = Analyzer(method, model, neuron_selection_mode="all" if b.targets is None else "index",
                        input=b.scorer.x, output=output, device=device, providers=providers, **params)
    return sensitivity_of(analyzer, b.x, b.targets, st, b.inputs, b.scorer.slices(batch_size))
