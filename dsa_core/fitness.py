"""What a search minimises: a fast proxy of the pruned model's quality, measured after re-masking from the score
cache (SparseGPT: after putting together its per-layer pruned weights, dsa_core.sparsegpt_levels), at one or more
fidelities (numbers of tokens).

- `ppl`: perplexity on WikiText-2 *validation* windows (DSA's proxy).
- `kl`: mean per-token KL divergence of the pruned model's next-token distribution from the dense model's on the
  calibration windows (EvoPress's fitness); the dense logits are computed once and cached.
- `zeroshot:TASKS` (e.g. zeroshot:piqa,boolq): how far the model is from choosing the correct answer on a fixed,
  seeded subset of each task's rows, held out of what final tables report (dsa_core.zeroshot.fitness), in one stage.
None ever reads the test split (nor the rows a final zero-shot table scores, when it leaves the fitness's out).
With several fidelities a candidate is measured on the few tokens first and
on more only while the search's pruner promotes it (dsa_core.search); each stage's windows are the first ones of
the next, so a promoted candidate's measure only gets more precise.

The last stage may instead measure the model pruned sequentially, as a result is finally applied (`last_stage`
"sequential"). Re-masking from the dense model's scores is what makes the first stages fast, but on some models it
ranks allocations differently from the sequential pruning the user gets: on Gemma 3 270M at 60% Wanda a refinement
12% better than ATP on masked validation windows was no better on test once pruned sequentially.
"""

from __future__ import annotations

import logging
import math
import re
import time

import numpy as np

from dsa_core import functions
from dsa_core.allocation import allocate
from dsa_core.errors import ConfigError, DSAError
from dsa_core.evaluate import FixedWindowsKL, FixedWindowsPerplexity
from dsa_core.metrics import get_metric
from dsa_core.models import free_memory
from dsa_core.prune import MaskCache, SequentialRun, layer_ratios, run_bytes
from dsa_core.session import PruningSession
from dsa_core.sparsegpt_levels import SparseGPTLevels

log = logging.getLogger(__name__)

FITNESSES = {"ppl": "perplexity on WikiText-2 validation windows",
             "kl": "KL divergence from the dense model on calibration tokens",
             "zeroshot:TASKS": "zero-shot tasks (e.g. zeroshot:piqa,boolq): cross-entropy of the correct choice on "
                               "--zeroshot-rows rows per task held out of the final tables' rows"}
FITNESS_NAMES = {"ppl": "proxy perplexity", "kl": "KL"}  # what status lines, charts and headlines call them
LAST_STAGES = {"masked": "re-masked from the dense model's scores, like the stages before it",
               "sequential": "after pruning sequentially, as the result is applied (seconds a candidate with "
                             "Wanda on a GPU, resumed from the blocks it shares with the best one so far)"}
FAILED_FITNESS = 1e9  # what a candidate that cannot be evaluated scores: never selected, never crashes a search
ZEROSHOT_ONE_STAGE = ("The zero-shot fitness is measured in one stage on its held-out rows (--zeroshot-rows), not "
                      "at several fidelities: drop --fidelity.")
KEPT_RUNS_SHARE = 0.1  # of the free device memory the sequential runs kept to resume from may hold


def check_kind(kind: str) -> tuple[str, ...] | None:
    """Refuse an unknown fitness in one sentence (before any model loads); the tasks of a zero-shot one."""
    if kind.startswith("zeroshot:"):
        from dsa_core.zeroshot.tasks import parse_tasks

        tasks = kind.partition(":")[2]
        if not tasks.strip():
            raise ConfigError("The zero-shot fitness needs its tasks, e.g. --fitness zeroshot:piqa,boolq.")
        return parse_tasks(tasks)
    if kind not in FITNESSES:
        raise ConfigError(f"Unknown fitness '{kind}'; choose one of ppl, kl or zeroshot:TASKS (e.g. zeroshot:piqa).")
    return None


def check_sequential_windows(windows: int, nsamples: int) -> None:
    if not 0 <= windows <= nsamples:
        raise ConfigError(f"The sequential last stage calibrates on 1 to {nsamples} windows (--nsamples), or on all "
                          f"of them with 0; not on {windows}.")


def check_rescore(metric: str, last_stage: str) -> None:
    """Rescoring needs sequential runs to score on, and a metric that reads its inputs."""
    if last_stage != "sequential":
        raise ConfigError("Rescoring the re-masked stages scores them on the best sequentially pruned candidate's "
                          "inputs: it needs --last-stage sequential.")
    if not get_metric(metric).needs_inputs:
        raise ConfigError(f"{metric} reads no inputs: its re-masked stages already prune as sequential pruning "
                          "does, and there is nothing to rescore.")


def parse_fidelity(text: str | None) -> tuple[int, ...]:
    """'2k,16k,64k' or '2048,16384' → token counts, strictly increasing; '' or None → () (one stage: the
    configured number of windows)."""
    if not text:
        return ()
    out = []
    for item in (s.strip().lower() for s in str(text).split(",")):
        m = re.fullmatch(r"(\d{1,9})(k?)", item)
        if not m:
            raise ConfigError(f"Cannot read the fidelity '{item}'; give token counts such as 2k,16k,64k.")
        out.append(int(m.group(1)) * (1024 if m.group(2) else 1))
    if any(b <= a for a, b in zip(out, out[1:])) or out[0] < 1:
        raise ConfigError(f"Fidelities {text} must be positive and increasing (few tokens first).")
    return tuple(out)


def stage_windows(tokens: tuple[int, ...], seqlen: int, default_windows: int) -> list[int]:
    """Windows of `seqlen` tokens per stage (at least one each)."""
    return [max(1, math.ceil(t / seqlen)) for t in tokens] if tokens else [default_windows]


class KeptRuns:
    """The sequential runs a sequential last stage resumes from: the best-measured one (the direct search's parent,
    from which its children differ in two units) and the latest, within `budget` bytes. Once the best alone does
    not fit, nothing is kept any more."""

    def __init__(self, budget: int):
        self.budget = budget
        self.best: tuple[float, SequentialRun] | None = None
        self.last: SequentialRun | None = None
        self.enabled = True
        self.blocks = [0, 0]  # blocks pruned, blocks taken from a kept run

    def resume_from(self, per_layer: list[list[float]]) -> SequentialRun | None:
        kept = [r for r in (self.best[1] if self.best else None, self.last) if r is not None]
        shared, run = max(((r.shared_blocks(per_layer), r) for r in kept), key=lambda x: x[0], default=(0, None))
        self.blocks[0] += len(per_layer) - shared
        self.blocks[1] += shared
        return run if shared else None

    def keep(self, run: SequentialRun | None, value: float) -> None:
        if run is None or not self.enabled:  # once disabled, runs hold their statistics at most (Fitness.rescore)
            return
        if self.best is None or value < self.best[0]:
            self.best = (value, run)
        self.last = run
        if run_bytes([self.best[1], self.last]) > self.budget:
            self.last = None
            if run_bytes([self.best[1]]) > self.budget:
                log.info("A sequential run takes more than %d MB: later candidates are pruned from the first block.",
                         self.budget >> 20)
                self.best, self.enabled = None, False


class Fitness:
    """A search's fitness on a session: `measure(ratios, stage)` re-masks (once per candidate) and measures at a
    stage. Memoised by key for whole evaluations, so a function the GA proposes again costs nothing."""

    def __init__(self, session: PruningSession, metric: str, sparsity: float, kind: str = "ppl",
                 windows: list[int] | None = None, last_stage: str = "masked", zeroshot_rows: int = 200,
                 sequential_windows: int = 0, rescore: bool = False):
        """`sequential_windows`: a sequential last stage calibrates on only the first this many calibration
        windows (0: all of them). `rescore`: the re-masked stages score each block on the statistics it was pruned
        on in the best candidate measured at the sequential last stage so far (check_rescore)."""
        tasks = check_kind(kind)
        if last_stage not in LAST_STAGES:
            raise ConfigError(f"Unknown last stage '{last_stage}'; choose one of {', '.join(LAST_STAGES)}.")
        check_sequential_windows(sequential_windows, session.nsamples)
        if rescore:
            check_rescore(metric, last_stage)
        self.session, self.metric, self.sparsity, self.kind = session, metric, sparsity, kind
        self.sequential_last = last_stage == "sequential"
        self.sequential_windows = sequential_windows
        self.kept = KeptRuns(int(KEPT_RUNS_SHARE * free_memory(session.lm.device)))
        self.rescore = rescore
        self.basis: float | None = None  # the sequential measure of the run the rescored cache was scored on
        self._rescored: MaskCache | SparseGPTLevels | None = None
        self.stats = session.stats(metric)
        if metric != "sparsegpt":  # SparseGPT is measured on its own weights, not re-masked from the ranks
            session.scores(metric)
        self.windows = windows or [8]
        seqlen = session.seqlen
        self.tokens = [w * seqlen for w in self.windows]
        if tasks is not None:
            if len(self.windows) > 1:
                raise ConfigError(ZEROSHOT_ONE_STAGE)
            from dsa_core.zeroshot.fitness import ZeroShotFitness  # imports lm-eval (seconds): only when asked

            session.restore()  # built on the dense model: nothing is measured yet, but no stale pruning either
            zeroshot = ZeroShotFitness(session.lm, tasks, zeroshot_rows, source=session.data_source)
            self.origin, self.stages = zeroshot.protocol, [zeroshot]
            self.tokens = [sum(len(c) + len(x) for _, c, x in zeroshot.requests)]
        elif kind == "ppl":
            texts, self.origin = session.eval_windows("wikitext2", "validation", seqlen, self.windows[-1])
            if texts.shape[0] < self.windows[-1]:
                raise ConfigError(f"WikiText-2 validation holds {texts.shape[0]} windows of {seqlen} tokens; the "
                                  f"fitness asks for {self.windows[-1]}: lower --fidelity or --fitness-windows.")
            self.stages = [FixedWindowsPerplexity(session.lm, texts[:w]) for w in self.windows]
        else:
            calib = session.calibration_windows()
            if self.windows[-1] > calib.shape[0]:
                raise ConfigError(f"The KL fitness at {self.tokens[-1]} tokens needs {self.windows[-1]} calibration "
                                  f"windows; there are {calib.shape[0]}: raise --nsamples or lower --fidelity.")
            self.origin = session.calib_origin
            session.restore()  # the cached logits are the dense model's
            last = FixedWindowsKL(session.lm, calib[: self.windows[-1]])
            self.stages = [FixedWindowsKL(session.lm, calib[:w], last.batch_size, last.dense)
                           for w in self.windows[:-1]] + [last]
        self.memo: dict[str, float] = {}
        self.seconds = [0.0] * len(self.stages)  # measuring time per stage (re-masking counted in stage 0)
        self.counts = [0] * len(self.stages)
        # The key, weights version and kind (sequential or not) of the pruning this applied last.
        self._applied: tuple[str, int, bool] | None = None

    def measure(self, key: str, ratios, stage: int, counted: bool = True) -> float:
        """The fitness of an allocation at a stage (FAILED_FITNESS when it is not finite); `counted` measurements
        are the search's own, in `throughput`."""
        start = time.perf_counter()
        sequential = self.sequential_last and stage == len(self.stages) - 1
        run = None
        if self._applied != (key, self.session.weights_version, sequential):  # else its pruning is still in place
            if sequential:
                run = self._prune_sequential(np.asarray(ratios, dtype=np.float64))
            elif self.metric == "sparsegpt":  # its weight update, not only its mask (dsa_core.sparsegpt_levels)
                self.session.apply_sparsegpt_levels(np.asarray(ratios, dtype=np.float64), self._rescored)
            else:
                self.session.apply(np.asarray(ratios, dtype=np.float64), self.metric, cache=self._rescored)
            self._applied = (key, self.session.weights_version, sequential)
        value = self.stages[stage]()
        self.kept.keep(run, value)
        self._rebase(run, value)
        if counted:
            self.seconds[stage] += time.perf_counter() - start
            self.counts[stage] += 1
        return value if math.isfinite(value) else FAILED_FITNESS

    def _prune_sequential(self, ratios: np.ndarray) -> SequentialRun | None:
        """Prune sequentially, from the kept run that shares the most leading blocks with `ratios`: a measure, not
        the result. On a GPU each layer takes its faster form (SparseGPT's solved column loop, 3.87× faster on Gemma
        3 270M, where the loop's kernel launches per column bound it); on a CPU the loop is as fast or faster (SmolLM2
        1.10× slower solved, Gemma 0.57×: bench/results/cpu2_sparsegpt_solved*.log)."""
        windows, exact = self.sequential_windows, self.session.lm.device.type != "cuda"
        if not self.kept.enabled:
            return self.session.prune_sequential(ratios, self.metric, windows=windows, exact=exact,
                                                 statistics=self.rescore)
        per_layer = layer_ratios(ratios, [len(block) for block in self.session.dense.layers])
        return self.session.prune_sequential(ratios, self.metric, resume=self.kept.resume_from(per_layer),
                                             record=True, windows=windows, exact=exact, statistics=self.rescore)

    def _rebase(self, run: SequentialRun | None, value: float) -> None:
        """With `rescore`, score the re-masked stages anew on a run measured better than the one they are scored on:
        a direct search's children differ from their parent in two units, so re-masked after the parent's blocks
        they rank more as their own sequential prunes do than on the dense model's scores, which ranked them near
        chance (bench/bench_stage_agreement.py: by much on SmolLM2, by little on Gemma 3 270M)."""
        if (not self.rescore or run is None or not run.statistics or not math.isfinite(value)
                or (self.basis is not None and value >= self.basis)):
            return
        self._rescored = None  # freed before its successor is made
        if self.metric == "sparsegpt":  # measured on its own weights (see `measure`)
            self._rescored = self.session.rescored_sparsegpt_levels(run.statistics)
        else:
            self._rescored = self.session.rescored(run.statistics, self.metric)
        self.basis = value

    def forget_parent(self) -> None:
        """Make the next candidate measured sequentially the parent, whatever its value: a refinement restarted
        from another start resumes its prunes from, and re-masks its children after, runs of its own basin, not of
        the best one so far."""
        self.kept.best, self.basis, self._rescored = None, None, None

    def measure_pruned(self, ratios) -> float:
        """The last stage's measure of an allocation pruned exactly as a result is (sequentially, on every
        calibration window, by each layer's reference form): what a re-ranking of the top candidates compares."""
        self.session.prune_sequential(np.asarray(ratios, dtype=np.float64), self.metric)
        self._applied = None  # these weights are no candidate's measure at an earlier stage
        value = self.stages[-1]()
        return value if math.isfinite(value) else FAILED_FITNESS

    def __call__(self, spec: str | functions.AllocationFunction, stage: int | None = None) -> float:
        """The fitness of any allocation `allocate` accepts (a baseline, a function) at `stage` (default: the last,
        the only one memoised)."""
        key = spec if isinstance(spec, str) else functions.to_text(spec)
        last = len(self.stages) - 1
        stage = last if stage is None else stage
        if stage == last and key in self.memo:
            return self.memo[key]
        try:
            ratios = allocate(self.stats, spec, self.sparsity).ratios
        except DSAError:
            return FAILED_FITNESS
        value = self.measure(key, ratios, stage, counted=False)
        if stage == last:
            self.memo[key] = value
        return value

    def throughput(self) -> list[dict]:
        """Per stage: tokens, measurements and their rate (re-masking or sequential pruning counted in)."""
        return [{"tokens": t, "evaluated": n, "seconds": s, "per_second": n / s if s else 0.0}
                for t, n, s in zip(self.tokens, self.counts, self.seconds)]
