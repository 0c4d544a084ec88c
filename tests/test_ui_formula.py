"""The builder's model: dropdown choices come from the registry, controls and functions convert both ways, and the
formula renders as KaTeX-ready maths."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsa_core import functions
from dsa_core import operations as ops
from dsa_core.errors import ConfigError
from ui.formula import (
    CONTROLS,
    EMPTY,
    PARAM_MAX,
    Controls,
    choices,
    controls_from_function,
    controls_from_text,
    formula_markdown,
    function_from_controls,
    glossary,
    preset_of,
)


def test_choices_are_the_registry():
    for stage in ops.STAGES:
        assert choices(stage) == list(ops.REGISTRY[stage])
        assert all(f"`{name}`" in glossary(stage) for name in ops.REGISTRY[stage])
    assert "neg" in choices(ops.TRANSFORM)  # the builder offers ops the search leaves out


def test_controls_order_matches_the_dataclass():
    assert tuple(Controls.__dataclass_fields__) == CONTROLS
    assert PARAM_MAX >= max(hi for _, hi in functions._PARAM_RANGE.values())


@pytest.mark.parametrize("name", sorted(functions.PRESETS))
def test_presets_round_trip_without_their_tag(name):
    fn = functions.PRESETS[name]
    c = controls_from_text(name)
    assert c == controls_from_function(fn)
    rebuilt = function_from_controls(*c.values())
    assert rebuilt == functions.AllocationFunction(fn.pre, fn.reduction, fn.transform, fn.mapping, fn.param)


@given(
    pre=st.lists(st.sampled_from(ops.names(ops.PRE)), min_size=2, max_size=2),
    reduction=st.sampled_from(ops.names(ops.REDUCTION)),
    transform=st.lists(st.sampled_from(ops.names(ops.TRANSFORM)), min_size=2, max_size=2),
    mapping=st.sampled_from(sorted(functions.MAPPINGS)),
    param=st.floats(0.0, 0.5),
)
def test_any_controls_round_trip_through_the_text_form(pre, reduction, transform, mapping, param):
    fn = function_from_controls(pre[0], pre[1], reduction, transform[0], transform[1], mapping, param)
    c = controls_from_text(functions.to_text(fn))
    assert function_from_controls(*c.values()) == fn
    assert len([v for v in (c.pre1, c.pre2) if v != EMPTY]) == len(fn.pre)


def test_empty_slots_are_no_op():
    fn = function_from_controls(None, "", "var", "", None, "band", 0.1)
    assert fn.pre == () and fn.transform == ("no_op",) and fn.param == 0.1


def test_invalid_controls_and_texts_say_what_is_wrong():
    with pytest.raises(ConfigError, match="hyper-parameter"):
        function_from_controls(EMPTY, EMPTY, "var", EMPTY, EMPTY, "band", 0.8)
    with pytest.raises(ConfigError, match="Unknown reduction"):
        function_from_controls(EMPTY, EMPTY, "nope", EMPTY, EMPTY, "band", 0.1)
    with pytest.raises(ConfigError, match="Cannot read"):
        controls_from_text("not a function")


def test_formula_shows_value_and_mapping():
    md = formula_markdown(functions.DSA_PRESET)
    assert r"v_\ell = \arcsin(\arctan(\mathrm{var}(\log|S_\ell|)))" in md
    assert r"\lambda = 0.08" in md and md.count("$$") == 4
    mult = formula_markdown(function_from_controls("pow", EMPTY, "mean", EMPTY, EMPTY, "multiplicative", 0.2))
    assert r"\varepsilon = 0.2" in mult and r"S_\ell^{2}" in mult


def test_a_preset_is_named_only_while_the_controls_are_exactly_it():
    presets = ("dsa", "owl_fn", "uniform_fn")
    dsa = controls_from_text("dsa")
    assert preset_of(dsa, presets) == "dsa"
    assert preset_of(Controls(*dsa.values()[:-1], dsa.param + 0.01), presets) is None  # λ moved
    assert preset_of(Controls(*dsa.values()[:2], "mean", *dsa.values()[3:]), presets) is None
    assert preset_of(controls_from_text("owl_fn"), presets) == "owl_fn"
    assert preset_of(Controls(), ("dsa",)) is None
