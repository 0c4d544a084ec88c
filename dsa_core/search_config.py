"""What a search is: its configuration (the pruning set-up it optimises for, its space, sampler, fitness and budget),
declared once (dsa_core.settings) so that the command line, the web app's form, storage and sharing read the same
fields, and checked in `validate` before any model loads. The loop that runs it is dsa_core.search."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from dsa_core.allocation import describe
from dsa_core.errors import ConfigError
from dsa_core.fitness import (
    FITNESSES,
    LAST_STAGES,
    ZEROSHOT_ONE_STAGE,
    check_kind,
    check_rescore,
    check_sequential_windows,
    parse_fidelity,
    stage_windows,
)
from dsa_core.settings import option, shared, validate_declared

SAMPLERS = ("ga", "nsga2", "random")
SPACES = {"function": "DSA allocation functions (GA)",
          "allocation": "per-block or per-layer sparsity levels, searched directly (EvoPress level switches)",
          "hybrid": "functions first, then the best function's allocation refined directly"}
GRANULARITIES = ("block", "projection")
REFINERS = {"switch": "level switches of the best allocation so far (EvoPress), each through the staged selection",
            "cma": "CMA-ES, whose mean follows the fitness's trend rather than its best point, every candidate "
                   "measured at the last stage"}


@dataclass
class SearchConfig:
    """A search: the pruning set-up it optimises for, its space, sampler and budget, and its fitness proxy."""

    model: str | None = shared("model")
    metric: str = shared("metric")
    sparsity: float = shared("sparsity", default=0.7)
    calib: str = shared("calib")
    nsamples: int = shared("nsamples")
    seqlen: int = shared("seqlen")
    seed: int = shared("seed")
    data_source: str = shared("data_source")
    device: str | None = shared("device")
    dtype: str | None = shared("dtype")
    batch_size: int | None = shared("batch_size")
    space: str = option("function", "what to search: " + "; ".join(f"{k}: {v}" for k, v in SPACES.items()),
                         choices=tuple(SPACES))
    granularity: str = option("block", "allocation and hybrid spaces: one level per block, or per linear layer "
                               "(q, k, v, o, gate, up, down)", choices=GRANULARITIES)
    # Its choices are what a form offers; the command line also takes zeroshot:TASKS (`open`: validate() checks).
    fitness: str = option("ppl", "; ".join(f"{k}: {v}" for k, v in FITNESSES.items()), choices=("ppl", "kl"),
                           open=True)
    fidelity: str = option("", "token counts of the staged selection, few first, e.g. 2k,16k,64k: every candidate "
                            "is measured on the first, the best 1/--promote on the next (default: one stage of "
                            "--fitness-windows windows)")
    last_stage: str = option("masked", "how the last fidelity stage measures a candidate: "
                              + "; ".join(f"{k}: {v}" for k, v in LAST_STAGES.items()), choices=tuple(LAST_STAGES))
    sequential_windows: int = option(0, "a sequential last stage calibrates on only the first this many "
                                      "calibration windows, whole batches (0: all --nsamples), so more candidates "
                                      "reach it; the result is still pruned with all")
    rescore: bool = option(False, "with --last-stage sequential (Wanda or SparseGPT): the re-masked stages score "
                           "each block on the inputs it was pruned on by the best candidate measured sequentially so "
                           "far, not on the dense model's, so that they rank its neighbours more as the last stage "
                           "does")
    promote: int = option(4, "staged selection: 1 in this many candidates goes on to the next fidelity")
    level_step: float = option(0.01, "allocation space: a level is this fraction of the smallest unit's weights")
    refiner: str = option("switch", "allocation and hybrid spaces: how allocations are drawn: "
                          + "; ".join(f"{k}: {v}" for k, v in REFINERS.items()), choices=tuple(REFINERS))
    cma_sigma: float = option(4.0, "--refiner cma: the first standard deviation of each unit's move from the start, "
                              "in its level steps; moves range over three times this either way")
    parents: int = option(1, "allocation space: mutate one of the best this many allocations (EvoPress: 1)")
    start: str = option("uniform", "allocation space: the allocation it starts from (uniform, owl, a function's "
                         "text, ...)")
    hybrid_split: float = option(0.5, "hybrid: the share of the budget spent on functions before refining")
    refine_patience: int = option(0, "hybrid: once this many candidates in a row measured at the last stage are no "
                                  "better than the refinement's best, it starts again from the best allocation "
                                  "measured that lies a few levels away from every one refined so far (0: refine one "
                                  "start until the budget ends)")
    rerank_tokens: int = option(0, "re-rank the top-k by validation perplexity on this many tokens (0: rank by "
                                 "the fitness)")
    rerank_final: bool = option(False, "re-rank the top-k by the fitness's last stage after pruning each as the "
                                "result is pruned (sequentially, on every calibration window): the measure nearest "
                                "what the result will be, for k sequential prunes after the budget")
    sampler: str = option("ga", "how functions are drawn: the GA, NSGA-II or at random", choices=SAMPLERS)
    population: int = option(24, "GA: how many of the best functions breed")
    mutation: float | None = option(None, "GA: per-gene mutation probability (default: 1 / number of genes)",
                                    type=float)
    initial: int | None = option(None, "GA: random functions before evolving (default: one population)", type=int)
    preselect: int = option(16, "GA: children bred per trial, the most promising evaluated (1: no pre-selection)")
    # The command line has no default budget (it asks for one); a form or a script starts from 200 candidates.
    budget_candidates: int | None = option(200, "stop after this many candidates", type=int)
    budget_seconds: float | None = option(None, "stop after this long", type=float)
    fitness_windows: int = option(8, "WikiText-2 validation windows of the proxy")
    zeroshot_rows: int = option(200, "--fitness zeroshot:TASKS: rows per task, a fixed seeded subset held out of "
                                "what final tables report (evaluate them with exclude=this)")
    lam_range: tuple[float, float] = (0.02, 0.3)
    top_k: int = option(3, "candidates re-evaluated faithfully at the end")
    final_eval_windows: int | None = option(None, "cap on test windows (quick runs)", type=int)
    study: str | None = option(None, "name; an existing study of that name is resumed", type=str)

    def validate(self) -> SearchConfig:
        validate_declared(self)
        if self.sparsity == 0:
            raise ConfigError("A search at sparsity 0 has nothing to allocate; give a target above 0.")
        if check_kind(self.fitness) is not None:
            if self.fidelity:
                raise ConfigError(ZEROSHOT_ONE_STAGE)
            if self.zeroshot_rows < 1:
                raise ConfigError("The zero-shot fitness needs at least one row per task (--zeroshot-rows).")
        if self.budget_candidates is None and self.budget_seconds is None:
            raise ConfigError("A search needs a budget: --budget-candidates, --budget-seconds, or both.")
        if (self.budget_candidates is not None and self.budget_candidates < 1) or (
            self.budget_seconds is not None and self.budget_seconds <= 0
        ):
            raise ConfigError("Search budgets must be positive.")
        if self.mutation is not None and not 0 < self.mutation <= 1:
            raise ConfigError(f"Mutation probability {self.mutation} must lie in (0, 1].")
        if self.preselect < 1:
            raise ConfigError("The GA breeds at least one child per trial (preselect ≥ 1).")
        if self.initial is not None and self.initial < 2:
            raise ConfigError("The GA needs at least 2 random functions to start from.")
        if self.population < 2 or self.fitness_windows < 1 or self.top_k < 1:
            raise ConfigError("Population must be ≥ 2, fitness windows ≥ 1 and top-k ≥ 1.")
        lo, hi = self.lam_range
        if not 0 < lo <= hi < 0.5:
            raise ConfigError(f"λ range {self.lam_range} must lie within (0, 0.5).")
        windows = self.stage_windows()
        if any(b <= a for a, b in zip(windows, windows[1:])):
            raise ConfigError(f"Fidelities {self.fidelity} round to {windows} windows of {self.seqlen} tokens: each "
                              "stage must measure more windows than the one before.")
        check_sequential_windows(self.sequential_windows, self.nsamples)
        if self.rescore:
            check_rescore(self.metric, self.last_stage)
        if self.promote < 2:
            raise ConfigError("--promote must be at least 2: one in that many candidates goes on to more tokens.")
        if not 0 < self.level_step <= 0.1:
            raise ConfigError(f"The level step {self.level_step} must lie in (0, 0.1].")
        if self.parents < 1:
            raise ConfigError("The allocation search needs at least one parent.")
        if not 0 < self.hybrid_split < 1:
            raise ConfigError(f"The hybrid split {self.hybrid_split} must lie strictly between 0 and 1.")
        if self.refine_patience < 0:
            raise ConfigError("--refine-patience must be 0 (off) or a number of candidates.")
        if self.refine_patience and self.space != "hybrid":
            raise ConfigError("--refine-patience restarts a hybrid search's refinement; give it with --space hybrid.")
        if self.rerank_tokens < 0:
            raise ConfigError("--rerank-tokens must be 0 (off) or a number of tokens.")
        if self.rerank_tokens and self.rerank_final:
            raise ConfigError("Re-rank the top-k one way: by validation perplexity (--rerank-tokens) or by the "
                              "fitness after the final pruning (--rerank-final).")
        if self.space == "allocation":
            describe(self.start)  # read before the model loads
        if self.refiner != "switch" and self.space == "function":
            raise ConfigError(f"--refiner {self.refiner} draws allocations; give it with --space allocation or "
                              "hybrid.")
        if self.cma_sigma <= 0:
            raise ConfigError("--cma-sigma must be a positive number of level steps.")
        if self.cma_sigma != SearchConfig.cma_sigma and self.refiner != "cma":
            raise ConfigError("--cma-sigma sets CMA-ES's first moves; give it with --refiner cma.")
        if self.refiner == "cma" and self.parents != 1:
            raise ConfigError("--parents picks which allocation a level switch mutates; CMA-ES (--refiner cma) "
                              "moves its mean from a whole generation. Leave --parents at 1.")
        if self.space == "allocation" and self.sampler != "ga":
            raise ConfigError("The allocation space mutates levels; --sampler applies to functions only.")
        return self

    def stage_windows(self) -> list[int]:
        """Windows of `seqlen` tokens measured at each stage of the fitness."""
        return stage_windows(parse_fidelity(self.fidelity), self.seqlen, self.fitness_windows)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lam_range"] = list(self.lam_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "lam_range" in kw:
            kw["lam_range"] = tuple(kw["lam_range"])
        return cls(**kw).validate()
