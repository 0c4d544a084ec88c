"""A search's zero-shot fitness (`search --fitness zeroshot:TASKS`): how far the model, as it is now, is from choosing
each task's correct answer, on a fixed, seeded subset of each task's rows and only those.

Which rows: the shipped files are the splits the final tables report, so the fitness holds out `rows` of each
(tasks.holdout_rows: the first `rows` of a fixed permutation; at most half a task's, tasks.held_count) and a final
table can leave them out (harness.evaluate_tasks(exclude=rows)). From the hub, ARC and OpenBookQA are read from
their validation splits instead (their tables report test), and nothing of theirs needs leaving out
(tasks.fitness_split).

lm-eval builds the requests (its prompts and choices, as the final tables score them) and its HFLM tokenises them,
once; each measurement then runs only the forward passes of those token lists. No weights are changed here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from lm_eval.tasks import TaskManager

from dsa_core.errors import ConfigError
from dsa_core.models import LoadedModel
from dsa_core.zeroshot.harness import _SessionLM, task_config
from dsa_core.zeroshot.tasks import HOLDOUT_SEED, TASKS, fitness_split, held_count, holdout_rows, resolve_sources

DEFAULT_ROWS = 200  # per task: a few seconds a candidate for the six tasks on a GPU
# Lower is better. Accuracy on a few hundred rows moves in steps of 1/rows and ties most neighbouring candidates;
# the cross-entropy of the choice distribution changes with every log-likelihood, ranks candidates between those
# steps, and is minimal exactly where the correct choice wins by far. Like accuracy (and unlike perplexity) it asks
# only which choice the model prefers, not how well it predicts text.
SCORING = ("mean over tasks of the mean over rows of -log softmax(scores)[correct choice], a choice's score being "
           "its summed log-likelihood divided by its length in characters where lm-eval reports acc_norm for the "
           "task (as acc_norm ranks choices), else its summed log-likelihood (as acc does)")


@dataclass
class _Task:
    name: str
    first: int  # the task's first request in the fitness's list
    docs: list[tuple[int, int, int, np.ndarray | None]]  # per row: first request, choices, correct one, lengths


class ZeroShotFitness:
    """Callable like FixedWindowsPerplexity: the zero-shot fitness of the model as it is now (lower is better)."""

    def __init__(self, lm: LoadedModel, tasks, rows: int = DEFAULT_ROWS, data_root=None, source: str = "auto",
                 batch_size: int | None = None):
        if rows < 1:
            raise ConfigError("The zero-shot fitness needs at least one row per task (--zeroshot-rows).")
        sources = resolve_sources(tasks, data_root, source)
        self.model = _SessionLM(lm, batch_size, lambda phase, done, total: None, "zero-shot fitness")
        manager = TaskManager(include_defaults=False)
        self.requests: list = []
        self.tasks: list[_Task] = []
        self.protocol: dict = {"scoring": SCORING, "seed": HOLDOUT_SEED, "rows_per_task": rows,
                               "missing": dict(sources.missing), "tasks": {}}
        start = time.perf_counter()
        for name, files in sources.files.items():
            spec = TASKS[name]
            cfg, where = task_config(spec, None if sources.hub else files)
            split, held_out = fitness_split(spec, sources.hub)
            if split != spec.split:
                cfg["test_split"] = None  # lm-eval scores test when a task has one: the validation split instead
            task = manager.load([cfg])["tasks"][name]
            total = len(task.eval_docs)
            count = held_count(total, rows) if held_out else rows
            if count < 1:
                raise ConfigError(f"{spec.title} has {total} row(s): too few to hold any out for a zero-shot fitness.")
            chosen = holdout_rows(total, count)
            task.build_all_requests(samples=chosen, rank=0, world_size=1)
            self.tasks.append(self._add(task, name))
            self.protocol["tasks"][name] = {
                "split": split, "source": where, "n_total": total, "rows": chosen,
                "held_out": (f"{len(chosen)} of the {total} rows of the {split} split that final tables report"
                             + (f" (at most half of them, not {rows})" if count < rows else "")
                             + f"; leave them out there (exclude={rows})") if held_out else
                            f"{len(chosen)} rows of the {split} split (final tables report {spec.split})"}
        self.protocol["seconds_to_build"] = time.perf_counter() - start

    def _add(self, task, name: str) -> _Task:
        """Tokenise the task's requests once (as HFLM.loglikelihood does) and note each row's choices and answer."""
        norm = "acc_norm" in [m["metric"] for m in task.config.metric_list]
        by_doc: dict[int, list] = {}
        for inst in task.instances:
            by_doc.setdefault(inst.doc_id, []).append(inst)
        out = _Task(name, len(self.requests), [])
        for doc_id in sorted(by_doc):
            insts = sorted(by_doc[doc_id], key=lambda i: i.idx)
            doc = insts[0].doc
            choices = task.doc_to_choice(doc)
            gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
            gold = choices.index(gold) if isinstance(gold, str) else int(gold)
            lengths = np.array([float(len(c)) for c in choices]) if norm else None
            out.docs.append((len(self.requests), len(insts), gold, lengths))
            for inst in insts:
                context, continuation = inst.args
                self.requests.append(((context, continuation), *self.model._encode_pair(context, continuation)))
        return out

    def scores(self) -> dict[str, float]:
        """Per task: the mean cross-entropy of its rows' choice distributions (see SCORING)."""
        lls = np.array([ll for ll, _ in self.model._loglikelihood_tokens(self.requests, disable_tqdm=True)])
        out = {}
        for task in self.tasks:
            losses = []
            for first, count, gold, lengths in task.docs:
                s = lls[first:first + count] / (lengths if lengths is not None else 1.0)
                m = s.max()
                losses.append(m + math.log(np.exp(s - m).sum()) - s[gold])
            out[task.name] = float(np.mean(losses))
        return out

    def __call__(self) -> float:
        return float(np.mean(list(self.scores().values())))
