"""Zero-shot accuracy of several allocations of one session, one after another: the dense model, the
reference allocations (uniform, OWL, the DSA preset) and any others, each pruned from the same dense
weights and calibration. Orchestration only: pruning is dsa_core.pipeline's, scoring is the harness's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dsa_core.config import EvalConfig
from dsa_core.functions import AllocationFunction, to_text
from dsa_core.pipeline import oom_as_error, prune_with
from dsa_core.session import PruningSession
from dsa_core.zeroshot.harness import evaluate_tasks

# Labels as the web app's figures name these allocations, and the specs that produce them.
REFERENCES: tuple[tuple[str, str], ...] = (("dense", "dense"), ("uniform", "uniform"), ("owl", "owl"),
                                           ("dsa preset", "dsa"))


def compare_allocations(
    session: PruningSession,
    cfg: EvalConfig,
    extra: Sequence[tuple[str, str | AllocationFunction]] = (),
    references: Sequence[tuple[str, str | AllocationFunction]] = REFERENCES,
    batch_size: int | None = None,
    on_result: Callable[[str, dict], None] | None = None,
) -> dict[str, dict]:
    """{label: zero-shot result} for the references then `extra` (e.g. ("current", the builder's function)),
    each at cfg.sparsity with cfg's metric, pattern and mode, on cfg.tasks. Each result also holds its
    allocation spec, ratios, achieved sparsity and allocation warnings. The session ends dense again."""
    cfg.validate()
    out: dict[str, dict] = {}
    try:
        for label, spec in (*references, *extra):
            ratios, warnings = prune_with(session, cfg, spec)
            with oom_as_error("scoring the zero-shot tasks"):
                result = evaluate_tasks(session.lm, cfg.tasks, cfg.tasks_limit, cfg.tasks_data, cfg.data_source,
                                        batch_size, session.progress)
            result.update(allocation=spec if isinstance(spec, str) else to_text(spec),
                          ratios=[float(r) for r in ratios], achieved_sparsity=session.achieved_sparsity()[0],
                          warnings=warnings)
            out[label] = result
            if on_result:
                on_result(label, result)
    finally:
        session.restore()
    return out
