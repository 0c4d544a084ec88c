"""How long a structural-pruning run will take, and whether its training converged: pure functions of what the
run has measured so far (seconds per training step, tokens left to evaluate) and of its loss curve. The runner
reports the estimate before the bulk of the training (after its second step) and after every step; the CLI and the
web app show it. Nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass

# A forward pass costs about a third of a training step per token (forward + backward through the activations).
FORWARD_SHARE = 1 / 3


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class RunEstimate:
    """Seconds left in a run: the training steps left at the measured time per step (capped by the run's time
    limit), then the forward passes of evaluation (perplexity of every model, the baseline's calibration)."""

    step_seconds: float
    steps_left: int
    eval_tokens: int  # tokens still to run forward, over all models
    tokens_per_step: int
    train_seconds_cap: float | None = None  # what the time limit leaves of training

    @property
    def training_seconds(self) -> float:
        seconds = self.step_seconds * self.steps_left
        return seconds if self.train_seconds_cap is None else min(seconds, max(0.0, self.train_seconds_cap))

    @property
    def evaluation_seconds(self) -> float:
        return self.eval_tokens * FORWARD_SHARE * self.step_seconds / self.tokens_per_step

    @property
    def seconds_left(self) -> float:
        return self.training_seconds + self.evaluation_seconds

    def describe(self) -> str:
        return (f"about {_duration(self.seconds_left)} left (training {_duration(self.training_seconds)} at "
                f"{self.step_seconds:.2g} s a step, evaluation {_duration(self.evaluation_seconds)})")

    def to_dict(self) -> dict:
        return {"seconds_left": self.seconds_left, "training_seconds": self.training_seconds,
                "evaluation_seconds": self.evaluation_seconds, "step_seconds": self.step_seconds}


# A perplexity this many times the dense model's means the pruned model has lost the language.
FAR_ABOVE_DENSE = 10.0


def convergence_warnings(curve: list[dict], target: float, ppl: dict[str, float]) -> list[str]:
    """Sentences for the user when training did not converge: the sampled kept ratio never left 1.0, it ended far
    from the target, or the perplexity is far above the dense model's or above the untrained baseline's."""
    out = []
    ratios = [p["ratio"] for p in curve]
    advice = "train longer or with a higher learning rate (--steps, --lr)"
    if ratios and min(ratios) > 0.995:
        out.append(f"Training did not converge: the kept ratio never left 1.0 in {len(ratios)} steps, so the "
                   f"selection is a budget fit of the hypernetwork's initial, nearly random scores; {advice}.")
    elif ratios and abs(ratios[-1] - target) > 0.05:
        out.append(f"Training did not converge: the kept ratio ended at {ratios[-1]:.2f}, not near the target "
                   f"{target:.2f}, so the fit to the budget removed channels the hypernetwork had kept; {advice}.")
    dense, pruned, baseline = ppl.get("dense"), ppl.get("compressed"), ppl.get("baseline")
    if dense and pruned and pruned > FAR_ABOVE_DENSE * dense:
        out.append(f"The pruned model's perplexity ({pruned:.4g}) is {pruned / dense:.0f}× the dense model's "
                   f"({dense:.4g}).")
    if baseline and pruned and pruned > baseline:
        out.append(f"The pruned model's perplexity ({pruned:.4g}) is above the untrained uniform baseline's "
                   f"({baseline:.4g}).")
    return out
