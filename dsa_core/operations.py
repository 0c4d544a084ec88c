"""The one registry of operations that DSA allocation functions are built from.

An allocation function (dsa_core.functions) runs a block's element-wise scores S through 0–2 pre-process ops,
one reduction to a scalar, then 1–2 scalar transforms; dsa_core.allocation maps the per-block values to sparsity.
Each op here is one `Op` entry: its name, stage, LaTeX formula (with `x` for the argument) and numpy function.
The web app's dropdowns, the text and JSON forms and the search space are all generated from `REGISTRY`, so adding
an op is adding one entry to `_ENTRIES`. This module holds arithmetic only: no model code, no allocation policy.

Element-wise ops follow the DSA reference code (lliai/DSA, lib/autolayer.py) where it defines them, including its
handling of log's domain; ops it lacks follow the usual numpy/scipy definitions. Reductions run in float64.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from dsa_core.errors import ConfigError

PRE, REDUCTION, TRANSFORM = "pre", "reduction", "transform"
STAGES = (PRE, REDUCTION, TRANSFORM)
OUTLIER_M = 5.0  # OWL's default multiplier for the outlier_ratio reduction


@dataclass(frozen=True)
class Op:
    """One operation. `fn` takes a float64 array: the block's scores (pre), the scores plus the block's true
    element count (reduction: `fn(x, numel) -> float`), or the vector of per-block values (transform).
    `domain` (transforms only) is the closed interval where the op is defined, quoted when a warning explains a NaN."""

    name: str
    stage: str
    formula: str
    fn: Callable
    doc: str
    domain: tuple[float, float] | None = None


# --- pre-process (element-wise) -------------------------------------------------------------------------------


def _log(x: np.ndarray) -> np.ndarray:
    # The reference maps non-positive scores to 1 before log(x + 1e-6): they contribute ≈ 0 instead of -inf/NaN.
    y = np.where(x <= 0, 1.0, x)
    y += 1e-6
    return np.log(y, out=y)  # in place on our own copy: these arrays hold 2^18 scores per block


def _abslog(x: np.ndarray) -> np.ndarray:
    # The reference maps exact zeros to 1, so they contribute log 1 = 0.
    y = np.abs(x)
    y[y == 0] = 1.0
    return np.log(y, out=y)


def _normalize(x: np.ndarray) -> np.ndarray:
    std = x.std(ddof=1) if x.size > 1 else 0.0  # torch.std, as the reference ran on tensors
    return np.zeros_like(x) if std == 0 else (x - x.mean()) / std


def _mms(x: np.ndarray) -> np.ndarray:
    lo = x.min()
    return (x - lo) / (x.max() - lo + 1e-9)


# --- reductions (block scores -> scalar) ------------------------------------------------------------------------


def _frobenius(x: np.ndarray, numel: int) -> float:
    # Extensive: estimate the whole block's norm from its sample, √(numel · mean(x²)).
    return float(np.sqrt(numel * np.mean(np.square(x))))


def _gmean(x: np.ndarray, numel: int) -> float:
    # exp(mean log|x|): the reference's prod(x)**(1/n) under- or overflows on any realistic block.
    return float(np.exp(np.mean(np.log(np.abs(x)))))


def _entropy(x: np.ndarray, numel: int) -> float:
    a = np.abs(x)
    p = a / a.sum()
    p = p[p > 0]
    # A uniform sample of n of the block's numel scores has entropy ≈ the block's − log(numel / n).
    return float(-np.sum(p * np.log(p)) + np.log(numel / x.size))


def _moment_ratio(x: np.ndarray, k: int) -> float:
    d = x - x.mean()
    d2 = d * d
    m2 = d2.mean()
    mk = np.dot(d2, d) if k == 3 else np.dot(d2, d2)  # dot, not d**k: an order of magnitude faster
    return float(mk / x.size / m2 ** (k / 2))


def _order_statistics(x: np.ndarray, k: int) -> tuple[float, float]:
    """The k-th and (k+1)-th smallest elements (0-based; the second clipped to the last), from one partition.
    np.quantile and np.median partition for both at once, which costs several times as much on 2^18 elements,
    and quantile reductions dominated a search's breeding; the callers reproduce numpy's results bit for bit."""
    part = np.partition(x, k)
    return part[k], (part[k + 1:].min() if k + 1 < x.size else part[k])


def _quantile(x: np.ndarray, q: float) -> float:
    """np.quantile(x, q) with its default (linear) method, including its NaN result and its interpolation."""
    if np.isnan(x).any():
        return math.nan
    index = (x.size - 1) * q
    k = math.floor(index)
    a, b = _order_statistics(x, k)
    gamma = index - k
    diff = b - a
    # numpy's _lerp: interpolate from the nearer end, so that q at an order statistic returns it exactly
    return float(b - diff * (1 - gamma)) if gamma >= 0.5 else float(a + diff * gamma)


def _median(x: np.ndarray, numel: int) -> float:
    """np.median(x): the middle element, or the mean of the two middle ones."""
    if np.isnan(x).any():
        return math.nan
    half = x.size // 2
    if x.size % 2:
        return float(_order_statistics(x, half)[0])
    a, b = _order_statistics(x, half - 1)
    return float((a + b) / 2)


def _outlier_ratio(x: np.ndarray, numel: int) -> float:
    return float(np.count_nonzero(x > OUTLIER_M * x.mean()) / x.size)


_ENTRIES: tuple[Op, ...] = (
    Op("no_op", PRE, "x", lambda x: x, "leave the scores as they are"),
    Op("abs", PRE, "|x|", np.abs, "absolute value"),
    Op("log", PRE, r"\log(x)", _log, "natural log; non-positive scores count as 1"),
    Op("abslog", PRE, r"\log|x|", _abslog, "log of the absolute value; zeros count as 1"),
    Op("pow", PRE, "x^{2}", np.square, "square"),
    Op("exp", PRE, "e^{x}", np.exp, "exponential"),
    Op("normalize", PRE, r"\frac{x-\mu}{\sigma}", _normalize, "z-score within the block"),
    Op("sigmoid", PRE, r"\mathrm{sigmoid}(x)", expit, "logistic sigmoid"),
    Op("tanh", PRE, r"\tanh(x)", np.tanh, "hyperbolic tangent"),
    Op("mms", PRE, r"\frac{x-\min x}{\max x-\min x}", _mms, "min-max scaling within the block"),
    Op("mean", REDUCTION, r"\mathrm{mean}(x)", lambda x, n: float(x.mean()), "mean"),
    Op("var", REDUCTION, r"\mathrm{var}(x)", lambda x, n: float(x.var(ddof=1)), "variance (unbiased)"),
    Op("std", REDUCTION, r"\mathrm{std}(x)", lambda x, n: float(x.std(ddof=1)), "standard deviation (unbiased)"),
    Op("l1_norm", REDUCTION, r"\frac{\|x\|_1}{n}", lambda x, n: float(np.abs(x).mean()), "L1 norm per element"),
    Op("frobenius_norm", REDUCTION, r"\|x\|_F", _frobenius, "L2 (Frobenius) norm of the whole block"),
    Op("geometric_mean", REDUCTION, r"\mathrm{gmean}(|x|)", _gmean, "geometric mean of |x|"),
    Op("entropy", REDUCTION, r"\mathrm{H}(|x|)", _entropy, "entropy of the normalised |x| distribution"),
    Op("outlier_ratio", REDUCTION, r"\mathrm{outlier}_{5}(x)", _outlier_ratio, "share of scores above 5 × mean"),
    Op("median", REDUCTION, r"\mathrm{median}(x)", _median, "median"),
    Op("skewness", REDUCTION, r"\mathrm{skew}(x)", lambda x, n: _moment_ratio(x, 3), "skewness"),
    Op("kurtosis", REDUCTION, r"\mathrm{kurt}(x)", lambda x, n: _moment_ratio(x, 4) - 3.0, "excess kurtosis"),
    Op("q90", REDUCTION, "Q_{0.9}(x)", lambda x, n: _quantile(x, 0.9), "90th percentile"),
    Op("q99", REDUCTION, "Q_{0.99}(x)", lambda x, n: _quantile(x, 0.99), "99th percentile"),
    Op("no_op", TRANSFORM, "x", lambda v: v, "leave the value as it is"),
    Op("sin", TRANSFORM, r"\sin(x)", np.sin, "sine"),
    Op("cos", TRANSFORM, r"\cos(x)", np.cos, "cosine"),
    Op("tan", TRANSFORM, r"\tan(x)", np.tan, "tangent"),
    Op("asin", TRANSFORM, r"\arcsin(x)", np.arcsin, "arcsine", domain=(-1.0, 1.0)),
    Op("acos", TRANSFORM, r"\arccos(x)", np.arccos, "arccosine", domain=(-1.0, 1.0)),
    Op("atan", TRANSFORM, r"\arctan(x)", np.arctan, "arctangent"),
    Op("exp", TRANSFORM, "e^{x}", np.exp, "exponential"),
    Op("log", TRANSFORM, r"\log(x)", np.log, "natural log (non-positive values are reported)"),
    Op("abs", TRANSFORM, "|x|", np.abs, "absolute value"),
    Op("sigmoid", TRANSFORM, r"\mathrm{sigmoid}(x)", expit, "logistic sigmoid"),
    Op("tanh", TRANSFORM, r"\tanh(x)", np.tanh, "hyperbolic tangent"),
    Op("softplus", TRANSFORM, r"\mathrm{softplus}(x)", lambda v: np.logaddexp(0.0, v), "log(1 + eˣ)"),
    # Flips which blocks get more sparsity (OWL written as a function). Not in DSA's published space, where only
    # decreasing ops such as acos could express "more X, less sparsity"; offered to the search as well.
    Op("neg", TRANSFORM, "-x", np.negative, "negation"),
)

REGISTRY: dict[str, dict[str, Op]] = {stage: {op.name: op for op in _ENTRIES if op.stage == stage} for stage in STAGES}


def get(stage: str, name: str) -> Op:
    """The op `name` (case-insensitive) of `stage`; ConfigError naming the valid choices otherwise."""
    if stage not in REGISTRY:
        raise ConfigError(f"Unknown operation stage '{stage}'; choose one of {', '.join(STAGES)}.")
    op = REGISTRY[stage].get(str(name).lower())
    if op is None:
        raise ConfigError(f"Unknown {stage} operation '{name}'; choose one of {', '.join(REGISTRY[stage])}.")
    return op


def names(stage: str) -> list[str]:
    """Op names of a stage in registry order (what dropdowns and the search space offer)."""
    return list(REGISTRY[stage])


_PLACEHOLDER = re.compile(r"(?<![A-Za-z\\])x(?![A-Za-z])")
_ATOMIC = re.compile(r"[A-Za-z]|\|[^|]*\||\\[A-Za-z]+(\{[^{}]*\})?(_\{[^{}]*\})?\(.*\)")


def compose(formula: str, inner: str) -> str:
    """Substitute `inner` for the argument x of `formula`, adding parentheses where the result would be ambiguous
    (e.g. x^{2} of \\log|S| becomes \\left(\\log|S|\\right)^{2}, while \\arcsin(x) needs none)."""

    def sub(m: re.Match) -> str:
        before, after = formula[m.start() - 1 : m.start()], formula[m.end() : m.end() + 1]
        enclosed = before in ("(", "|", "{") and after in (")", "|", "}")
        wrap = not (enclosed or _ATOMIC.fullmatch(inner))
        return rf"\left({inner}\right)" if wrap else inner

    return _PLACEHOLDER.sub(sub, formula)
