"""PruningSession: what it computes when, and that it caches it."""

import numpy as np

from dsa_core.allocation import allocate, required_stats
from dsa_core.session import PruningSession


def test_statistics_for_sequential_pruning_skip_ranks_and_alpha(fresh_tiny):
    s = PruningSession(fresh_tiny, nsamples=2, seqlen=64, data_source="local")
    stats = s.stats("wanda")
    assert stats.alpha_hill is None and not s._caches  # no per-row ranks were built
    assert s.stats("wanda", needs={"alpha_hill"}) is stats and stats.alpha_hill.shape == (4,)
    assert np.isfinite(allocate(stats, "alpha", 0.5).ratios).all()
    cache, cached_stats = s.scores("wanda")
    assert cached_stats is stats and cache.ranks  # the fast-mode cache reuses the statistics already made


def test_needs_alpha_only_for_alphapruning():
    def needs_alpha(spec):
        return "alpha_hill" in required_stats(spec)

    assert needs_alpha("alpha") and needs_alpha("alpha:eps=0.2") and needs_alpha(" Alpha ")
    assert not any(needs_alpha(s) for s in ("owl", "uniform", "dsa", "W:(NO_OP)-(VAR)-(NO_OP)"))


def test_windows_of_models_without_bos_per_window_are_the_literatures(tiny):
    """random:tiny (SmolLM2's tokenizer, arch llama): windows are cut from the text tokenised once, as before."""
    import torch

    from dsa_core import data
    from dsa_core.config import EvalConfig
    from dsa_core.pipeline import protocol

    assert tiny.window_bos is None and not tiny.bos_per_window
    s = PruningSession(tiny, nsamples=3, seqlen=64, data_source="local")
    test_ids = data.tokenize(tiny.tokenizer, data.load_text("wikitext2", "test", "local").text)
    windows, _ = s.eval_windows("wikitext2", "test", 64, 3)
    assert torch.equal(windows, test_ids[: 3 * 64].view(3, 64))
    calib_ids = data.tokenize(tiny.tokenizer, data.load_text("wikitext2", "train", "local").text)
    assert torch.equal(s.calibration_windows(), data.calibration_windows(calib_ids, 3, 64, 0))
    assert protocol(EvalConfig(), s, 3, "x")["bos_per_window"] is False


def test_gemma_family_windows_each_start_with_bos(tiny):
    """The tiny model posing as Gemma: every evaluation and calibration window starts with the tokenizer's <bos>,
    followed by seqlen - 1 text tokens that stay non-overlapping across evaluation windows."""
    import dataclasses

    import torch

    from dsa_core import data
    from dsa_core.config import EvalConfig
    from dsa_core.pipeline import protocol

    gemma = dataclasses.replace(tiny, arch="gemma3_text")
    bos = tiny.tokenizer.bos_token_id
    assert gemma.window_bos == bos and gemma.bos_per_window
    s = PruningSession(gemma, nsamples=3, seqlen=64, data_source="local")
    test_ids = data.tokenize(tiny.tokenizer, data.load_text("wikitext2", "test", "local").text)
    for split in ("test", "validation"):
        all_windows, _ = s.eval_windows("wikitext2", split, 64)
        assert (all_windows[:, 0] == bos).all()
    windows, _ = s.eval_windows("wikitext2", "test", 64, 3)
    assert windows.shape == (3, 64) and (windows[:, 0] == bos).all()
    assert torch.equal(windows[:, 1:].flatten(), test_ids[: 3 * 63])
    calib = s.calibration_windows()
    assert calib.shape == (3, 64) and (calib[:, 0] == bos).all()
    assert protocol(EvalConfig(), s, 3, "x")["bos_per_window"] is True


def test_a_session_computes_the_statistics_an_allocation_declares(fresh_tiny, monkeypatch):
    """PL_Alpha_Hill is made when the allocation's baseline declares it, not because its name is 'alpha'."""
    from dsa_core import allocation as A
    from dsa_core.config import EvalConfig
    from dsa_core.pipeline import prune_with

    toy = A.Baseline("alpha_twin", "AlphaPruning under another name.", A.BASELINES["alpha"].fn, {"eps": 0.3},
                     needs=("alpha_hill",))
    monkeypatch.setitem(A.BASELINES, toy.name, toy)
    s = PruningSession(fresh_tiny, nsamples=2, seqlen=64, data_source="local")
    cfg = EvalConfig(model="random:tiny", sparsity=0.5, mode="fast", nsamples=2, seqlen=64).validate()
    prune_with(s, cfg, "owl")
    assert s.stats("wanda").alpha_hill is None  # OWL reads outlier ratios only
    ratios, _ = prune_with(s, cfg, "alpha_twin")
    assert s.stats("wanda").alpha_hill is not None
    assert np.array_equal(ratios, allocate(s.stats("wanda"), "alpha", 0.5).ratios)
