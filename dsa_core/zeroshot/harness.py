"""Zero-shot accuracy through lm-evaluation-harness, on the model object already in memory (pruned or not).

We drive lm-eval rather than re-implement it: its task YAMLs build each context and choice, its HFLM scores
them (requests sorted by length, padded batches, one forward per batch, summed log-probabilities of each
choice's tokens), and its metrics give acc (argmax of the sum) and acc_norm (argmax of the sum divided by the
choice's length in characters: lm-eval's own definition, which its documentation calls byte-length
normalisation; the two agree on ASCII text). What we add: tasks read from the datasets' original release
files when the hub is out of reach (lm-eval's YAML with our reader as its `custom_dataset`), progress through
a callback, and a result that carries its protocol. This module never changes weights.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import datasets
import lm_eval
import torch
from lm_eval import evaluator
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml  # the loader TaskManager uses: resolves `include` and `!function`

from dsa_core.errors import ConfigError
from dsa_core.models import LoadedModel, free_memory
from dsa_core.zeroshot.tasks import (
    HOLDOUT_SEED,
    TASKS,
    TaskSpec,
    file_sha256,
    fitness_split,
    held_count,
    holdout_rows,
    origin,
    read_local,
    resolve_sources,
)

# lm-eval warns about command-line flags and launch modes that this in-process use does not have.
logging.getLogger("lm_eval").setLevel(logging.ERROR)

SCORING = ("zero-shot; log-likelihood of each choice given lm-eval's prompt for the task; acc = argmax of the "
           "summed log-likelihood, acc_norm = argmax of it divided by the choice's length in characters")
Progress = Callable[[str, int, int], None]
# lm-eval holds a batch's logits and their float32 log-softmax at once (bf16 + fp32 + fp32 for the model's own
# upcast, per position and vocabulary entry): 64 rows of BoolQ on Gemma's 262,144-token vocabulary asked for 79 GiB.
LOGIT_BYTES = 10
LOGITS_MEMORY_SHARE = 0.25  # of the device's free memory one batch's logits may take (jobs share a GPU)


class _SessionLM(HFLM):
    """lm-eval's HFLM with its progress sent to our callback instead of a tqdm bar. Its batch is `batch_size`, by
    default 64 rows on a GPU and 8 on a CPU, fewer where they would not fit (rows_that_fit)."""

    def __init__(self, lm: LoadedModel, batch_size: int | None, progress: Progress, phase: str):
        # float32 log-softmax: a bf16 one rounds log-probabilities of long choices enough to flip close calls.
        super().__init__(pretrained=lm.model, tokenizer=lm.tokenizer,
                         batch_size=batch_size or (64 if lm.device.type == "cuda" else 8),
                         softmax_dtype=torch.float32)
        self.progress, self.phase = progress, phase
        self._done = self._total = 0

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        self._done, self._total = 0, len(requests)
        configured = self.batch_size_per_gpu
        self.batch_size_per_gpu = self.rows_that_fit(requests)
        try:
            out = super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
        finally:
            self.batch_size_per_gpu = configured
        self.progress(self.phase, self._total, self._total)
        return out

    def rows_that_fit(self, requests) -> int:
        """The configured batch, fewer where the longest request's logits would not fit in LOGITS_MEMORY_SHARE of
        the free memory (lm-eval pads every row of a batch to its longest, and sorts the longest first)."""
        if not requests or self.device.type != "cuda":
            return self.batch_size_per_gpu
        longest = min(max(len(context) + len(continuation) for _, context, continuation in requests),
                      self.max_length)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        budget = LOGITS_MEMORY_SHARE * free_memory(self.device)
        return max(1, min(self.batch_size_per_gpu, int(budget // (longest * vocab * LOGIT_BYTES))))

    def _model_call(self, inps, attn_mask=None, labels=None):
        logits = super()._model_call(inps, attn_mask, labels)
        # Rows, not requests: a row can serve several one-token choices, so the count may fall short until the end.
        self._done = min(self._done + inps.shape[0], self._total)
        self.progress(self.phase, self._done, self._total)
        return logits


def _local_dataset(spec: TaskSpec, files: tuple[Path, ...], **_lm_eval_metadata) -> datasets.DatasetDict:
    return datasets.DatasetDict({spec.split: datasets.Dataset.from_list(read_local(spec, files))})


def _upstream_yaml(spec: TaskSpec) -> Path:
    return Path(lm_eval.tasks.__file__).parent / spec.upstream


def task_config(spec: TaskSpec, files: tuple[Path, ...] | None) -> tuple[dict, str]:
    """lm-eval's config for the task, its data from the hub (files None) or from the local release files; and its
    origin."""
    cfg = load_yaml(_upstream_yaml(spec), resolve_func=True)
    for key in ("tag", "group"):
        cfg.pop(key, None)
    cfg["num_fewshot"] = 0
    if files is None:
        return cfg, f"hub:{cfg['dataset_path']}/{cfg.get('dataset_name') or ''}/{spec.split}".replace("//", "/")
    cfg.update(
        custom_dataset=functools.partial(_local_dataset, spec, files),
        dataset_kwargs=None,
        training_split=None,
        validation_split=spec.split if spec.split == "validation" else None,
        test_split=spec.split if spec.split == "test" else None,
    )
    return cfg, origin(files)


def evaluate_tasks(
    lm: LoadedModel,
    tasks: str | Iterable[str],
    limit: int | None = None,
    data_root: str | Path | None = None,
    source: str = "auto",
    batch_size: int | None = None,
    progress: Progress | None = None,
    keep_samples: bool = False,
    exclude: int = 0,
) -> dict:
    """Zero-shot accuracy of the model as it is now, task by task.

    Returns {"tasks": {name: {acc, acc_norm (None where lm-eval defines none), acc_stderr, acc_norm_stderr, n,
    n_total, split, source}}, "mean_acc" (over the tasks scored), "mean_over" (their names), "missing" ({task:
    reason} for tasks asked but not available here, see tasks.resolve_sources), "protocol" (with each local file's
    full SHA-256), "seconds"}; with keep_samples, each task also lists its scored examples as lm-eval logs them
    (doc, target, (context, continuation) requests, log-likelihoods). With `exclude` > 0, each task whose zero-shot
    fitness holds rows out of this split (tasks.fitness_split) is scored without the rows a fitness of `exclude` rows
    per task measures (tasks.holdout_rows), its `excluded` says how many, and the protocol says so."""
    if limit is not None and limit < 1:
        raise ConfigError("The number of examples per task must be at least 1.")
    sources = resolve_sources(tasks, data_root, source)
    # All files read and checked before any scoring.
    configs = {n: task_config(TASKS[n], None if sources.hub else f) for n, f in sources.files.items()}
    progress = progress or (lambda phase, done, total: None)
    model = _SessionLM(lm, batch_size, progress, "zero-shot")
    manager = TaskManager(include_defaults=False)  # our configs are complete: skip indexing lm-eval's 10k YAMLs
    out: dict = {"tasks": {}}
    start = time.perf_counter()
    for name, (cfg, where) in configs.items():
        model.phase = f"zero-shot {TASKS[name].title}"
        # lm-eval's evaluate(), not simple_evaluate(): the latter also probes the environment through pip and
        # nvidia-smi subprocesses (seconds per task) and reseeds the global generators; zero-shot needs neither.
        task_dict = manager.load([cfg])
        samples, held = None, 0
        if exclude and fitness_split(TASKS[name], sources.hub)[1]:
            total = len(task_dict["tasks"][name].eval_docs)
            held_out = set(holdout_rows(total, held_count(total, exclude)))
            samples, held = {name: [i for i in range(total) if i not in held_out][:limit]}, len(held_out)
        raw = evaluator.evaluate(lm=model, task_dict=task_dict, limit=None if samples else limit, samples=samples,
                                 log_samples=keep_samples)
        out["tasks"][name] = _task_result(raw, name, where, TASKS[name].split, keep_samples)
        out["tasks"][name]["excluded"] = held
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    out["seconds"] = time.perf_counter() - start
    out["mean_acc"] = sum(t["acc"] for t in out["tasks"].values()) / len(out["tasks"])
    out["mean_over"] = list(out["tasks"])
    out["missing"] = dict(sources.missing)
    out["protocol"] = {
        "harness": f"lm-evaluation-harness {lm_eval.__version__}",
        "num_fewshot": 0,
        "limit": limit,
        "scoring": SCORING,
        "softmax_dtype": "float32",
        "batch_size": model.batch_size_per_gpu,
        "source": "hub" if sources.hub else f"local:{sources.root}",
        "data": {n: ({"hub": configs[n][1]} if sources.hub else
                     {"files": [{"path": str(p), "sha256": file_sha256(p)} for p in files]})
                 for n, files in sources.files.items()},
        "missing": dict(sources.missing),
        "mean": mean_note(out),
    }
    if exclude:
        out["protocol"]["excluded"] = (f"the {exclude} rows per task a zero-shot search fitness measures (seed "
                                       f"{HOLDOUT_SEED}, dsa_core.zeroshot.tasks.holdout_rows) are left out of "
                                       + (", ".join(n for n, t in out["tasks"].items() if t["excluded"]) or "none"))
    return out


def mean_note(result: dict) -> str:
    """How mean_acc was formed, naming any task it lacks."""
    note = f"mean_acc is the plain mean of acc over {len(result['mean_over'])} task(s); acc_norm is never mixed in"
    if result.get("missing"):
        note += "; missing: " + ", ".join(f"{TASKS[n].title} ({why})" for n, why in result["missing"].items())
    return note


def _number(value) -> float | None:
    """lm-eval's value as a finite float, else None: it writes "N/A" or NaN for a stderr of one example, and
    the history stores JSON, which holds neither."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _task_result(raw: dict, name: str, where: str, split: str, keep_samples: bool) -> dict:
    metrics = raw["results"][name]
    counts = raw["n-samples"][name]
    result = {
        "acc": float(metrics["acc,none"]),
        "acc_stderr": _number(metrics.get("acc_stderr,none")),
        "acc_norm": _number(metrics.get("acc_norm,none")),
        "acc_norm_stderr": _number(metrics.get("acc_norm_stderr,none")),
        "n": int(counts["effective"]),
        "n_total": int(counts["original"]),
        "split": split,
        "source": where,
    }
    if keep_samples:
        result["samples"] = [
            {"doc_id": s["doc_id"], "doc": s["doc"], "target": s["target"],
             "requests": [list(a) for a in s["arguments"]], "loglikelihoods": [r[0] for r in s["filtered_resps"]],
             "acc": s["acc"], "acc_norm": s.get("acc_norm")}
            for s in raw["samples"][name]
        ]
    return result
