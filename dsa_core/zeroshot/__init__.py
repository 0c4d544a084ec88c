"""Zero-shot accuracy on the pruning papers' tasks (BoolQ, RTE, HellaSwag, WinoGrande, ARC-e, ARC-c,
OpenBookQA) and PIQA, scored by lm-evaluation-harness.

`tasks` names the tasks and finds their local release files, `formats` reads those files, `harness` drives
lm-eval on an in-memory model, `compare` runs the reference allocations one after another. This package
imports lm-eval only in `harness`, so naming and checking tasks stays cheap.
"""

from dsa_core.zeroshot.tasks import PAPER_TASKS, TASKS, parse_tasks

__all__ = ["PAPER_TASKS", "TASKS", "parse_tasks"]
