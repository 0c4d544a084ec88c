"""The time a structural run will take (before the bulk of its training and while it trains), CPU-sized defaults,
and the warnings of a run whose training did not converge."""

import pytest

from cli.main import build_parser
from cli.structural import config_from_args
from dsa_core.reporter import Reporter
from dsa_core.structural.estimate import RunEstimate, convergence_warnings
from dsa_core.structural.runner import run_structural
from dsa_core.structural.training import CPU_DEFAULTS, StructuralConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_estimate_adds_steps_left_and_evaluation_at_the_measured_rate():
    e = RunEstimate(step_seconds=2.0, steps_left=99, eval_tokens=3 * 16 * 512, tokens_per_step=256)
    assert e.training_seconds == 198.0
    assert e.evaluation_seconds == pytest.approx(3 * 16 * 512 / 3 * 2.0 / 256)  # forward ≈ a third of a step
    assert e.seconds_left == pytest.approx(198.0 + 64.0)
    assert e.describe().startswith("about 4 min left (training 3 min")
    capped = RunEstimate(2.0, 99, 0, 256, train_seconds_cap=30.0)
    assert capped.training_seconds == 30.0 and RunEstimate(2.0, 99, 0, 256, -5.0).training_seconds == 0.0


def test_a_flat_ratio_is_a_warning():
    flat = [{"ratio": 1.0}] * 20
    (warning,) = convergence_warnings(flat, 0.7, {"dense": 20.0, "compressed": 25.0})
    assert "never left 1.0 in 20 steps" in warning and "--lr" in warning


def test_a_ratio_far_from_the_target_and_a_perplexity_far_above_are_warnings():
    curve = [{"ratio": r} for r in (1.0, 0.95, 0.9)]
    warnings = convergence_warnings(curve, 0.7, {"dense": 20.0, "compressed": 5000.0, "baseline": 900.0})
    assert len(warnings) == 3
    assert "ended at 0.90" in warnings[0] and "250×" in warnings[1] and "untrained uniform baseline" in warnings[2]


def test_a_converged_run_has_no_warning():
    curve = [{"ratio": r} for r in (1.0, 0.85, 0.72, 0.70)]
    assert convergence_warnings(curve, 0.7, {"dense": 20.0, "compressed": 35.0, "baseline": 1900.0}) == []


def test_cpu_runs_get_cpu_sized_defaults_and_explicit_options_win():
    cpu = StructuralConfig.defaults_for("cpu")
    assert all(getattr(cpu, k) == v for k, v in CPU_DEFAULTS.items()) and cpu.device == "cpu"
    parser = build_parser()
    args = parser.parse_args(["structural", "--device", "cpu", "--steps", "7", "--eval-windows", "0"])
    cfg = config_from_args(args)
    assert cfg.steps == 7 and cfg.eval_windows is None and cfg.seqlen == CPU_DEFAULTS["seqlen"]
    assert cfg.lr == CPU_DEFAULTS["lr"] and cfg.lam == StructuralConfig().lam


def test_a_run_reports_its_estimate_and_its_warnings(tiny):
    cfg = StructuralConfig(model="random:tiny", steps=3, batch_size=1, seqlen=32, eval_seqlen=64, eval_windows=2,
                           baseline_samples=2, data_source="local", device="cpu", target_ratio=0.6)
    heard: list[tuple[float, str]] = []
    points: list[dict] = []

    class Heard(Reporter):
        def on_time_left(self, seconds, how):
            heard.append((seconds, how))

        def on_event(self, point):
            points.append(point)

    reporter = Heard()
    run = run_structural(cfg, reporter, lm=tiny)
    result = run.result
    assert run.to_dict() == {"kind": "structural", **result}
    assert len(heard) == 2  # after the second and the third step: the first one warms up
    assert all(seconds > 0 and "s a step, evaluation" in how for seconds, how in heard)
    assert result["estimate"]["seconds_left"] == pytest.approx(heard[0][0])
    assert [p["step"] for p in points] == [1, 2, 3] and points == result["curve"]
    assert reporter.eta() is None or reporter.eta() >= 0
    # Three steps at lr 1e-3 cannot move the hypernetwork: the run says so.
    assert any("never left 1.0" in w for w in result["warnings"])
