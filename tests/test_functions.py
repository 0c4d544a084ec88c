"""DSA allocation functions: published text forms read and write back exactly, every function round-trips through
text and JSON, the presets reproduce their references, and numerical hazards are always reported."""

import os
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsa_core import allocation as A
from dsa_core import functions
from dsa_core import operations as ops
from dsa_core.errors import ConfigError
from tests.test_allocation import make_stats


@st.composite
def random_functions(draw) -> functions.AllocationFunction:
    mapping = draw(st.sampled_from(sorted(functions.MAPPINGS)))
    return functions.AllocationFunction(
        pre=tuple(draw(st.lists(st.sampled_from(ops.names(ops.PRE)), max_size=2))),
        reduction=draw(st.sampled_from(ops.names(ops.REDUCTION))),
        transform=tuple(draw(st.lists(st.sampled_from(ops.names(ops.TRANSFORM)), min_size=1, max_size=2))),
        mapping=mapping,
        param=draw(st.floats(0.0, 0.5 if mapping == "band" else 1.0)),
        tag=draw(st.none() | st.integers(0, 10**9)),
    )


@pytest.mark.parametrize("text", ["W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(7)", "W:(ABSLOG)-(VAR)-(ATAN)-(7)",
                                  "W:(NO_OP)-(GEOMETRIC_MEAN)-(SIN,TANH)-(10)", "W:(ABS,LOG)-(FROBENIUS_NORM)-(SIN)"])
def test_published_text_forms_read_and_write_back_unchanged(text):
    assert functions.to_text(functions.parse(text)) == text


def test_the_dsa_preset_is_the_published_function():
    f = functions.parse("W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(7)")
    assert f == functions.DSA_PRESET == functions.PRESETS["dsa"]
    assert (f.pre, f.reduction, f.transform, f.mapping, f.param, f.tag) == (
        ("abslog",), "var", ("atan", "asin"), "band", 0.08, 7)
    assert functions.display_formula(f) == r"\arcsin(\arctan(\mathrm{var}(\log|S|)))"


@settings(max_examples=300, deadline=None)
@given(f=random_functions())
def test_every_function_round_trips_through_text_json_and_dict(f):
    text = functions.to_text(f)
    assert functions.parse(text) == f
    assert functions.parse(text.lower().replace(")-(", ") - ( ")) == f
    assert functions.from_json(functions.to_json(f)) == f
    assert functions.from_dict(functions.to_dict(f)) == f
    assert "S" in functions.display_formula(f)


def test_equal_functions_are_written_the_same_way():
    a = functions.AllocationFunction(pre=("no_op", "ABS"), reduction="VAR", transform=("atan", "no_op"), param=0.08)
    b = functions.parse("w:(abs)-(var)-(atan)")
    assert a == b and hash(a) == hash(b) and functions.to_text(a) == "W:(ABS)-(VAR)-(ATAN)"
    no_ops = functions.AllocationFunction(reduction="mean", transform=("no_op", "no_op"))
    assert functions.to_text(no_ops) == "W:(NO_OP)-(MEAN)-(NO_OP)"
    assert functions.to_text(functions.AllocationFunction(reduction="std", mapping="multiplicative")) == (
        "W:(NO_OP)-(STD)-(NO_OP)-(MULT=0.3)")


@pytest.mark.parametrize("text,message", [
    ("W:(ABS)-(VAR)", "Cannot read"),
    ("W:(ABS)-(SLOGDET)-(SIN)", "Unknown reduction"),
    ("W:(ABS,LOG,EXP)-(VAR)-(SIN)", "0–2 pre-process"),
    ("W:(ABS)-(VAR,STD)-(SIN)", "exactly one reduction"),
    ("W:(ABS)-(VAR)-(SIN,COS,TAN)", "1–2 transform"),
    ("W:(ABS)-(VAR)-(SIN)-(X)", "Cannot read 'X'"),
    ("W:(ABS)-(VAR)-(SIN)-(BAND=0.8)", r"\[0.0, 0.5\]"),
    ("W:(ABS)-(VAR)-(SIN)-(MULT=nan)", "finite"),
    ("W:(ABS)-(VAR)-(SIN)-(BAND=0.1,MULT=0.2)", "Cannot read 'MULT"),
    ("W:(ABS)-(VAR)-(SIN)-(" + "1" * 5000 + ")", "Cannot read '1111"),  # beyond Python's int-parsing limit
    ("W:(ABS)-(VAR)-(SIN)-(BAND=" + "1" * 5000 + ")", "must be finite|must lie"),
])
def test_bad_text_forms_say_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=message):
        functions.parse(text)


def test_bad_dicts_and_json_are_rejected():
    with pytest.raises(ConfigError, match="Unknown allocation function keys"):
        functions.from_dict({**functions.to_dict(functions.DSA_PRESET), "lambda": 0.1})
    with pytest.raises(ConfigError, match="needs a reduction"):
        functions.from_dict({"pre": ["abs"]})
    with pytest.raises(ConfigError, match="list of operation names"):
        functions.from_dict({"reduction": "var", "pre": "abs"})
    with pytest.raises(ConfigError, match="tag"):
        functions.from_dict({"reduction": "var", "tag": -1})
    with pytest.raises(ConfigError, match="JSON"):
        functions.from_json("{not json")


def dsa_reference(samples, target, lam):
    """lliai/DSA: LayerEngine('W:(ABSLOG)-(VAR)-(ATAN,ASIN)') per layer, then test_prune_wanda_outlier_use_var's
    mapping (min-max, 1 − x, OWL's band of keep ratios), transcribed to numpy."""
    values = []
    for s in samples:
        x = s.astype(np.float64)
        x[x == 0] = 1
        with np.errstate(invalid="ignore"):  # asin of a value above 1: NaN, as in torch
            value = np.arcsin(np.arctan(np.var(np.log(np.abs(x)), ddof=1)))
        values.append(0.0 if np.isnan(value) else -1 if np.isinf(value) else value)
    r = np.array(values)
    r = 1 - (r - r.min()) / (r.max() - r.min())
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    return 1 - (r - np.mean(r) + (1 - target))


@pytest.mark.parametrize("hazards", [(), (3, 9)])
def test_the_dsa_preset_reproduces_the_reference_pipeline(hazards):
    stats = make_stats(32, seed=11)
    rng = np.random.default_rng(0)
    for b in hazards:  # var(log S) = 2.25 > tan(1), so atan(var) > 1 and asin is undefined there
        stats.score_samples[b] = rng.lognormal(sigma=1.5, size=2048).astype(np.float32)
    result = A.allocate(stats, "dsa", 0.7)
    assert len(result.warnings) == (1 if hazards else 0)
    np.testing.assert_allclose(result.ratios, dsa_reference(stats.score_samples, 0.7, 0.08), atol=1e-12)


def test_owl_and_uniform_presets_equal_their_baselines():
    stats = make_stats(24, equal=False, seed=12)
    np.testing.assert_array_equal(A.allocate(stats, "owl_fn", 0.65).ratios, A.allocate(stats, "owl", 0.65).ratios)
    np.testing.assert_array_equal(A.allocate(stats, "uniform_fn", 0.65).ratios, np.full(24, 0.65))


def test_outlier_ratio_of_raw_scores_uses_the_exact_statistics():
    stats = make_stats(12)
    stats.outlier_ratios[5.0] = np.linspace(0.01, 0.02, 12)  # differs from any estimate on the samples
    values, _ = functions.importances(functions.OWL_FUNCTION, stats)
    np.testing.assert_array_equal(values, -np.linspace(0.01, 0.02, 12))
    sampled, _ = functions.importances(functions.AllocationFunction(pre=("abs",), reduction="outlier_ratio"), stats)
    assert not np.allclose(sampled, np.linspace(0.01, 0.02, 12))


def test_asin_outside_its_domain_is_reported_with_the_block_and_counts_as_zero():
    stats = make_stats(16, seed=13)
    rng = np.random.default_rng(0)
    for b in (3, 9):
        stats.score_samples[b] = rng.lognormal(sigma=1.5, size=2048).astype(np.float32)
    values, warnings = functions.importances(functions.DSA_PRESET, stats)
    assert warnings == ["asin gave nan for blocks 3, 9 (arguments 1.154, 1.148 outside [-1, 1]); "
                        "as in the DSA reference code, NaN counts as 0."]
    assert values[3] == values[9] == 0.0 and np.isfinite(values).all() and (np.delete(values, [3, 9]) > 0).all()
    result = A.allocate(stats, functions.DSA_PRESET, 0.7)  # the lowest value ⇒ the least sparsity
    assert result.warnings == warnings and result.ratios[3] == result.ratios[9] == result.ratios.min()


def test_non_finite_values_are_reported_and_follow_the_reference():
    stats = make_stats(12, seed=14)
    stats.score_samples[5] = -stats.score_samples[5]  # log of a negative mean is NaN
    values, warnings = functions.importances(functions.parse("W:(NO_OP)-(MEAN)-(LOG)"), stats)
    assert warnings == ["log gave nan for block 5; as in the DSA reference code, NaN counts as 0."]
    assert values[5] == 0.0
    values, warnings = functions.importances(functions.parse("W:(NO_OP)-(MEAN)-(LOG,NEG)"), make_stats(12, seed=14))
    assert np.isfinite(values).all() and warnings == []
    stats.score_samples[5] = np.array([1e300, -1e300] * 4)  # var overflows to inf
    values, warnings = functions.importances(functions.parse("W:(NO_OP)-(VAR)-(NO_OP)"), stats)
    assert warnings == ["var gave inf for block 5; as in the DSA reference code, ±inf counts as −1."]
    assert values[5] == -1.0


def test_overflow_in_pre_processing_is_reported_even_when_the_value_stays_finite():
    stats = make_stats(12, seed=15)
    stats.score_samples[2] = stats.score_samples[2] * 1e5  # exp overflows to inf in this block only
    _, warnings = functions.importances(functions.parse("W:(EXP)-(OUTLIER_RATIO)-(NO_OP)"), stats)
    assert warnings == ["exp gave non-finite scores for block 2; the ops after it still gave a finite value, "
                        "which is kept."]


def test_a_function_undefined_on_every_block_gives_uniform_and_says_why():
    result = A.allocate(make_stats(12), "W:(NO_OP)-(MEAN)-(NEG,LOG)", 0.5)
    np.testing.assert_array_equal(result.ratios, np.full(12, 0.5))
    assert result.warnings[0].startswith("log gave nan for blocks 0, 1, 2, 3, 4, 5, 6, 7 and 4 more;")
    assert "uniform" in result.warnings[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f=random_functions(), target=st.floats(0.0, 0.99), seed=st.integers(0, 10**6), equal=st.booleans())
def test_any_function_allocates_exactly(f, target, seed, equal):
    stats = make_stats(16, 128, seed, equal)
    result = A.allocate(stats, f, target)
    assert 0.0 <= result.ratios.min() and result.ratios.max() <= 0.99
    assert abs(np.average(result.ratios, weights=stats.params) - target) < 1e-6
    assert result.name == functions.to_text(f)


def test_search_slots_are_generated_from_the_registry():
    slots = functions.slot_choices()
    assert set(slots) == {"pre1", "pre2", "reduction", "transform1", "transform2"}
    assert slots["reduction"] == ops.names(ops.REDUCTION) and slots["transform2"] == ops.names(ops.TRANSFORM)
    f = functions.function_from_slots({"pre1": "no_op", "pre2": "abslog", "reduction": "var", "transform1": "atan",
                                       "transform2": "asin"}, lam=0.08)
    assert f == functions.AllocationFunction(pre=("abslog",), reduction="var", transform=("atan", "asin"))


def test_reductions_are_memoised_per_pre_process_and_reduction():
    stats, fresh = make_stats(16, seed=16), make_stats(16, seed=16)
    first = functions.AllocationFunction(pre=("abslog",), reduction="var", transform=("atan", "asin"))
    second = functions.AllocationFunction(pre=("abslog",), reduction="var", transform=("neg",))  # same pre, reduction
    functions.importances(first, stats)
    values, warnings = functions.importances(second, stats)
    assert list(stats.reductions) == [(("abslog",), "var")]
    expected, expected_warnings = functions.importances(second, fresh)
    np.testing.assert_array_equal(values, expected)
    assert warnings == expected_warnings


def test_a_forked_process_computes_importances_too():
    """Blocks are reduced in a thread pool; a forked child (a server's worker, a data loader) has none of its
    parent's threads and must get a pool of its own rather than wait on dead ones."""
    stats = make_stats(8, seed=3)
    functions.importances(functions.DSA_PRESET, stats)  # the parent's pool now exists
    expected = functions.importances(functions.parse("W:(LOG)-(MEDIAN)-(ATAN)"), make_stats(8, seed=3))[0]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child reports through the pipe)
        signal.alarm(20)
        values = functions.importances(functions.parse("W:(LOG)-(MEDIAN)-(ATAN)"), stats)[0]
        os.write(write, values.tobytes())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        got = np.frombuffer(pipe.read(), dtype=np.float64)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    np.testing.assert_array_equal(got, expected)
