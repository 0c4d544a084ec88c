"""The search on the real SmolLM2 and the shipped WikiText-2, on the CPU with a tiny budget: a hybrid search with
the KL fitness and two fidelity stages, then the faithful table, as a user would run it."""

import numpy as np

from dsa_core import comparison, search
from dsa_core.reporter import EventLog
from dsa_core.search_config import SearchConfig
from dsa_core.session import PruningSession
from dsa_core.studies import create_study


def test_hybrid_kl_search_on_smollm2_meets_the_target_and_reports_every_stage(smollm2):
    session = PruningSession(smollm2, nsamples=2, seqlen=128, data_source="local", sample_size=2**14)
    cfg = SearchConfig(model="smollm2", nsamples=2, seqlen=128, data_source="local", device="cpu",
                       space="hybrid", fitness="kl", fidelity="128,256", promote=2, population=4,
                       budget_candidates=6, top_k=1, final_eval_windows=2, sparsity=0.6).validate()
    log = EventLog()
    result = search.run_search(session, cfg, create_study(cfg), log)
    events = log.events
    assert result.evaluated == 6 and [p["evaluated"] for p in result.phases] == [3, 3]
    assert {e.phase for e in events} == {"function", "allocation"} and 0 < result.best.fitness < 10
    params = session.stats("wanda").params
    assert len(result.best.ratios) == 30
    assert abs(np.average(result.best.ratios, weights=params) - 0.6) < 1e-9
    assert [t["tokens"] for t in result.throughput] == [128, 256] and result.throughput[0]["evaluated"] == 6
    rows = comparison.faithful_table(session, cfg, result.top, refs=[("uniform", "uniform")])
    assert [r["label"] for r in rows] == ["uniform", "searched #1"] and all(r["ppl"] > 1 for r in rows)
    assert session.achieved_sparsity()[0] < 0.01
