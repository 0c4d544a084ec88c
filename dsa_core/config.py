"""Configuration of an evaluation run, shared by the CLI, the web app, storage and sharing.

A plain dataclass with validation and dict round trips; no behaviour beyond checking itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from dsa_core.allocation import BASELINES, describe
from dsa_core.errors import ConfigError
from dsa_core.scores import PATTERNS, parse_pattern
from dsa_core.settings import option, shared, validate_declared
from dsa_core.zeroshot.tasks import parse_tasks

MODES = ("sequential", "fast")


@dataclass
class EvalConfig:
    """What to prune and how to measure it. `allocation` is a baseline name, a DSA function's text
    form or preset name, or "dense" for the unpruned model."""

    model: str | None = shared("model")
    metric: str = shared("metric")
    allocation: str = option("uniform", lambda: f"dense, a baseline ({', '.join(BASELINES)}; options as "
                             "owl:M=5,lambda=0.08), a DSA preset or a function text form")
    sparsity: float = shared("sparsity")
    pattern: str = option("unstructured", "unstructured, or N:M (N of every M consecutive weights pruned)",
                          choices=PATTERNS)
    calib: str = shared("calib")
    nsamples: int = shared("nsamples")
    seqlen: int = shared("seqlen")
    eval: str = option("wikitext2", "perplexity dataset", choices=("wikitext2",))
    eval_windows: int | None = option(None, "cap on evaluation windows (quick runs)", type=int, minimum=1)
    seed: int = shared("seed")
    mode: str = option("sequential", "sequential: faithful block-by-block pruning; fast: re-mask from dense-model "
                       "scores", choices=MODES)
    dense: bool = option(False, "also report the unpruned model's perplexity")
    device: str | None = shared("device")
    dtype: str | None = shared("dtype")
    data_source: str = shared("data_source")
    batch_size: int | None = shared("batch_size")
    # Zero-shot tasks (dsa_core.zeroshot) scored after pruning; none: perplexity only.
    tasks: tuple[str, ...] = option((), "zero-shot tasks scored by lm-eval after pruning, comma-separated: boolq, rte, "
                                    "hellaswag, winogrande, arc_easy, arc_challenge, openbookqa ('paper': these "
                                    "seven), piqa", type=str)
    tasks_limit: int | None = option(None, "examples per task (quick runs)", type=int, minimum=1)
    tasks_data: str | None = option(None, "folder of the tasks' original release files, one folder per task "
                                    "(default: the hub when reachable, else the shipped data folder)", type=str)

    def validate(self) -> EvalConfig:
        validate_declared(self)
        nm = parse_pattern(self.pattern)
        if self.allocation != "dense":
            describe(self.allocation)  # an allocation that cannot be read fails here, before the model loads
        if nm is not None and self.allocation != "dense":
            if abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
                raise ConfigError(
                    f"The {self.pattern} pattern prunes exactly {nm[0] / nm[1]:.0%} of every layer; "
                    f"sparsity {self.sparsity} does not match it."
                )
            if self.allocation != "uniform":
                raise ConfigError(f"The {self.pattern} pattern fixes every layer's ratio; use --allocation uniform.")
        self.tasks = parse_tasks(self.tasks) if self.tasks else ()  # JSON brings a list back
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
