"""Zero-shot accuracy of several allocations of one session, one after another: the dense model, the
reference allocations (uniform, OWL, the DSA preset) and any others, each pruned from the same dense
weights and calibration (dsa_core.comparison.compare, without perplexity), as {label: result}; and the reading of
an allocation a user passes to the bench or the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsa_core.allocation import MAX_SPARSITY, describe
from dsa_core.comparison import compare
from dsa_core.config import EvalConfig
from dsa_core.errors import ConfigError
from dsa_core.levels import LevelGrid, unit_sizes
from dsa_core.pipeline import Spec
from dsa_core.reporter import Reporter
from dsa_core.session import PruningSession
from dsa_core.stats import BlockStats

# Labels as the web app's figures name these allocations, and the specs that produce them.
REFERENCES: tuple[tuple[str, str], ...] = (("dense", "dense"), ("uniform", "uniform"), ("owl", "owl"),
                                           ("dsa preset", "dsa"))


def compare_allocations(
    session: PruningSession,
    cfg: EvalConfig,
    extra: Sequence[tuple[str, Spec]] = (),
    references: Sequence[tuple[str, Spec]] = REFERENCES,
    batch_size: int | None = None,
    exclude: int = 0,
    reporter: Reporter | None = None,
) -> dict[str, dict]:
    """{label: zero-shot result} for the references then `extra` (e.g. ("current", the builder's function)),
    each at cfg.sparsity with cfg's metric, pattern and mode, on cfg.tasks. Each result also holds its
    allocation spec, ratios, achieved sparsity and allocation warnings. The session ends dense again. `exclude`: leave
    out the rows a zero-shot search fitness of that many rows per task measured (harness.evaluate_tasks). The
    reporter hears each measured row (a `ComparedAllocation`) as it comes."""
    table = compare(session, cfg, [*references, *extra], perplexity=False, batch_size=batch_size, exclude=exclude,
                    reporter=reporter)
    return {row.label: {**(row.zeroshot or {}), "allocation": row.allocation, "ratios": row.ratios,
                        "achieved_sparsity": row.achieved_sparsity, "warnings": row.warnings} for row in table.rows}


def read_allocation(text: str, stats: BlockStats, target: float, level_step: float = 0.01) -> Spec:
    """An allocation as a user passes one to the bench or the CLI: any spec `allocate` reads (a baseline, a preset,
    a function's text); "ratios:r1,r2,..." (per block or per linear layer); "levels:l1,l2,..." (a direct search's
    candidate key, per block or per layer, on the grid of `level_step`); or "@file.json" holding `best_ratios` (the
    output of `search --json`), `ratios`, or `rows` (a `bench/bench_search.py run` record: its first-ranked
    candidate's). Ratios must meet `target` (parameter-weighted) within 0.5%."""
    text = text.strip()
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"Cannot read the allocation file {path}: {e}.") from None
        saved = saved if isinstance(saved, dict) else {}
        rows = saved.get("rows")
        first = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else {}
        ratios = saved.get("best_ratios") or saved.get("ratios") or first.get("ratios")
        if not ratios:
            raise ConfigError(f"{path} holds neither best_ratios (search --json), ratios, nor a bench search's rows.")
        sparsity = (saved.get("config") or {}).get("sparsity")
        if sparsity is not None and abs(sparsity - target) > 1e-6:
            raise ConfigError(f"{path} was searched at {sparsity:g} sparsity, not {target:g}.")
        text = "ratios:" + ",".join(str(r) for r in ratios)
    head, _, body = text.partition(":")
    if head.lower() not in ("ratios", "levels"):
        describe(text)  # refuses what `allocate` cannot read, before any pruning
        return text
    try:
        values = np.asarray([float(v) for v in body.split(",") if v.strip()], dtype=np.float64)
    except ValueError:
        raise ConfigError(f"Cannot read '{text[:60]}': give comma-separated numbers.") from None
    layers = sum(len(block) for block in stats.layer_shapes)
    if len(values) not in (stats.num_blocks, layers):
        raise ConfigError(f"{len(values)} values for a model of {stats.num_blocks} blocks and {layers} layers.")
    granularity = "block" if len(values) == stats.num_blocks else "projection"
    sizes = unit_sizes(stats.layer_shapes, granularity)
    ratios = LevelGrid(sizes, target, level_step).ratios(values) if head.lower() == "levels" else values
    mean = float(np.dot(ratios, sizes) / sizes.sum())
    if abs(mean - target) > 0.005 or not ((0 <= ratios) & (ratios <= MAX_SPARSITY)).all():
        raise ConfigError(f"These ratios prune {mean:.4f} of the weights, not the target {target:g} (or leave [0, "
                          f"{MAX_SPARSITY}]).")
    return [float(r) for r in ratios]
