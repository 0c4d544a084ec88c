"""Allocations: every spec hits the target exactly within [0, 0.99], and the baselines match their reference code."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsa_core import allocation as A
from dsa_core import functions
from dsa_core.errors import ConfigError
from dsa_core.stats import OUTLIER_MULTIPLIERS, BlockStats

SPECS = [*A.BASELINES, *functions.PRESETS, "owl:M=7,lambda=0.1", "alpha:eps=0.2", "atp:beta=0.002",
         "W:(ABS,LOG)-(Q99)-(SIN)-(MULT=0.2)", "W:(NORMALIZE)-(KURTOSIS)-(TANH,EXP)-(BAND=0.2)"]


def make_stats(n_blocks: int = 16, sample: int = 2048, seed: int = 0, equal: bool = True) -> BlockStats:
    """Synthetic statistics: LLaMA-like blocks (4 attention + 3 MLP layers), lognormal scores whose spread grows
    with depth, exact outlier ratios of the sample, random α. Unequal blocks get random widths."""
    rng = np.random.default_rng(seed)
    widths = np.full(n_blocks, 64) if equal else rng.integers(16, 128, n_blocks)
    shapes = [[(w, w)] * 4 + [(3 * w, w), (3 * w, w), (w, 3 * w)] for w in widths]
    samples = [rng.lognormal(mean=-4.0, sigma=0.6 + 0.5 * rng.random(), size=sample).astype(np.float32)
               for _ in range(n_blocks)]
    ratios = {m: np.array([np.mean(s > m * s.mean(dtype=np.float64)) for s in samples]) for m in OUTLIER_MULTIPLIERS}
    return BlockStats(params=np.array([sum(o * i for o, i in b) for b in shapes], dtype=np.int64), layer_shapes=shapes,
                      score_samples=samples, outlier_ratios=ratios, alpha_hill=rng.uniform(2.0, 6.0, n_blocks))


def wmean(ratios, stats):
    return float(np.average(ratios, weights=stats.params))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(SPECS), target=st.floats(0.0, 0.99), n=st.integers(12, 32), seed=st.integers(0, 10**6),
       equal=st.booleans())
def test_every_allocation_hits_the_target_within_bounds(spec, target, n, seed, equal):
    stats = make_stats(n, 256, seed, equal)
    try:
        result = A.allocate(stats, spec, target)
    except ConfigError as e:  # ATP refuses a step that leaves [0, 0.99] at extreme targets, as its reference does
        assert spec.startswith("atp") and "too large" in str(e)
        return
    assert result.ratios.shape == (n,)
    assert 0.0 <= result.ratios.min() and result.ratios.max() <= A.MAX_SPARSITY
    assert abs(wmean(result.ratios, stats) - target) < 1e-6


@pytest.mark.parametrize("target", [-0.01, 0.995, 1.0, math.nan, math.inf, "half"])
@pytest.mark.parametrize("spec", ["uniform", "owl", "dsa", "W:(ABS)-(MEAN)-(ATAN)"])
def test_impossible_targets_are_rejected(spec, target):
    with pytest.raises(ConfigError, match="Target sparsity"):
        A.allocate(make_stats(12, 64), spec, target)


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=40), data=st.data(), target=st.floats(0.0, 0.99))
def test_fit_to_target_clips_shifts_together_and_keeps_order(raw, data, target):
    raw = np.array(raw)
    params = np.array(data.draw(st.lists(st.integers(1, 10**9), min_size=raw.size, max_size=raw.size)))
    r = A.fit_to_target(raw, params, target)
    assert r.min() >= 0.0 and r.max() <= 0.99
    assert abs(np.average(r, weights=params) - target) < 1e-9
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(r[order]) >= -1e-12)
    inside = (r > 0) & (r < 0.99)
    if inside.sum() > 1:
        shift = (r - raw)[inside]
        assert shift.max() - shift.min() < 1e-9


def test_fit_to_target_leaves_a_feasible_allocation_alone_and_rejects_bad_bounds():
    r = np.array([0.5, 0.7, 0.9])
    np.testing.assert_array_equal(A.fit_to_target(r, np.ones(3), 0.7), r)
    with pytest.raises(ConfigError):
        A.fit_to_target(r, np.ones(3), 0.7, lo=0.8)
    with pytest.raises(ConfigError):
        A.fit_to_target(r, np.ones(2), 0.7)


def test_clipping_is_reported():
    result = A.allocate(make_stats(16), "owl:lambda=0.3", 0.9)
    assert result.ratios.max() == pytest.approx(0.99)
    assert any("clipped" in w for w in result.warnings)


def owl_reference(d, target, lam):
    """OWL's code (luuyin/OWL lib/prune_all.py, prune_wanda_outlier), transcribed."""
    all_layer_ratio = np.array(d)
    all_layer_ratio = (all_layer_ratio - all_layer_ratio.min()) * (
        1 / (all_layer_ratio.max() - all_layer_ratio.min()) * lam * 2)
    all_layer_ratio = all_layer_ratio - np.mean(all_layer_ratio) + (1 - target)
    return 1 - all_layer_ratio


@pytest.mark.parametrize("m,lam,target", [(5.0, 0.08, 0.7), (3.0, 0.08, 0.5), (7.0, 0.2, 0.6)])
def test_owl_matches_its_reference_on_equal_blocks(m, lam, target):
    stats = make_stats(32, seed=3)
    expected = owl_reference(stats.outlier_ratios[m] * 100, target, lam)  # the reference counts outliers in %
    np.testing.assert_allclose(A.allocate(stats, f"owl:M={m:g},lambda={lam}", target).ratios, expected, atol=1e-12)
    assert np.argmax(A.owl(stats, target, m, lam)) == np.argmin(stats.outlier_ratios[m])


def test_owl_needs_outlier_ratios_at_its_m():
    with pytest.raises(ConfigError, match="M=4"):
        A.allocate(make_stats(12), "owl:M=4", 0.5)


def alpha_reference(metrics, prunables, target, eps):
    """AlphaPruning's ratio computation (scores → s1..s2 → scaler), transcribed."""
    s1, s2 = 1.0 - eps, 1.0 + eps
    ratios = ((metrics - metrics.min()) / (metrics.max() - metrics.min())) * (s2 - s1) + s1
    scaler = np.sum(prunables) * target / np.sum(prunables * ratios)
    return ratios * scaler


@pytest.mark.parametrize("equal", [True, False])
def test_alpha_matches_its_reference(equal):
    stats = make_stats(24, seed=4, equal=equal)
    expected = alpha_reference(stats.alpha_hill, stats.params, 0.6, 0.2)
    assert expected.max() < 0.99  # so that no clipping hides a difference
    np.testing.assert_allclose(A.alpha(stats, 0.6, eps=0.2), expected, atol=1e-12)


def test_alpha_needs_alpha_hill():
    stats = make_stats(12)
    stats.alpha_hill = None
    with pytest.raises(ConfigError, match="PL_Alpha_Hill"):
        A.allocate(stats, "alpha", 0.5)


def test_mappings_give_less_sparsity_to_more_important_blocks():
    params = np.ones(5)
    importance = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    band = A.band_mapping(importance, params, 0.6, 0.1)
    assert list(np.argsort(band)) == list(np.argsort(-importance))
    assert band.max() - band.min() == pytest.approx(0.2) and band.mean() == pytest.approx(0.6)
    mult = A.multiplicative_mapping(importance, params, 0.6, 0.3)  # α-like: larger ⇒ more sparsity
    assert list(np.argsort(mult)) == list(np.argsort(importance)) and mult.mean() == pytest.approx(0.6)
    np.testing.assert_array_equal(A.band_mapping(np.ones(5), params, 0.6, 0.1), np.full(5, 0.6))
    sizes = np.array([1.0, 10.0, 100.0, 1000.0, 10000.0])  # unequal blocks: the weighted mean is the target
    assert np.average(A.band_mapping(importance, sizes, 0.6, 0.1), weights=sizes) == pytest.approx(0.6, abs=1e-12)
    assert np.average(A.multiplicative_mapping(importance, sizes, 0.6, 0.3), weights=sizes) == pytest.approx(0.6)


def test_atp_is_an_increasing_progression_centred_on_the_target():
    stats = make_stats(20, equal=False, seed=5)
    r = A.atp(stats, 0.5, beta=0.01)
    np.testing.assert_allclose(np.diff(r), 0.01, atol=1e-12)
    assert wmean(r, stats) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ConfigError, match="β ≤"):
        A.allocate(stats, "atp:beta=0.1", 0.5)


def test_er_is_uniform_on_identical_blocks_and_er_plus_spares_the_last_block():
    stats = make_stats(16)
    np.testing.assert_allclose(A.er(stats, 0.7), 0.7, atol=1e-12)
    r = A.er_plus(stats, 0.7)
    assert r[-1] < 0.7 < r[0] and np.ptp(r[:-1]) < 1e-12


def test_er_densities_follow_erdos_renyi():
    # A 10×10 and a 10×1000 layer: densities ε·(n_in + n_out)/(n_in·n_out) = 0.2ε and 0.101ε keep half the weights.
    stats = BlockStats(params=np.array([100, 10_000]), layer_shapes=[[(10, 10)], [(10, 1000)]],
                       score_samples=[np.ones(4, dtype=np.float32)] * 2)
    eps = 0.5 * 10_100 / (0.2 * 100 + 0.101 * 10_000)
    np.testing.assert_allclose(A.er(stats, 0.5), [1 - 0.2 * eps, 1 - 0.101 * eps], atol=1e-12)
    # At 10% sparsity the small layer would need a density above 1: it becomes dense and the rest is solved again.
    np.testing.assert_allclose(A.er(stats, 0.1), [0.0, 0.101], atol=1e-12)


def test_er_plus_degrades_with_a_warning_when_the_last_layer_cannot_stay_dense():
    stats = BlockStats(params=np.array([200, 1000]), layer_shapes=[[(10, 20)], [(10, 100)]],
                       score_samples=[np.ones(4, dtype=np.float32)] * 2)
    result = A.allocate(stats, "er_plus", 0.99)
    assert any("cannot keep the last layer dense" in w for w in result.warnings)
    assert wmean(result.ratios, stats) == pytest.approx(0.99)


def test_global_prunes_below_one_threshold():
    stats = make_stats(12, sample=1000, seed=6, equal=False)
    r = A.global_threshold(stats, 0.6)
    # Brute force: sort all samples with their weights and take the 60% lightest weight mass.
    values = np.concatenate(stats.score_samples)
    w = np.concatenate([np.full(s.size, p / s.size) for s, p in zip(stats.score_samples, stats.params)])
    order = np.argsort(values)
    tau = values[order][np.searchsorted(np.cumsum(w[order]), 0.6 * w.sum())]
    expected = np.array([np.mean(s < tau) for s in stats.score_samples])
    np.testing.assert_allclose(r, expected, atol=2 / 1000)  # one sample per block of tie/rounding slack
    low = int(np.argmin([np.median(s) for s in stats.score_samples]))
    assert r[low] == r.max()


@pytest.mark.parametrize("spec", ["owl:M=7,lambda=0.1", "OWL: m = 7, λ = 0.1"])
def test_baseline_parameters_are_read_from_the_spec(spec):
    stats = make_stats(16)
    result = A.allocate(stats, spec, 0.6)
    assert result.name == "owl:M=7,lambda=0.1"
    np.testing.assert_array_equal(result.ratios, A.owl(stats, 0.6, m=7, lam=0.1))


@pytest.mark.parametrize("spec,message", [("magic", "Unknown allocation"), ("owl:q=3", "takes M, lambda"),
                                          ("uniform:beta=1", "no parameters"), ("alpha:eps=big", "not a number"),
                                          ("alpha:eps=nan", "finite"), ("owl:lambda=0.7", "λ must lie"),
                                          ("W:(ABS)-(VAR)", "Cannot read"), (3.0, "a name")])
def test_bad_specs_are_rejected_with_a_clear_message(spec, message):
    with pytest.raises(ConfigError, match=message):
        A.allocate(make_stats(12), spec, 0.5)


def test_all_equal_importances_fall_back_to_uniform_with_a_warning():
    stats = make_stats(12)
    stats.score_samples = [stats.score_samples[0]] * 12
    result = A.allocate(stats, "W:(ABSLOG)-(VAR)-(ATAN)", 0.5)
    np.testing.assert_allclose(result.ratios, 0.5)
    assert any("same value" in w and "uniform" in w for w in result.warnings)


def test_describe_names_every_spec_and_its_parameters():
    for name in A.BASELINES:
        assert A.BASELINES[name].doc in A.describe(name)
    assert "M=7" in A.describe("owl:M=7")
    assert r"\arcsin(\arctan(\mathrm{var}(\log|S|)))" in A.describe("dsa")
    assert "multiplicative ε=0.2" in A.describe("W:(ABS)-(MEAN)-(ATAN)-(MULT=0.2)")
    with pytest.raises(ConfigError):
        A.describe("nonsense")


def test_allocation_is_pure():
    stats = make_stats(16)
    before = [s.copy() for s in stats.score_samples]
    first = [A.allocate(stats, spec, 0.6).ratios for spec in SPECS]
    assert all(np.array_equal(s, b) for s, b in zip(stats.score_samples, before))
    assert all(np.array_equal(a, A.allocate(stats, spec, 0.6).ratios) for a, spec in zip(first, SPECS))


def test_single_block_models_get_the_target():
    stats = make_stats(1)
    for spec in SPECS:
        np.testing.assert_allclose(A.allocate(stats, spec, 0.4).ratios, [0.4])


def _reverse_atp(stats: BlockStats, target: float, beta: float) -> tuple[np.ndarray, list[str]]:
    """A toy baseline for the registry tests: sparsity falls with depth."""
    return target - beta * (np.arange(stats.num_blocks) - (stats.num_blocks - 1) / 2), []


TOY = A.Baseline("reverse_atp", "Sparsity falls with depth (a toy).", _reverse_atp, {"beta": 0.005},
                 needs=("alpha_hill",))


def test_every_baseline_declares_existing_statistics_and_a_bad_declaration_is_refused():
    for baseline in A.BASELINES.values():
        assert all(hasattr(make_stats(2), need) for need in baseline.needs)
    assert A.required_stats("alpha:eps=0.2") == {"alpha_hill"} and A.required_stats("owl") == {"outlier_ratios"}
    assert A.required_stats("uniform") == set() and "score_samples" in A.required_stats("dsa")
    with pytest.raises(ValueError, match="hessians"):
        A.Baseline("bad", "Reads what no statistics hold.", _reverse_atp, needs=("hessians",))


def test_a_registered_baseline_is_allocated_described_and_offered(monkeypatch, capsys):
    """Adding a baseline is one entry: allocate, its parameters, describe, the error's choices, what a session must
    compute for it and the CLI's help all read the registry."""
    from cli.main import build_parser

    monkeypatch.setitem(A.BASELINES, TOY.name, TOY)
    stats = make_stats(12)
    result = A.allocate(stats, "reverse-atp:beta=0.01", 0.5)
    assert result.name == "reverse_atp:beta=0.01" and wmean(result.ratios, stats) == pytest.approx(0.5, abs=1e-12)
    assert np.all(np.diff(result.ratios) < 0)
    assert "falls with depth" in A.describe("reverse_atp")
    assert A.required_stats("reverse_atp") == {"alpha_hill"}
    with pytest.raises(ConfigError, match="reverse_atp"):
        A.allocate(stats, "nonsense", 0.5)
    with pytest.raises(ConfigError, match="takes beta"):
        A.allocate(stats, "reverse_atp:eps=1", 0.5)
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--help"])
    assert "reverse_atp" in capsys.readouterr().out
