"""The operation registry: every op the DSA search space needs is there, computes what its name says, and
composes into readable LaTeX."""

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dsa_core import operations as ops
from dsa_core.errors import ConfigError

EXPECTED = {
    ops.PRE: {"no_op", "abs", "log", "abslog", "pow", "exp", "normalize", "sigmoid", "tanh", "mms"},
    ops.REDUCTION: {"mean", "var", "std", "l1_norm", "frobenius_norm", "geometric_mean", "entropy", "outlier_ratio",
                    "median", "skewness", "kurtosis", "q90", "q99"},
    ops.TRANSFORM: {"no_op", "sin", "cos", "tan", "asin", "acos", "atan", "exp", "log", "abs", "sigmoid", "tanh",
                    "softplus", "neg"},
}


@pytest.fixture
def scores():
    return np.random.default_rng(0).lognormal(sigma=1.0, size=20_000)


def test_registry_holds_exactly_the_expected_ops():
    assert {stage: set(REG) for stage, REG in ops.REGISTRY.items()} == EXPECTED
    for stage, table in ops.REGISTRY.items():
        for name, op in table.items():
            assert op.name == name and op.stage == stage and op.doc
            assert "S" in ops.compose(op.formula, "S"), name  # the formula has a place for its argument


def test_names_follow_registry_order():
    for stage, table in ops.REGISTRY.items():
        assert ops.names(stage) == list(table)


def test_get_is_case_insensitive_and_rejects_unknown_names():
    assert ops.get(ops.PRE, "ABSLOG").name == "abslog"
    with pytest.raises(ConfigError, match="choose one of"):
        ops.get(ops.REDUCTION, "slogdet")
    with pytest.raises(ConfigError):
        ops.get("post", "sin")


@pytest.mark.parametrize("name", sorted(EXPECTED[ops.PRE]))
def test_pre_ops_keep_shape_and_leave_their_input_alone(name, scores):
    x = scores - 1.0  # some negatives and a zero, to exercise the domain handling
    x[0] = 0.0
    before = x.copy()
    y = ops.get(ops.PRE, name).fn(x)
    assert y.shape == x.shape and y.dtype == np.float64
    np.testing.assert_array_equal(x, before)


def test_log_ops_follow_the_dsa_reference_on_their_domain_edges():
    x = np.array([-2.0, 0.0, np.e])
    np.testing.assert_allclose(ops.get(ops.PRE, "log").fn(x), np.log([1 + 1e-6, 1 + 1e-6, np.e + 1e-6]))
    np.testing.assert_allclose(ops.get(ops.PRE, "abslog").fn(x), [np.log(2.0), 0.0, 1.0])


def test_normalize_and_mms(scores):
    z = ops.get(ops.PRE, "normalize").fn(scores)
    assert abs(z.mean()) < 1e-12 and abs(z.std(ddof=1) - 1) < 1e-12
    np.testing.assert_array_equal(ops.get(ops.PRE, "normalize").fn(np.ones(5)), np.zeros(5))
    m = ops.get(ops.PRE, "mms").fn(scores)
    assert m.min() == 0 and 1 - 1e-6 < m.max() <= 1


def test_reductions_match_their_definitions(scores):
    def red(name, x=scores, numel=None):
        return ops.get(ops.REDUCTION, name).fn(x, x.size if numel is None else numel)

    assert red("mean") == pytest.approx(scores.mean())
    assert red("var") == pytest.approx(scores.var(ddof=1))
    assert red("std") == pytest.approx(scores.std(ddof=1))
    assert red("l1_norm") == pytest.approx(np.abs(scores).mean())
    assert red("frobenius_norm") == pytest.approx(np.linalg.norm(scores))
    assert red("geometric_mean") == pytest.approx(scipy.stats.gmean(scores))
    assert red("median") == pytest.approx(np.median(scores))
    assert red("skewness") == pytest.approx(scipy.stats.skew(scores))
    assert red("kurtosis") == pytest.approx(scipy.stats.kurtosis(scores))
    assert red("q90") == pytest.approx(np.quantile(scores, 0.9))
    assert red("q99") == pytest.approx(np.quantile(scores, 0.99))
    assert red("outlier_ratio") == pytest.approx(np.mean(scores > 5 * scores.mean()))
    p = scores / scores.sum()
    assert red("entropy") == pytest.approx(-(p * np.log(p)).sum())


def test_extensive_reductions_estimate_the_whole_block_from_its_sample():
    block = np.random.default_rng(1).lognormal(sigma=0.5, size=400_000)
    sample = block[np.random.default_rng(2).choice(block.size, 20_000, replace=False)]
    for name in ("frobenius_norm", "entropy"):
        full = ops.get(ops.REDUCTION, name).fn(block, block.size)
        estimate = ops.get(ops.REDUCTION, name).fn(sample, block.size)
        assert estimate == pytest.approx(full, rel=0.02), name


def test_transforms_are_vectorised_and_domains_are_declared():
    v = np.linspace(0.1, 0.9, 7)
    for name, op in ops.REGISTRY[ops.TRANSFORM].items():
        out = op.fn(v)
        assert out.shape == v.shape and np.isfinite(out).all(), name
    assert ops.get(ops.TRANSFORM, "asin").domain == (-1.0, 1.0) == ops.get(ops.TRANSFORM, "acos").domain
    assert ops.get(ops.TRANSFORM, "softplus").fn(np.array([1000.0]))[0] == pytest.approx(1000.0)
    np.testing.assert_array_equal(ops.get(ops.TRANSFORM, "neg").fn(v), -v)


def test_compose_builds_the_published_formula_without_breaking_latex_commands():
    expr = "S"
    for stage, name in ((ops.PRE, "abslog"), (ops.REDUCTION, "var"), (ops.TRANSFORM, "atan"), (ops.TRANSFORM, "asin")):
        expr = ops.compose(ops.get(stage, name).formula, expr)
    assert expr == r"\arcsin(\arctan(\mathrm{var}(\log|S|)))"
    assert ops.compose("x^{2}", r"\log|S|") == r"\left(\log|S|\right)^{2}"
    assert ops.compose(r"\frac{x-\min x}{\max x-\min x}", "S") == r"\frac{S-\min S}{\max S-\min S}"
    assert ops.compose("e^{x}", r"\mathrm{var}(S)") == r"e^{\mathrm{var}(S)}"


# Few distinct values, so that ties are common; infinities and NaN, which block scores meet after exp or log.
SAMPLES = arrays(np.float64, st.integers(1, 300),
                 elements=st.sampled_from([-np.inf, -2.5, -1.0, 0.0, 0.0, 1e-300, 0.5, 1.0, 3.0, 7.25, np.inf, np.nan])
                 | st.floats(-1e6, 1e6, allow_nan=False))


def same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


@given(SAMPLES, st.sampled_from([0.0, 0.25, 0.5, 0.9, 0.99, 1.0]))
def test_quantile_is_numpys_bit_for_bit(x, q):
    with np.errstate(invalid="ignore"):  # inf − inf, in both
        assert same(ops._quantile(x, q), float(np.quantile(x, q)))


@given(SAMPLES)
def test_median_is_numpys_bit_for_bit(x):
    with np.errstate(invalid="ignore"):
        assert same(ops.get(ops.REDUCTION, "median").fn(x, x.size), float(np.median(x)))
