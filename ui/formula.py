"""The formula builder's model: the choices of each dropdown (generated from the operation registry), the
conversion between the builder's controls and an `AllocationFunction`, and the function written as mathematics.

No Gradio here: the builder tab wires these functions to its components, and tests call them directly.
"""

from __future__ import annotations

import re
from dataclasses import astuple, dataclass

from dsa_core import functions
from dsa_core import operations as ops

EMPTY = "no_op"  # what an unused pre-process or transform slot holds
CONTROLS = ("pre1", "pre2", "reduction", "transform1", "transform2", "mapping", "param")
MAPPING_LABELS = {"band": "band (OWL's ±λ)", "multiplicative": "multiplicative (AlphaPruning's ε)"}
PARAM_MAX = 1.0  # the slider's end: ε goes up to 1; a band's λ above 0.5 is refused with a message


@dataclass(frozen=True)
class Controls:
    """What the builder's dropdowns and slider hold, in the order of `CONTROLS`."""

    pre1: str = EMPTY
    pre2: str = EMPTY
    reduction: str = "var"
    transform1: str = EMPTY
    transform2: str = EMPTY
    mapping: str = "band"
    param: float = functions.MAPPINGS["band"]

    def values(self) -> tuple:
        return astuple(self)


def choices(stage: str) -> list[str]:
    """A stage's op names for its dropdown, in registry order."""
    return ops.names(stage)


def glossary(stage: str) -> str:
    """One line per op of a stage: its name, its formula and what it does (Markdown, KaTeX inline maths)."""
    return "\n".join(f"- `{op.name}`: ${op.formula}$, {op.doc}" for op in ops.REGISTRY[stage].values())


def mapping_choices() -> list[tuple[str, str]]:
    return [(MAPPING_LABELS[m], m) for m in functions.MAPPINGS]


def function_from_controls(pre1: str, pre2: str, reduction: str, transform1: str, transform2: str, mapping: str,
                           param: float) -> functions.AllocationFunction:
    """The function the controls describe; ConfigError (with a sentence for the user) when they are invalid."""
    return functions.AllocationFunction(pre=(pre1 or EMPTY, pre2 or EMPTY), reduction=reduction,
                                        transform=(transform1 or EMPTY, transform2 or EMPTY), mapping=mapping,
                                        param=param)


def controls_from_function(fn: functions.AllocationFunction) -> Controls:
    """The controls that describe `fn` (its tag, which has no effect on the allocation, is not kept)."""
    pre = (*fn.pre, EMPTY, EMPTY)[:2]
    transform = (*fn.transform, EMPTY)[:2]
    return Controls(pre[0], pre[1], fn.reduction, transform[0], transform[1], fn.mapping, fn.param)


def controls_from_text(text: str) -> Controls:
    """Controls for a function's text form or a preset name (dsa, owl_fn, uniform_fn); ConfigError otherwise."""
    key = text.strip().lower().replace("-", "_")
    return controls_from_function(functions.PRESETS[key] if key in functions.PRESETS else functions.parse(text))


def preset_of(controls: Controls, presets: tuple[str, ...]) -> str | None:
    """Which of `presets` (keys of functions.PRESETS) the controls describe exactly; None once they differ from
    every one, so that a preset's name is not left standing after an edit."""
    for key in presets:
        want = controls_from_function(functions.PRESETS[key])
        if want.values()[:-1] == controls.values()[:-1] and abs(want.param - float(controls.param)) < 1e-9:
            return key
    return None


_VARIABLE = re.compile(r"(?<![A-Za-z\\])S(?![A-Za-z])")
_NORMALISED = r"\frac{v_\ell-\min_j v_j}{\max_j v_j-\min_j v_j}"


def formula_markdown(fn: functions.AllocationFunction) -> str:
    """Markdown with display maths (KaTeX, `$$`): the per-block value v_ℓ, then the mapping to sparsity s_ℓ."""
    value = _VARIABLE.sub(r"S_\\ell", functions.display_formula(fn))
    if fn.mapping == "band":
        mapping = rf"s_\ell = c + 2\lambda\,{_NORMALISED},\qquad \lambda = {fn.param:g}"
    else:
        mapping = rf"s_\ell = c\left(1-\varepsilon+2\varepsilon\,{_NORMALISED}\right),\qquad \varepsilon = {fn.param:g}"
    return (
        f"$$v_\\ell = {value}$$\n\n$$ {mapping} $$\n\n"
        "S<sub>ℓ</sub>: the element-wise scores of block ℓ. Larger v<sub>ℓ</sub> ⇒ more sparsity; c makes the "
        "parameter-weighted mean sparsity equal the target, and blocks are clipped to [0, 0.99]."
    )
