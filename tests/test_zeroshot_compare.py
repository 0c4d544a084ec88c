"""Tests of dsa_core/zeroshot/compare.py's allocations as the bench takes them (read_allocation: specs, ratios,
a direct search's levels, a `search --json` file) and of scoring explicit ratios (tiny random model)."""

import json

import numpy as np
import pytest
import torch

from dsa_core.errors import ConfigError
from dsa_core.levels import LevelGrid, unit_sizes
from dsa_core.pipeline import spec_text
from dsa_core.zeroshot.compare import read_allocation

FUNCTION = "W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(7)"


@pytest.fixture(scope="module")
def session(tiny):
    from dsa_core.session import PruningSession

    return PruningSession(tiny, nsamples=2, seqlen=32, data_source="local")


def test_specs_pass_through_and_bad_ones_are_refused_before_pruning(session):
    stats = session.stats("wanda")
    assert read_allocation(FUNCTION, stats, 0.7) == FUNCTION
    assert read_allocation(" owl:M=3 ", stats, 0.7) == "owl:M=3"
    with pytest.raises(ConfigError):
        read_allocation("W:(ABSLOG)-(VAR)", stats, 0.7)
    with pytest.raises(ConfigError, match="3 values"):
        read_allocation("ratios:0.7,0.7,0.7", stats, 0.7)
    with pytest.raises(ConfigError, match="not the target"):
        read_allocation("ratios:" + ",".join(["0.5"] * stats.num_blocks), stats, 0.7)
    with pytest.raises(ConfigError, match="numbers"):
        read_allocation("ratios:a,b", stats, 0.7)


def test_ratios_levels_and_search_output(session, tmp_path):
    stats = session.stats("wanda")
    n = stats.num_blocks
    ratios = [0.6, 0.8] * (n // 2)
    assert read_allocation("ratios:" + ",".join(map(str, ratios)), stats, 0.7) == pytest.approx(ratios)
    layers = [0.7] * sum(len(b) for b in stats.layer_shapes)  # per linear layer, as a projection search gives
    assert read_allocation("ratios:" + ",".join(map(str, layers)), stats, 0.7) == pytest.approx(layers)
    grid = LevelGrid(unit_sizes(stats.layer_shapes, "block"), 0.7)
    levels = grid.snap(np.asarray(ratios))
    got = read_allocation(LevelGrid.key(levels), stats, 0.7)
    np.testing.assert_allclose(got, grid.ratios(levels))
    out = tmp_path / "search.json"
    out.write_text(json.dumps({"best": "levels:...", "best_ratios": ratios, "config": {"sparsity": 0.7}}))
    assert read_allocation(f"@{out}", stats, 0.7) == pytest.approx(ratios)
    with pytest.raises(ConfigError, match="searched at 0.7"):
        read_allocation(f"@{out}", stats, 0.5)
    bench = tmp_path / "bench.json"  # bench/bench_search.py run: the search's first-ranked candidate, rows[0]
    rows = [{"label": "searched #1", "ratios": ratios}, {"label": "searched #2", "ratios": [0.7] * n}]
    bench.write_text(json.dumps({"rows": rows, "config": {"sparsity": 0.7}}))
    assert read_allocation(f"@{bench}", stats, 0.7) == pytest.approx(ratios)
    with pytest.raises(ConfigError, match="Cannot read"):
        read_allocation(f"@{tmp_path / 'none.json'}", stats, 0.7)
    assert spec_text([0.5, 0.25]) == "ratios:0.5,0.25"


def test_explicit_ratios_are_pruned_and_scored(fresh_tiny):
    from dsa_core.config import EvalConfig
    from dsa_core.session import PruningSession
    from dsa_core.zeroshot.compare import compare_allocations
    from tests.test_zeroshot import FIXTURES

    session = PruningSession(fresh_tiny, nsamples=2, seqlen=32, data_source="local")
    dense = {k: v.clone() for k, v in fresh_tiny.model.state_dict().items()}
    cfg = EvalConfig(model="random:tiny", device="cpu", nsamples=2, seqlen=32, sparsity=0.5, mode="fast",
                     data_source="local", tasks="rte", tasks_limit=2, tasks_data=str(FIXTURES)).validate()
    ratios = [0.3, 0.7] * (len(fresh_tiny.blocks) // 2)
    results = compare_allocations(session, cfg, references=[("searched", ratios)])
    assert results["searched"]["ratios"] == pytest.approx(ratios)
    assert results["searched"]["allocation"].startswith("ratios:0.3,0.7")
    assert results["searched"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert all(torch.equal(v, dense[k]) for k, v in fresh_tiny.model.state_dict().items())  # dense again
