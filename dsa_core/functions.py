"""DSA allocation functions: what they are, their text and JSON forms, and the per-block values they compute.

An `AllocationFunction` is pre (0–2 element-wise ops) → reduction (1) → transform (1–2 scalar ops), as in the
published DSA code (lliai/DSA, lib/autolayer.py: stick, deform and post ops), plus the mapping that turns the
per-block values into sparsity ("band" with λ, as DSA's reference pipeline does, or AlphaPruning's "multiplicative"
with ε). Ops come from dsa_core.operations. `importances` computes the per-block values; dsa_core.allocation maps
them to ratios. No model code and no mapping arithmetic here.

Sign convention, as in DSA's reference: a LARGER value gets MORE sparsity (the reference min-max normalises the
values and inverts them before OWL's band of keep ratios). Write `neg` to flip it, as the OWL preset does.

Text form (compatible with the published one; see `to_text`):
    W:(PRE[,PRE])-(REDUCTION)-(TRANSFORM[,TRANSFORM])[-(TAIL)]
PRE is NO_OP when empty. TAIL holds, comma-separated: the published form's integer field (the reference parses it
into LayerEngine.LAMBDA and never reads it; kept so published strings round-trip), then the mapping when it is not
the default band with λ = 0.08, as BAND=λ or MULT=ε. Examples:
    W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(7)         the published LLaMA-1-7B function, band λ = 0.08
    W:(NO_OP)-(STD)-(TANH)-(MULT=0.2)          AlphaPruning's multiplicative mapping with ε = 0.2
"""

from __future__ import annotations

import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dsa_core import operations as ops
from dsa_core.errors import ConfigError
from dsa_core.stats import BlockStats

MAPPINGS = {"band": 0.08, "multiplicative": 0.3}  # mapping -> default hyper-parameter (OWL's λ, AlphaPruning's ε)
_TAIL_NAMES = {"band": "BAND", "multiplicative": "MULT"}
_PARAM_RANGE = {"band": (0.0, 0.5), "multiplicative": (0.0, 1.0)}
_block_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): see _blocks_pool


def _blocks_pool() -> ThreadPoolExecutor:
    """The threads that reduce blocks, shared by every caller (the search's breeding threads included; its tasks
    never wait on the pool themselves). One per process: a forked child does not inherit the parent's threads."""
    global _block_pool
    if _block_pool is None or _block_pool[0] != os.getpid():
        _block_pool = (os.getpid(), ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="dsa-reduce"))
    return _block_pool[1]


TAG_DIGITS = 18  # a tag is a label; longer digit strings (Python refuses to read over 4300) are refused


@dataclass(frozen=True)
class AllocationFunction:
    """A DSA allocation function. Fields are normalised on construction, so equal functions compare equal:
    names lower-case, `no_op` dropped from pre and from a two-op transform, `param` defaulted by mapping.

    param: the mapping's hyper-parameter, λ for "band" (sparsity spread over target ± λ), ε for "multiplicative".
    tag: the published text form's fourth field, an integer with no effect on the allocation (None when absent).
    """

    pre: tuple[str, ...] = ()
    reduction: str = "var"
    transform: tuple[str, ...] = ("no_op",)
    mapping: str = "band"
    param: float | None = None
    tag: int | None = None

    def __post_init__(self) -> None:
        pre, transform = _names(self.pre, "pre-process"), _names(self.transform, "transform")
        if len(pre) > 2 or not 1 <= len(transform) <= 2:
            raise ConfigError("An allocation function takes 0–2 pre-process ops and 1–2 transform ops.")
        pre = tuple(ops.get(ops.PRE, n).name for n in pre if n.lower() != "no_op")
        transform = tuple(ops.get(ops.TRANSFORM, n).name for n in transform)
        transform = tuple(n for n in transform if n != "no_op") or ("no_op",)
        mapping = str(self.mapping).lower()
        if mapping not in MAPPINGS:
            raise ConfigError(f"Unknown mapping '{self.mapping}'; choose one of {', '.join(MAPPINGS)}.")
        param = MAPPINGS[mapping] if self.param is None else _float(self.param, "The mapping's hyper-parameter")
        lo, hi = _PARAM_RANGE[mapping]
        if not lo <= param <= hi:
            raise ConfigError(f"The {mapping} mapping's hyper-parameter must lie in [{lo}, {hi}]; got {param}.")
        if self.tag is not None and (isinstance(self.tag, bool) or not isinstance(self.tag, int)
                                     or not 0 <= self.tag < 10**TAG_DIGITS):
            raise ConfigError(f"The function's tag must be a non-negative integer of at most {TAG_DIGITS} digits; "
                              f"got {self.tag!r}.")
        for name, value in (("pre", pre), ("reduction", ops.get(ops.REDUCTION, self.reduction).name),
                            ("transform", transform), ("mapping", mapping), ("param", param)):
            object.__setattr__(self, name, value)


def _names(value, what: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"The {what} ops must be a list of operation names; got {value!r}.")
    return tuple(value)


def _float(value, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number; got {value!r}.") from None
    if not math.isfinite(x):
        raise ConfigError(f"{what} must be finite; got {value!r}.")
    return x


# --- presets ----------------------------------------------------------------------------------------------------

# lliai/DSA README: LLaMA-1-7B, Wanda, 70% sparsity; λ is the reference's --Lamda default, 0.08.
DSA_PRESET = AllocationFunction(pre=("abslog",), reduction="var", transform=("atan", "asin"), tag=7)
# OWL (Yin et al. 2024): more outliers (share above 5 × mean) ⇒ less sparsity; neg turns it into DSA's convention.
OWL_FUNCTION = AllocationFunction(reduction="outlier_ratio", transform=("neg",))
# A band of width 0: every block gets the target, whatever its value.
UNIFORM_FUNCTION = AllocationFunction(reduction="mean", param=0.0)

PRESETS: dict[str, AllocationFunction] = {"dsa": DSA_PRESET, "owl_fn": OWL_FUNCTION, "uniform_fn": UNIFORM_FUNCTION}
PRESET_DESCRIPTIONS = {
    "dsa": "The published DSA function for LLaMA-1-7B at 70% (Li et al., NeurIPS 2024).",
    "owl_fn": "OWL written as a DSA function: outlier ratio at M = 5, band λ = 0.08.",
    "uniform_fn": "Uniform written as a DSA function: a band of width 0.",
}


# --- text and JSON forms ----------------------------------------------------------------------------------------

_GROUP = r"\s*\(([^()]*)\)\s*"
_TEXT = re.compile(rf"\s*W\s*:{_GROUP}-{_GROUP}-{_GROUP}(?:-{_GROUP})?", re.IGNORECASE)


def to_text(f: AllocationFunction) -> str:
    """The canonical text form; `parse(to_text(f)) == f`."""
    tail = [] if f.tag is None else [str(f.tag)]
    if (f.mapping, f.param) != ("band", MAPPINGS["band"]):
        tail.append(f"{_TAIL_NAMES[f.mapping]}={f.param!r}")
    groups = [",".join(f.pre) or "no_op", f.reduction, ",".join(f.transform)] + ([",".join(tail)] if tail else [])
    return "W:" + "-".join(f"({g.upper()})" for g in groups)


def parse(text: str) -> AllocationFunction:
    """Read a text form (case- and space-insensitive); ConfigError saying what is wrong otherwise."""
    m = _TEXT.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(f"Cannot read allocation function {text!r}; expected W:(PRE)-(REDUCTION)-(TRANSFORM)[-(N)].")
    pre, reduction, transform, tail = (g if g is None else [s.strip() for s in g.split(",")] for g in m.groups())
    if len(reduction) != 1:
        raise ConfigError(f"An allocation function has exactly one reduction; got ({m.group(2)}).")
    kw: dict = {}
    for item in tail or []:
        key, _, value = item.partition("=")
        if re.fullmatch(rf"[0-9]{{1,{TAG_DIGITS}}}", item) and "tag" not in kw and "mapping" not in kw:
            kw["tag"] = int(item)
        elif value and key.upper() in _TAIL_NAMES.values() and "mapping" not in kw:
            kw["mapping"] = {v: k for k, v in _TAIL_NAMES.items()}[key.upper()]
            kw["param"] = _float(value, f"{key.upper()} in {text!r}")
        else:
            raise ConfigError(f"Cannot read '{item}' in {text!r}; the last group holds a tag and/or BAND=λ or MULT=ε.")
    return AllocationFunction(pre=tuple(pre), reduction=reduction[0], transform=tuple(transform), **kw)


def to_dict(f: AllocationFunction) -> dict:
    return {"pre": list(f.pre), "reduction": f.reduction, "transform": list(f.transform), "mapping": f.mapping,
            "param": f.param, "tag": f.tag}


def from_dict(d: dict) -> AllocationFunction:
    unknown = set(d) - {"pre", "reduction", "transform", "mapping", "param", "tag"}
    if unknown:
        raise ConfigError(f"Unknown allocation function keys: {', '.join(sorted(unknown))}.")
    if "reduction" not in d:
        raise ConfigError("An allocation function needs a reduction.")
    kw = {k: tuple(v) if k in ("pre", "transform") and isinstance(v, list) else v for k, v in d.items()}
    return AllocationFunction(**kw)


def to_json(f: AllocationFunction) -> str:
    return json.dumps(to_dict(f), sort_keys=True)


def from_json(text: str) -> AllocationFunction:
    try:
        d = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"Cannot read allocation function JSON: {e}.") from None
    if not isinstance(d, dict):
        raise ConfigError("Allocation function JSON must be an object.")
    return from_dict(d)


def display_formula(f: AllocationFunction) -> str:
    """LaTeX of the function's value, e.g. \\arcsin(\\arctan(\\mathrm{var}(\\log|S|))) for the DSA preset."""
    expr = "S"
    for name in f.pre:
        expr = ops.compose(ops.get(ops.PRE, name).formula, expr)
    expr = ops.compose(ops.get(ops.REDUCTION, f.reduction).formula, expr)
    for name in f.transform:
        expr = ops.compose(ops.get(ops.TRANSFORM, name).formula, expr)
    return expr


# --- search space -----------------------------------------------------------------------------------------------


def slot_choices() -> dict[str, list[str]]:
    """One categorical per slot, generated from the registry (no_op in a slot means the slot is empty)."""
    pre, transform = ops.names(ops.PRE), ops.names(ops.TRANSFORM)
    return {"pre1": pre, "pre2": pre, "reduction": ops.names(ops.REDUCTION),
            "transform1": transform, "transform2": transform}


def function_from_slots(slots: dict, lam: float) -> AllocationFunction:
    """The band-mapped function a search trial chose: one op per slot of `slot_choices()`, plus λ."""
    return AllocationFunction(pre=(slots["pre1"], slots["pre2"]), reduction=slots["reduction"],
                              transform=(slots["transform1"], slots["transform2"]), param=lam)


# --- per-block values -------------------------------------------------------------------------------------------


def importances(f: AllocationFunction, stats: BlockStats) -> tuple[np.ndarray, list[str]]:
    """The function's value for each block (DSA's layer 'importance'; larger ⇒ more sparsity) and warnings.

    Numerical hazards follow the DSA reference (LayerEngine.compute_importance), under which the published functions
    were found, and are always reported: a final NaN counts as 0 and a final ±inf as −1 (asin of 1.3 gives NaN, so
    that block's value is 0). A warning names each block that met a hazard, the op that first produced it (a
    pre-process op with non-finite scores, or the reduction or transform that returned NaN/±inf) and what the block's
    value became. Blocks are numbered from 0, like the model's layers. With no pre-process, outlier_ratio uses the
    exact per-block share computed at scoring time rather than the sample.
    """
    n = stats.num_blocks
    if n == 0 or len(stats.score_samples) != n:
        raise ConfigError("The block statistics are empty or inconsistent; score the model again.")
    key = (f.pre, f.reduction)
    if key not in stats.reductions:
        stats.reductions[key] = _reduce(f, stats)
    reduced, cause = stats.reductions[key]
    values, cause = reduced.copy(), dict(cause)  # block -> (op, what it gave, argument outside the op's domain)
    with np.errstate(all="ignore"):
        for name in f.transform:
            op = ops.get(ops.TRANSFORM, name)
            out = np.asarray(op.fn(values), dtype=np.float64)
            for b in np.flatnonzero(~np.isfinite(out) & np.isfinite(values)):
                outside = op.domain is not None and not op.domain[0] <= values[b] <= op.domain[1]
                cause.setdefault(int(b), (name, str(out[b]), values[b] if outside else None))
            values = out
    warnings = _hazard_warnings(values, cause)
    values = np.where(np.isnan(values), 0.0, np.where(np.isinf(values), -1.0, values))
    return values, warnings


def _reduce(f: AllocationFunction, stats: BlockStats) -> tuple[np.ndarray, dict[int, tuple]]:
    """Per-block value after pre-process and reduction, and the first hazard met in each block. Blocks run in
    threads: numpy releases the GIL on arrays this size, and one new (pre, reduction) pair is the critical path
    of a search's breeding and of the web app's redraw."""
    reduction = ops.get(ops.REDUCTION, f.reduction)
    exact = [r for m, r in stats.outlier_ratios.items() if abs(m - ops.OUTLIER_M) < 1e-9]

    def block(b: int) -> tuple[float, tuple | None]:
        if not f.pre and f.reduction == "outlier_ratio" and exact:
            return float(exact[0][b]), None
        cause = None
        with np.errstate(all="ignore"):
            x = np.asarray(stats.score_samples[b], dtype=np.float64)
            for name in f.pre:
                x = ops.get(ops.PRE, name).fn(x)
                if cause is None and not np.isfinite(x).all():
                    cause = (name, "non-finite scores", None)
            return (reduction.fn(x, int(stats.params[b])) if x.size else math.nan), cause

    results = list(_blocks_pool().map(block, range(stats.num_blocks)))
    values = np.array([v for v, _ in results], dtype=np.float64)
    cause = {b: c for b, (_, c) in enumerate(results) if c is not None}
    for b in np.flatnonzero(~np.isfinite(values)):
        cause.setdefault(int(b), (f.reduction, str(values[b]), None))
    return values, cause


def _hazard_warnings(values: np.ndarray, cause: dict[int, tuple]) -> list[str]:
    """One sentence per (op, what it gave, outcome): which blocks, why, and what their value became."""
    outcomes = {"nan": "as in the DSA reference code, NaN counts as 0", "inf": "as in the DSA reference code, "
                "±inf counts as −1", "finite": "the ops after it still gave a finite value, which is kept"}
    groups: dict[tuple[str, str, str], list[tuple[int, float | None]]] = {}
    for b, (op, what, argument) in sorted(cause.items()):
        kind = "nan" if np.isnan(values[b]) else "inf" if np.isinf(values[b]) else "finite"
        groups.setdefault((op, what, kind), []).append((b, argument))
    warnings = []
    for (op, what, kind), items in groups.items():
        blocks = ", ".join(str(b) for b, _ in items[:8]) + _more(len(items))
        arguments = [a for _, a in items if a is not None]
        why = ""
        if arguments:
            lo, hi = ops.get(ops.TRANSFORM, op).domain
            shown = ", ".join(f"{a:.4g}" for a in arguments[:8]) + _more(len(arguments))
            why = f" (argument{'s' if len(arguments) > 1 else ''} {shown} outside [{lo:g}, {hi:g}])"
        warnings.append(f"{op} gave {what} for block{'s' if len(items) > 1 else ''} {blocks}{why}; {outcomes[kind]}.")
    return warnings


def _more(count: int) -> str:
    return f" and {count - 8} more" if count > 8 else ""
