"""What a search gives back: its candidates, the events it reports while it runs (the web app streams them), and
its typed result with a stable serialised form (storage, sharing, the command line's --json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from dsa_core.errors import ConfigError


@dataclass
class Candidate:
    text: str
    fitness: float
    ratios: list[float]
    warnings: list[str]
    rerank: float | None = None  # the re-ranking's measure (--rerank-tokens or --rerank-final), when there was one


@dataclass
class SearchEvent:
    """What a running search reports after each candidate (the web app streams these). `stage` is the last
    fidelity it was measured at (of `stages`); `fitness` is its value there, comparable only within a stage."""

    candidate: int
    generation: int
    text: str
    fitness: float
    best_text: str
    best_fitness: float
    best_ratios: list[float]
    elapsed: float
    cached: bool
    stage: int = 0
    stages: int = 1
    phase: str = "function"
    start: str = ""  # the allocation phase's start: a function's text or a baseline such as "atp:beta=0.01"


@dataclass
class SearchResult:
    study: str
    best: Candidate
    evaluated: int
    trials: int
    elapsed: float
    stopped: bool
    generations: list[dict] = field(default_factory=list)
    top: list[Candidate] = field(default_factory=list)
    space: str = "function"
    throughput: list[dict] = field(default_factory=list)  # per fidelity stage: tokens, evaluated, per_second
    phases: list[dict] = field(default_factory=list)  # a hybrid's two searches: space, evaluated, seconds, best
    start_ratios: list[float] = field(default_factory=list)  # hybrid: the best function's allocation, refined since
    stop_reason: str = ""  # why a search stopped before its budget when no one asked it to (the GPU's memory ran out)
    converged: bool = False  # it ended before its budget, its patience spent (run_search's `patience`)
    kind: ClassVar[str] = "search"

    def to_dict(self) -> dict:
        """The stable serialised form: every field (candidates as dicts) and the kind."""
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> SearchResult:
        if d.get("kind", cls.kind) != cls.kind:
            raise ConfigError(f"Not a search result: its kind is {d.get('kind')!r}.")
        known = {f.name for f in fields(cls)}
        body = {k: v for k, v in d.items() if k in known}
        return cls(**{**body, "best": Candidate(**d["best"]), "top": [Candidate(**c) for c in d.get("top", [])]})
