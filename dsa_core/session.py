"""The one stateful object of the engine: a loaded model with its calibration data and score caches.

Everything expensive (the model, its dense weights, calibration inputs, score ranks, tokenised evaluation
windows) is computed once here and reused: trying another allocation costs a re-mask and a perplexity,
not a recalibration. The CLI, the web app and the search all drive a PruningSession.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import numpy as np
import torch

from dsa_core import data
from dsa_core.calibration import ActivationStats, BlockInputs, capture_block_inputs
from dsa_core.errors import ConfigError
from dsa_core.evaluate import perplexity
from dsa_core.metrics import get_metric
from dsa_core.models import LoadedModel
from dsa_core.prune import (
    ON_DEMAND_STATS,
    DenseWeights,
    MaskCache,
    SequentialRun,
    achieved_sparsity,
    prune_sequential,
    rescored_cache,
    score_model,
)
from dsa_core.scores import parse_pattern
from dsa_core.sparsegpt_levels import SparseGPTLevels
from dsa_core.stats import BlockStats

log = logging.getLogger(__name__)


class PruningSession:
    """A model plus calibration settings. Phases' wall-clock seconds accumulate in `timings`."""

    def __init__(
        self,
        lm: LoadedModel,
        calib: str = "wikitext2",
        nsamples: int = 128,
        seqlen: int = 2048,
        seed: int = 0,
        data_source: str = "auto",
        batch_size: int | None = None,
        sample_size: int = 2**18,
        progress: Callable[[str, int, int], None] | None = None,
    ):
        if lm.context_length is not None and seqlen > lm.context_length:  # else minutes of work before it fails
            raise ConfigError(f"--seqlen {seqlen} is beyond {lm.name}'s context of {lm.context_length} tokens.")
        self.lm = lm
        self.calib, self.nsamples, self.seqlen, self.seed = calib, nsamples, seqlen, seed
        self.data_source = data_source
        self.batch_size = batch_size or (8 if lm.device.type == "cuda" else 2)
        self.sample_size = sample_size
        self.progress = progress or (lambda phase, done, total: None)
        self.timings: dict[str, float] = {}
        self.dense = DenseWeights(lm)
        self.weights_version = 0  # goes up whenever the weights change: lets a caller know its mask still stands
        self.calib_origin: str | None = None
        self._windows: torch.Tensor | None = None
        self._inputs: BlockInputs | None = None
        self._caches: dict[tuple[str, str], tuple[MaskCache, BlockStats]] = {}
        self._stats: dict[str, BlockStats] = {}
        self._eval: dict[tuple, tuple[torch.Tensor, str]] = {}
        self._sparsegpt_levels: SparseGPTLevels | None = None

    @contextmanager
    def _timed(self, phase: str):
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize(self.lm.device)
        start = time.perf_counter()
        yield
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize(self.lm.device)
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    def calibration_windows(self) -> torch.Tensor:
        if self._windows is None:
            with self._timed("calibration"):
                text = data.load_text(self.calib, "train", self.data_source)
                ids = data.tokenize(self.lm.tokenizer, text.text)
                self._windows = data.calibration_windows(ids, self.nsamples, self.seqlen, self.seed,
                                                         bos_id=self.lm.window_bos)
                self.calib_origin = text.origin
        return self._windows

    def block_inputs(self) -> BlockInputs:
        """What enters block 0 for every calibration window, captured once and reused by every pass."""
        if self._inputs is None:
            windows = self.calibration_windows()
            with self._timed("calibration"):
                self._inputs = capture_block_inputs(self.lm, windows, self.batch_size)
        return self._inputs

    def _inputs_for(self, metric: str) -> BlockInputs | None:
        return self.block_inputs() if get_metric(metric).needs_inputs else None

    def _score(self, metric: str, pattern: str, with_ranks: bool) -> tuple[MaskCache | None, BlockStats]:
        inputs = self._inputs_for(metric)
        self.restore()  # scores are always those of the dense model
        with self._timed("scoring"):
            return score_model(self.lm, self.dense, None, metric, pattern, self.batch_size, self.sample_size,
                               self.seed, progress=self.progress, inputs=inputs,
                               with_ranks=with_ranks)

    def scores(self, metric: str, pattern: str = "unstructured") -> tuple[MaskCache, BlockStats]:
        """Fast-mode score cache and block statistics for a metric and pattern, computed on first use."""
        get_metric(metric)
        parse_pattern(pattern)
        key = (metric, pattern)
        if key not in self._caches:
            cache, stats = self._score(metric, pattern, with_ranks=True)
            self._caches[key] = (cache, self._stats.setdefault(metric, stats))
        return self._caches[key]

    def stats(self, metric: str = "wanda", needs: Iterable[str] = ()) -> BlockStats:
        """Block statistics (pattern-independent) for allocations: from the score cache when there is one,
        else from a pass that skips the per-row ranks (sequential pruning does not need them). The statistics a
        scoring pass does not make (prune.ON_DEMAND_STATS: PL_Alpha_Hill, one SVD per layer, the slow part on a
        CPU) only when `needs` names them, as an allocation declares (allocation.required_stats)."""
        get_metric(metric)
        if metric not in self._stats:
            self._stats[metric] = self._score(metric, "unstructured", with_ranks=False)[1]
        stats = self._stats[metric]
        for name in sorted(set(needs) & ON_DEMAND_STATS.keys()):
            if getattr(stats, name) is None:
                with self._timed("scoring"):
                    setattr(stats, name, ON_DEMAND_STATS[name](self.dense))
        return stats

    def apply(self, ratios: np.ndarray, metric: str, pattern: str = "unstructured",
              cache: MaskCache | None = None) -> None:
        """Fast mode: re-mask every layer from the cached score order (or from `cache`, e.g. `rescored`'s)."""
        cache = cache or self.scores(metric, pattern)[0]
        self.weights_version += 1
        with self._timed("masking"):
            cache.apply(np.asarray(ratios, dtype=np.float64))

    def rescored(self, statistics: list[ActivationStats], metric: str, pattern: str = "unstructured") -> MaskCache:
        """A score cache as if after a sequential run of this session, from the statistics it recorded
        (prune.rescored_cache)."""
        with self._timed("scoring"):
            return rescored_cache(self.dense, statistics, metric, pattern)

    def rescored_sparsegpt_levels(self, statistics: list[ActivationStats]) -> SparseGPTLevels:
        """SparseGPT's level database as if after a sequential run of this session, from the Hessians it recorded."""
        with self._timed("scoring"):
            return SparseGPTLevels(self.lm, self.dense, None, statistics=statistics)

    def apply_sparsegpt_levels(self, ratios: np.ndarray, levels: SparseGPTLevels | None = None) -> None:
        """Every linear layer to its one-shot SparseGPT weights at its ratio rounded to 1% (a search's SparseGPT
        fitness: dsa_core.sparsegpt_levels), from `levels` (e.g. `rescored`'s) or from the dense model's Hessians,
        gathered on first use."""
        if levels is None and self._sparsegpt_levels is None:
            inputs = self.block_inputs()
            self.restore()
            with self._timed("scoring"):
                self._sparsegpt_levels = SparseGPTLevels(self.lm, self.dense, inputs)
        self.weights_version += 1
        with self._timed("masking"):
            (levels or self._sparsegpt_levels).apply(np.asarray(ratios, dtype=np.float64))

    def prune_sequential(self, ratios: np.ndarray, metric: str, pattern: str = "unstructured",
                         resume: SequentialRun | None = None, record: bool = False,
                         windows: int | None = None, exact: bool = True,
                         statistics: bool = False) -> SequentialRun | None:
        """Faithful mode, starting from the dense weights (or, for the leading blocks it shares with `resume`, an
        earlier run's of this session: see prune.SequentialRun); with `record`, returns this run to resume from.
        `windows`: calibrate on only the first calibration windows (whole batches; a search's quick measure);
        `exact=False`: layers pruned by a faster form, equal up to rounding (a search's measure); `statistics`: the
        run (with or without `record`) holds each block's calibration statistics (`rescored`)."""
        inputs = self._inputs_for(metric)
        if inputs is not None and windows:
            inputs = inputs.first(windows)
        self.restore()
        with self._timed("pruning"):
            return prune_sequential(self.lm, None, metric, np.asarray(ratios), pattern, self.batch_size,
                                    progress=self.progress, inputs=inputs, resume=resume, record=record,
                                    exact=exact, statistics=statistics)

    @contextmanager
    def reporting(self, reporter: Callable[[str, int, int], None] | None):
        """Send the session's progress to `reporter` (a dsa_core.reporter.Reporter) within the block, so that a run
        given one hears the session's work and its cancellation stops it; None leaves the progress as it is."""
        if reporter is None:
            yield
            return
        before, self.progress = self.progress, reporter
        try:
            yield
        finally:
            self.progress = before

    def restore(self) -> None:
        self.dense.restore()
        self.weights_version += 1

    def achieved_sparsity(self) -> tuple[float, list[float]]:
        return achieved_sparsity(self.lm)

    def eval_windows(self, dataset: str = "wikitext2", split: str = "test", seqlen: int | None = None,
                     limit: int | None = None) -> tuple[torch.Tensor, str]:
        """Tokenised evaluation windows (tokenised once per dataset and split) and the text's origin. Each window
        starts with <bos> for the model families that need it (LoadedModel.window_bos), else only the first."""
        if split == "test" and dataset == self.calib and self.calib not in ("wikitext2", "c4"):
            raise ConfigError("The evaluation text must not be the calibration file.")
        key = (dataset, split, seqlen or self.seqlen)
        if key not in self._eval:
            text = data.load_text(dataset, split, self.data_source)
            ids = data.tokenize(self.lm.tokenizer, text.text)
            self._eval[key] = (data.eval_windows(ids, key[2], bos_id=self.lm.window_bos), text.origin)
        windows, origin = self._eval[key]
        # Capping re-cuts the windows already made (their <bos>, if any, included): the first `limit` of them.
        return (windows if limit is None else data.eval_windows(windows.flatten(), key[2], limit)), origin

    def perplexity(self, dataset: str = "wikitext2", split: str = "test", seqlen: int | None = None,
                   limit: int | None = None, batch_size: int | None = None) -> float:
        windows, _ = self.eval_windows(dataset, split, seqlen, limit)
        with self._timed("perplexity"):
            return perplexity(self.lm, windows, batch_size, lambda d, t: self.progress("perplexity", d, t))
