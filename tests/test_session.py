"""PruningSession: what it computes when, and that it caches it."""

import numpy as np

from dsa_core.allocation import allocate, needs_alpha
from dsa_core.session import PruningSession


def test_statistics_for_sequential_pruning_skip_ranks_and_alpha(fresh_tiny):
    s = PruningSession(fresh_tiny, nsamples=2, seqlen=64, data_source="local")
    stats = s.stats("wanda")
    assert stats.alpha_hill is None and not s._caches  # no per-row ranks were built
    assert s.stats("wanda", alpha=True) is stats and stats.alpha_hill.shape == (4,)
    assert np.isfinite(allocate(stats, "alpha", 0.5).ratios).all()
    cache, cached_stats = s.scores("wanda")
    assert cached_stats is stats and cache.ranks  # the fast-mode cache reuses the statistics already made


def test_needs_alpha_only_for_alphapruning():
    assert needs_alpha("alpha") and needs_alpha("alpha:eps=0.2") and needs_alpha(" Alpha ")
    assert not any(needs_alpha(s) for s in ("owl", "uniform", "dsa", "W:(NO_OP)-(VAR)-(NO_OP)"))
