"""Configuration of an evaluation run, shared by the CLI, the web app, storage and sharing.

A plain dataclass with validation and dict round trips; no behaviour beyond checking itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from dsa_core.allocation import MAX_SPARSITY, describe
from dsa_core.data import SOURCES, check_text_source
from dsa_core.errors import ConfigError
from dsa_core.metrics import check_metric
from dsa_core.scores import parse_pattern
from dsa_core.zeroshot.tasks import parse_tasks

MODES = ("sequential", "fast")


@dataclass
class EvalConfig:
    """What to prune and how to measure it. `allocation` is a baseline name, a DSA function's text
    form or preset name, or "dense" for the unpruned model."""

    model: str | None = None
    metric: str = "wanda"
    allocation: str = "uniform"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    calib: str = "wikitext2"
    nsamples: int = 128
    seqlen: int = 2048
    eval: str = "wikitext2"
    eval_windows: int | None = None
    seed: int = 0
    mode: str = "sequential"
    dense: bool = False
    device: str | None = None
    dtype: str | None = None
    data_source: str = "auto"
    batch_size: int | None = None
    tasks: tuple[str, ...] = ()  # zero-shot tasks (dsa_core.zeroshot), scored after pruning; none: perplexity only
    tasks_limit: int | None = None
    tasks_data: str | None = None

    def validate(self) -> EvalConfig:
        check_metric(self.metric)
        nm = parse_pattern(self.pattern)
        if self.allocation != "dense":
            describe(self.allocation)  # an allocation that cannot be read fails here, before the model loads
        if not 0.0 <= self.sparsity <= MAX_SPARSITY:  # the rule of every allocation, uniform's too
            raise ConfigError(f"Sparsity {self.sparsity} is outside [0, {MAX_SPARSITY}]; give a fraction such as 0.5.")
        if nm is not None and self.allocation != "dense":
            if abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
                raise ConfigError(
                    f"The {self.pattern} pattern prunes exactly {nm[0] / nm[1]:.0%} of every layer; "
                    f"sparsity {self.sparsity} does not match it."
                )
            if self.allocation != "uniform":
                raise ConfigError(f"The {self.pattern} pattern fixes every layer's ratio; use --allocation uniform.")
        if self.mode not in MODES:
            raise ConfigError(f"Unknown mode '{self.mode}'; choose one of {', '.join(MODES)}.")
        if self.data_source not in SOURCES:
            raise ConfigError(f"Unknown data source '{self.data_source}'; choose one of {', '.join(SOURCES)}.")
        if self.nsamples < 1 or self.seqlen < 16:
            raise ConfigError("Calibration needs --nsamples ≥ 1 and --seqlen ≥ 16.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1; got {self.batch_size}.")
        if self.eval_windows is not None and self.eval_windows < 1:
            raise ConfigError("--eval-windows must be at least 1.")
        check_text_source(self.calib)
        self.tasks = parse_tasks(self.tasks) if self.tasks else ()  # JSON brings a list back
        if self.tasks_limit is not None and self.tasks_limit < 1:
            raise ConfigError("--tasks-limit must be at least 1.")
        if self.eval != "wikitext2":
            raise ConfigError(f"Unknown evaluation dataset '{self.eval}'; perplexity is measured on wikitext2.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvalConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"Unknown configuration keys: {', '.join(sorted(unknown))}.")
        return cls(**d).validate()
