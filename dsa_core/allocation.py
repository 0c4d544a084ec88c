"""Per-block sparsity allocation: pure functions from BlockStats and a target sparsity to one ratio per block.

Holds the baselines (uniform, global, ER, ER-plus, OWL, AlphaPruning, ATP) in one registry, `BASELINES`, where each
declares its parameters and the statistics it reads (adding a baseline is one function and one entry); the two
mappings from per-block values to ratios that DSA functions reuse (OWL's additive band, AlphaPruning's multiplicative
scaling); the shared last step `fit_to_target`; and `allocate`, the one entry point taking a spec (baseline string,
DSA preset, function text or AllocationFunction). Every allocation's parameter-weighted mean sparsity equals the
target. Nothing here touches a model or a tensor: only numpy arrays, so a profile costs milliseconds and can be
plotted, tested and searched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial

import numpy as np

from dsa_core import functions
from dsa_core.errors import ConfigError
from dsa_core.stats import BlockStats

MAX_SPARSITY = 0.99  # above this a block is all but removed; no target or block may exceed it

_STAT_FIELDS = frozenset(f.name for f in fields(BlockStats)) - {"metric", "reductions"}
_ALIASES = {"lambda": "lam", "λ": "lam", "epsilon": "eps", "ε": "eps", "β": "beta"}  # spec key -> parameter
_SHOWN = {"m": "M", "lam": "lambda"}  # parameter -> how specs and names write it


@dataclass(frozen=True)
class Baseline:
    """One baseline: its name, a sentence for a UI, `fn(stats, target, **params) -> (raw ratios, warnings)` (finished
    by `fit_to_target`), its parameters with their defaults, and the BlockStats fields it reads besides the block
    sizes (a session computes those a scoring pass leaves out, such as alpha_hill, when they are asked for)."""

    name: str
    doc: str
    fn: Callable[..., tuple[np.ndarray, list[str]]]
    params: dict[str, float] = field(default_factory=dict)
    needs: tuple[str, ...] = ()

    def __post_init__(self):
        if set(self.needs) - _STAT_FIELDS:
            raise ValueError(f"Baseline {self.name!r} needs {sorted(set(self.needs) - _STAT_FIELDS)}, which are not "
                             f"block statistics ({', '.join(sorted(_STAT_FIELDS))}).")


@dataclass
class Allocation:
    """Per-block sparsity ratios (shape (L,)), the canonical name of what produced them, and user-facing warnings."""

    ratios: np.ndarray
    name: str
    warnings: list[str] = field(default_factory=list)


def check_target(target: float) -> float:
    """The target as a float; ConfigError if it is NaN or outside [0, 0.99]."""
    try:
        t = float(target)
    except (TypeError, ValueError):
        raise ConfigError(f"Target sparsity must be a number; got {target!r}.") from None
    if not 0.0 <= t <= MAX_SPARSITY:  # also rejects NaN
        raise ConfigError(f"Target sparsity {target} is outside [0, {MAX_SPARSITY}].")
    return t


def fit_to_target(ratios: np.ndarray, params: np.ndarray, target: float, lo: float = 0.0,
                  hi: float = MAX_SPARSITY) -> np.ndarray:
    """clip(ratios + δ, lo, hi) with the one shift δ that makes the parameter-weighted mean `target`: blocks pushed
    past a bound stay there, all the others move by the same δ, and the order of the blocks is kept."""
    return _fit(ratios, params, target, lo, hi)[0]


def _fit(ratios, params, target: float, lo: float = 0.0, hi: float = MAX_SPARSITY) -> tuple[np.ndarray, int]:
    """fit_to_target, plus how many blocks ended pinned to a bound they did not ask for."""
    if not 0.0 <= lo <= target <= hi <= 1.0:
        raise ConfigError(f"Cannot fit ratios to a target of {target} within [{lo}, {hi}].")
    raw = np.asarray(ratios, dtype=np.float64)
    p = _weights(params, raw.size)
    if not np.isfinite(raw).all():
        raise ConfigError("An allocation produced non-finite ratios; this is a bug, please report the spec used.")
    goal = target * p.sum()
    if raw.min() >= lo and raw.max() <= hi and abs(p @ raw - goal) <= 1e-13 * p.sum():
        return raw.copy(), 0
    # The weighted sum of clip(raw + δ) is piecewise linear and non-decreasing in δ, with kinks where a block meets
    # a bound: evaluate it at every kink and interpolate inside the segment that contains the goal.
    kinks = np.unique(np.concatenate([lo - raw, hi - raw]))
    sums = np.clip(raw[None, :] + kinks[:, None], lo, hi) @ p
    k = int(np.searchsorted(sums, goal))
    if k == 0 or k == kinks.size or sums[k] == sums[k - 1]:
        delta = kinks[min(k, kinks.size - 1)]
    else:
        delta = kinks[k - 1] + (goal - sums[k - 1]) * (kinks[k] - kinks[k - 1]) / (sums[k] - sums[k - 1])
    r = np.clip(raw + delta, lo, hi)
    free = (r > lo) & (r < hi)
    if free.any():  # remove the last rounding error, which is of the order of 1e-16
        r[free] = np.clip(r[free] + (goal - p @ r) / p[free].sum(), lo, hi)
    pinned = ((r == lo) & (raw != lo)) | ((r == hi) & (raw != hi))
    return r, int(pinned.sum())


def _weights(params, n: int) -> np.ndarray:
    p = np.asarray(params, dtype=np.float64)
    if p.shape != (n,) or not (np.isfinite(p).all() and (p > 0).all()):
        raise ConfigError("Block parameter counts must be positive, one per block.")
    return p


def _flat(x: np.ndarray) -> bool:
    return bool(x.max() - x.min() <= 1e-12 * np.abs(x).max())


def _finite_span(x: np.ndarray) -> np.ndarray:
    # max − min overflows for values near ±1e308 (exp of exp…); rescaling first keeps the min-max normalisation.
    return x / np.abs(x).max() if not np.isfinite(x.max() - x.min()) else x


def band_mapping(importance: np.ndarray, params: np.ndarray, target: float, lam: float) -> np.ndarray:
    """OWL's additive band: min-max normalise, spread keep ratios over 2λ so that MORE important blocks get LOWER
    sparsity, centred so the weighted mean sparsity is `target` (with equal block sizes, exactly OWL's reference
    formula). All-equal importances or λ = 0 give uniform. Returns raw ratios: finish with `fit_to_target`."""
    x, p = np.asarray(importance, dtype=np.float64), _weights(params, len(importance))
    if not 0.0 <= lam <= 0.5:
        raise ConfigError(f"The band half-width λ must lie in [0, 0.5]; got {lam}.")
    if _flat(x) or lam == 0:
        return np.full(x.size, float(target))
    x = _finite_span(x)
    keep = (x - x.min()) * (1 / (x.max() - x.min()) * lam * 2)  # written as in OWL's code, to match it bit for bit
    keep = keep - np.average(keep, weights=p) + (1 - target)
    return 1 - keep


def multiplicative_mapping(alpha: np.ndarray, params: np.ndarray, target: float, eps: float) -> np.ndarray:
    """AlphaPruning's mapping: s = minmax(α)·(s2 − s1) + s1 with s1 = 1 − ε, s2 = 1 + ε, times the scaler that makes
    the weighted mean `target`. HIGHER α ⇒ MORE sparsity: pass values where larger means less important (for an
    importance where more important ⇒ less sparse, pass its negation). All-equal values give uniform. Returns raw
    ratios: finish with `fit_to_target`."""
    x, p = np.asarray(alpha, dtype=np.float64), _weights(params, len(alpha))
    if not 0.0 <= eps <= 1.0:
        raise ConfigError(f"AlphaPruning's ε must lie in [0, 1]; got {eps}.")
    if _flat(x):
        return np.full(x.size, float(target))
    x, s1, s2 = _finite_span(x), 1 - eps, 1 + eps
    s = (x - x.min()) / (x.max() - x.min()) * (s2 - s1) + s1
    return s * (p.sum() * target / (p @ s))


# --- baselines: each returns raw ratios and warnings; _baseline finishes them -----------------------------------


def _uniform(stats: BlockStats, target: float) -> tuple[np.ndarray, list[str]]:
    return np.full(stats.num_blocks, target), []


def _global(stats: BlockStats, target: float) -> tuple[np.ndarray, list[str]]:
    """One threshold τ on the sampled scores, each sample standing for params_b / len(sample_b) weights; a block's
    ratio is the share of its samples below τ. τ is found by bisection (a count per step, no global sort)."""
    samples = [np.asarray(s).ravel() for s in stats.score_samples]
    if any(s.size == 0 for s in samples):
        raise ConfigError("Global allocation needs a score sample for every block; score the model again.")
    sizes = np.array([s.size for s in samples], dtype=np.float64)
    w = np.asarray(stats.params, dtype=np.float64) / sizes
    goal = target * float(np.asarray(stats.params, dtype=np.float64).sum())

    def below(tau: float) -> np.ndarray:
        return np.array([np.count_nonzero(s < tau) for s in samples], dtype=np.float64)

    lo = float(min(s.min() for s in samples))
    hi = float(np.nextafter(max(float(s.max()) for s in samples), math.inf))
    for _ in range(200):  # float bisection ends in ~64 steps; the cap guards against pathological inputs
        mid = lo + (hi - lo) / 2
        if mid in (lo, hi):
            break
        lo, hi = (lo, mid) if w @ below(mid) >= goal else (mid, hi)
    counts = min((below(lo), below(hi)), key=lambda c: abs(w @ c - goal))
    return counts / sizes, []


def _er_densities(stats: BlockStats, target: float, plus: bool) -> tuple[np.ndarray, list[str]]:
    """RigL's Erdős–Rényi solver over all linear layers: density_l = ε·(n_in + n_out)/(n_in·n_out), layers that
    would exceed 1 become dense and ε is solved again. ER-plus first keeps the last layer dense."""
    if any(not block for block in stats.layer_shapes) or len(stats.layer_shapes) != stats.num_blocks:
        raise ConfigError("ER allocations need the layer shapes of every block; score the model again.")
    shapes = np.array([s for block in stats.layer_shapes for s in block], dtype=np.float64)
    block_of = np.repeat(np.arange(stats.num_blocks), [len(b) for b in stats.layer_shapes])
    size, raw = shapes[:, 0] * shapes[:, 1], shapes.sum(axis=1) / (shapes[:, 0] * shapes[:, 1])
    budget, warnings = (1 - target) * size.sum(), []
    density, dense = np.zeros(size.size), np.zeros(size.size, dtype=bool)
    if plus and size[-1] > budget:
        density[-1] = budget / size[-1]
        warnings.append(f"ER-plus cannot keep the last layer dense at {target:.4g} sparsity: it alone holds more "
                        f"weights than the target leaves, so it keeps {density[-1]:.1%} and every other layer none.")
    else:
        dense[-1] = plus
        while not dense.all():
            free = ~dense
            eps = (budget - size[dense].sum()) / (raw[free] @ size[free])
            if eps * raw[free].max() <= 1:
                density[free] = eps * raw[free]
                break
            dense |= free & (raw == raw[free].max())
        density[dense] = 1.0
    kept = np.bincount(block_of, weights=size * density, minlength=stats.num_blocks)
    return 1 - kept / np.bincount(block_of, weights=size, minlength=stats.num_blocks), warnings


def _owl(stats: BlockStats, target: float, m: float, lam: float) -> tuple[np.ndarray, list[str]]:
    matches = [r for k, r in stats.outlier_ratios.items() if abs(k - m) < 1e-9]
    if not matches:
        have = ", ".join(f"{k:g}" for k in sorted(stats.outlier_ratios)) or "none"
        raise ConfigError(f"OWL with M={m:g} needs outlier ratios at that M; these statistics have M = {have}.")
    d = np.asarray(matches[0], dtype=np.float64)
    warnings = [f"Every block has the same outlier ratio at M={m:g}; OWL is uniform here."] if _flat(d) else []
    return band_mapping(d, stats.params, target, lam), warnings


def _alpha(stats: BlockStats, target: float, eps: float) -> tuple[np.ndarray, list[str]]:
    if stats.alpha_hill is None:
        raise ConfigError("AlphaPruning needs each block's PL_Alpha_Hill; score the model again with alpha enabled.")
    a = np.asarray(stats.alpha_hill, dtype=np.float64)
    if a.shape != (stats.num_blocks,) or not np.isfinite(a).all():
        raise ConfigError("AlphaPruning needs one finite PL_Alpha_Hill per block; score the model again.")
    warnings = ["Every block has the same α; AlphaPruning is uniform here."] if _flat(a) else []
    return multiplicative_mapping(a, stats.params, target, eps), warnings


def _atp(stats: BlockStats, target: float, beta: float) -> tuple[np.ndarray, list[str]]:
    """s_i = target + β·(i − c), c the parameter-weighted mean depth (ATP's mean-centred progression when blocks are
    equal). As in ATP's code, a β that would push a block outside [0, 0.99] is rejected rather than clipped."""
    n, p = stats.num_blocks, _weights(stats.params, stats.num_blocks)
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"ATP's step β must lie in [0, 1]; got {beta}.")
    depth = np.arange(n, dtype=np.float64)
    c = float(np.average(depth, weights=p))
    ratios = target + beta * (depth - c)
    if ratios.min() < -1e-12 or ratios.max() > MAX_SPARSITY + 1e-12:
        limit = min(target / c if c > 0 else math.inf, (MAX_SPARSITY - target) / (n - 1 - c) if n - 1 > c else math.inf)
        raise ConfigError(f"ATP step β={beta:g} is too large for {n} blocks at {target:.4g} sparsity: the progression "
                          f"would leave [0, {MAX_SPARSITY}]; use β ≤ {limit:.4g}.")
    return ratios, []


# Parameter defaults: OWL's and AlphaPruning's published ones. ATP publishes none (its search.sh tries β = 0.002,
# 0.004, … until the progression leaves [0, 1]); 0.01 is legal for up to 61 blocks at 70% sparsity.
_ENTRIES = (
    Baseline("uniform", "The same sparsity in every block.", _uniform),
    Baseline("global", "One score threshold across all blocks (global pruning), so blocks with low scores lose more.",
             _global, needs=("score_samples",)),
    Baseline("er", "Erdős–Rényi (Mocanu et al. 2018): layer density ∝ (n_in + n_out) / (n_in · n_out).",
             partial(_er_densities, plus=False), needs=("layer_shapes",)),
    Baseline("er_plus", "ER with the network's last layer kept dense (ERK+, Liu et al. 2022).",
             partial(_er_densities, plus=True), needs=("layer_shapes",)),
    Baseline("owl", "OWL (Yin et al. 2024): blocks with more outlier scores (above M × mean) get less sparsity, "
             "within ±λ.", _owl, {"m": 5.0, "lam": 0.08}, needs=("outlier_ratios",)),
    Baseline("alpha", "AlphaPruning (Lu et al. 2024): sparsity grows with the heavy-tail exponent α of the weights, "
             "within ±ε.", _alpha, {"eps": 0.3}, needs=("alpha_hill",)),
    Baseline("atp", "ATP (Huang et al. 2025): sparsity grows with depth as an arithmetic progression of step β.",
             _atp, {"beta": 0.01}),
)
BASELINES: dict[str, Baseline] = {b.name: b for b in _ENTRIES}


def required_stats(spec: str | functions.AllocationFunction) -> frozenset[str]:
    """The block statistics an allocation reads besides the block sizes, as its baseline declares them (a DSA
    function reads the score samples and outlier ratios); what PruningSession.stats(needs=...) must make first.
    Empty for a spec that names nothing known: `allocate` says what is wrong with it."""
    if isinstance(spec, str) and spec.strip()[:2].upper() != "W:" and _preset(spec) not in functions.PRESETS:
        baseline = BASELINES.get(_preset(spec.partition(":")[0]))
        return frozenset(baseline.needs if baseline else ())
    return frozenset({"score_samples", "outlier_ratios"})


def _baseline(name: str, stats: BlockStats, target: float, params: dict | None = None) -> Allocation:
    params = {**BASELINES[name].params, **(params or {})}
    target = check_target(target)
    _check_stats(stats)
    raw, warnings = BASELINES[name].fn(stats, target, **params)
    return _finish(raw, stats.params, target, _spec_name(name, params), warnings)


def uniform(stats: BlockStats, target: float) -> np.ndarray:
    return _baseline("uniform", stats, target).ratios


def global_threshold(stats: BlockStats, target: float) -> np.ndarray:
    """The `global` baseline (a Python keyword, hence the name)."""
    return _baseline("global", stats, target).ratios


def er(stats: BlockStats, target: float) -> np.ndarray:
    """Layer ER densities, aggregated to blocks by parameter-weighted mean (uniform when all blocks are alike)."""
    return _baseline("er", stats, target).ratios


def er_plus(stats: BlockStats, target: float) -> np.ndarray:
    """ER with the last linear layer of the last block kept dense, the LLM analogue of ERK+'s dense classifier."""
    return _baseline("er_plus", stats, target).ratios


def owl(stats: BlockStats, target: float, m: float = 5.0, lam: float = 0.08) -> np.ndarray:
    return _baseline("owl", stats, target, {"m": m, "lam": lam}).ratios


def alpha(stats: BlockStats, target: float, eps: float = 0.3) -> np.ndarray:
    return _baseline("alpha", stats, target, {"eps": eps}).ratios


def atp(stats: BlockStats, target: float, beta: float = 0.01) -> np.ndarray:
    return _baseline("atp", stats, target, {"beta": beta}).ratios


# --- the entry point --------------------------------------------------------------------------------------------


def allocate(stats: BlockStats, spec: str | functions.AllocationFunction, target: float) -> Allocation:
    """Allocate `target` sparsity over the blocks of `stats` as `spec` says: a baseline with optional parameters
    ("owl", "owl:M=7,lambda=0.1", "alpha:eps=0.2", "atp:beta=0.005", "global", "er_plus", ...), a DSA preset name
    (see functions.PRESETS), a function's text form, or an AllocationFunction."""
    target = check_target(target)
    if isinstance(spec, functions.AllocationFunction):
        return _allocate_function(stats, spec, target)
    if not isinstance(spec, str):
        raise ConfigError(f"An allocation is a name, a function text or an AllocationFunction; got {spec!r}.")
    text = spec.strip()
    if text[:2].upper() == "W:":
        return _allocate_function(stats, functions.parse(text), target)
    if _preset(text) in functions.PRESETS:
        return _allocate_function(stats, functions.PRESETS[_preset(text)], target)
    name, params = _parse_spec(text)
    return _baseline(name, stats, target, params)


def _allocate_function(stats: BlockStats, f: functions.AllocationFunction, target: float) -> Allocation:
    _check_stats(stats)
    values, warnings = functions.importances(f, stats)
    label = functions.to_text(f)
    if _flat(values) and f.param > 0:
        warnings.append(f"Every block has the same value under {label}; the allocation is uniform.")
    # DSA's convention: larger value ⇒ more sparsity, i.e. the value is minus an importance for the band.
    if f.mapping == "band":
        raw = band_mapping(-values, stats.params, target, f.param)
    else:
        raw = multiplicative_mapping(values, stats.params, target, f.param)
    return _finish(raw, stats.params, target, label, warnings)


def _finish(raw: np.ndarray, params, target: float, name: str, warnings: list[str]) -> Allocation:
    ratios, pinned = _fit(raw, params, target)
    if pinned:
        warnings.append(f"{pinned} block(s) would fall outside [0, {MAX_SPARSITY}] and were clipped; the others were "
                        f"shifted together to keep the weighted mean at {target:.4g}.")
    return Allocation(ratios=ratios, name=name, warnings=warnings)


def _check_stats(stats: BlockStats) -> None:
    n = stats.num_blocks
    if n == 0 or len(stats.score_samples) != n:
        raise ConfigError("The block statistics are empty or inconsistent; score the model again.")
    _weights(stats.params, n)


def _preset(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def _parse_spec(text: str) -> tuple[str, dict[str, float]]:
    head, _, rest = text.partition(":")
    name = head.strip().lower().replace("-", "_")
    if name not in BASELINES:
        raise ConfigError(f"Unknown allocation '{text}'; choose a baseline ({', '.join(BASELINES)}), a DSA preset "
                          f"({', '.join(functions.PRESETS)}) or a function such as "
                          f"{functions.to_text(functions.DSA_PRESET)}.")
    params = dict(BASELINES[name].params)
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = _ALIASES.get(key.strip().lower(), key.strip().lower())
        if not eq or key not in params:
            takes = ", ".join(_SHOWN.get(k, k) for k in params) or "no parameters"
            raise ConfigError(f"'{name}' takes {takes}; cannot read '{item}'.")
        try:
            params[key] = float(value)
        except ValueError:
            raise ConfigError(f"'{item}' in '{text}' is not a number.") from None
        if not math.isfinite(params[key]):
            raise ConfigError(f"'{item}' in '{text}' must be finite.")
    return name, params


def _spec_name(name: str, params: dict[str, float]) -> str:
    return name + (":" + ",".join(f"{_SHOWN.get(k, k)}={v:g}" for k, v in params.items()) if params else "")


def describe(spec: str | functions.AllocationFunction) -> str:
    """One sentence for a UI: what the spec allocates by, with its parameters. ConfigError if it is invalid."""
    if isinstance(spec, str) and _preset(spec) in functions.PRESETS:
        return f"{functions.PRESET_DESCRIPTIONS[_preset(spec)]} {describe(functions.PRESETS[_preset(spec)])}"
    if isinstance(spec, str) and spec.strip()[:2].upper() == "W:":
        spec = functions.parse(spec.strip())
    if isinstance(spec, functions.AllocationFunction):
        how = f"band λ={spec.param:g}" if spec.mapping == "band" else f"multiplicative ε={spec.param:g}"
        return (f"DSA function {functions.to_text(spec)}: per-block value {functions.display_formula(spec)}, {how}; "
                f"larger values get more sparsity.")
    if not isinstance(spec, str):
        raise ConfigError(f"An allocation is a name, a function text or an AllocationFunction; got {spec!r}.")
    name, params = _parse_spec(spec)
    return f"{BASELINES[name].doc} ({_spec_name(name, params)})"
