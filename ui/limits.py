"""What an app reachable from other machines lets a visitor ask for: the models of an allow-list (no arbitrary hub
ids, no local paths, no `random:` giants), calibration and evaluation sizes, and search and training budgets that
one GPU serves in minutes. Used on this machine alone, the app has no limits. One rule set for every tab."""

from __future__ import annotations

from dataclasses import dataclass

from dsa_core.errors import ConfigError
from dsa_core.models import DEFAULT_MODEL

# (field of a configuration, limit attribute, what it counts): EvalConfig, SearchConfig and StructuralConfig
# name the same things alike; a field a configuration lacks is not checked.
_CAPPED = (("nsamples", "nsamples", "calibration samples"), ("seqlen", "seqlen", "tokens per window"),
           ("eval_seqlen", "seqlen", "tokens per evaluation window"),
           ("eval_windows", "eval_windows", "evaluation windows"), ("final_eval_windows", "eval_windows",
                                                                      "evaluation windows"),
           ("budget_candidates", "search_candidates", "search candidates"),
           ("budget_seconds", "search_seconds", "seconds of search"), ("steps", "structural_steps", "training steps"))


@dataclass(frozen=True)
class Limits:
    models: tuple[str, ...] = (DEFAULT_MODEL, "gemma3-270m", "random:tiny")
    nsamples: int = 128
    seqlen: int = 2048
    eval_windows: int = 200  # WikiText-2 test holds ~147 windows of 2048 tokens for these models: all of it fits
    search_candidates: int = 5000
    search_seconds: float = 900.0
    structural_steps: int = 2000

    def check(self, cfg) -> None:
        """ConfigError, in one sentence, for the first thing `cfg` asks beyond the limits."""
        model = getattr(cfg, "model", None) or DEFAULT_MODEL
        if model not in self.models:
            raise ConfigError(f"This app is reachable from other machines and serves only {', '.join(self.models)}; "
                              f"'{model}' is not one of them.")
        for name, limit, what in _CAPPED:
            value, cap = getattr(cfg, name, None), getattr(self, limit)
            if value is not None and value > cap:
                raise ConfigError(f"This app is reachable from other machines: at most {cap:g} {what}, not {value:g}.")

    def text(self) -> str:
        """The limits in one sentence, for the page."""
        return (f"This app is reachable from other machines, so it serves {', '.join(self.models)} with at most "
                f"{self.nsamples} calibration samples of {self.seqlen} tokens, {self.eval_windows} evaluation windows, "
                f"searches of {self.search_candidates} candidates or {self.search_seconds:g} s, and "
                f"{self.structural_steps} training steps; local paths are disabled.")
