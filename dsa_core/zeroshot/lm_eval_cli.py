"""A cross-check of our zero-shot scores against lm-evaluation-harness's own command line, on the same data.

The harness (dsa_core/zeroshot/harness.py) drives lm-eval in process on the model object in memory. Here the
same model is saved to a folder (the dequantised weights as loaded, in their dtype, and the tokenizer) and
scored by `lm_eval run --model hf` in a subprocess, on tasks that `include` lm-eval's own YAMLs and only swap the
data for the local release files, converted to the hub's schema by our readers and written as JSON lines. Both
paths then use lm-eval's prompts, batching and metrics; the comparison checks that driving it in memory (the
model object, our progress hook, float32 log-softmax) changes nothing. This module runs a subprocess and writes
files; it never prunes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import lm_eval
import yaml

from dsa_core.errors import DataError
from dsa_core.models import LoadedModel
from dsa_core.zeroshot.tasks import TASKS, Sources, file_sha256, read_local

PREFIX = "dsa_local_"  # our tasks' names in the CLI, so that they never shadow lm-eval's
TOLERANCE = 5e-4  # "equal to the third decimal"
DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16",
               "torch.float64": "float64"}


def save_model(lm: LoadedModel, folder: Path) -> Path:
    """The model as loaded (dense, dequantised, in its dtype) and its tokenizer, as a Hugging Face folder."""
    folder.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(folder, safe_serialization=True)
    lm.tokenizer.save_pretrained(folder)
    return folder


def write_tasks(sources: Sources, folder: Path) -> dict[str, str]:
    """One YAML per task in `folder` (lm-eval's `--include_path`) reading a JSON-lines copy of its local files in
    the hub's schema; returns {our task name: the CLI's task name}."""
    if sources.hub:
        raise DataError("The lm-eval CLI check reads the local task files; run it with --data-source local.")
    folder.mkdir(parents=True, exist_ok=True)
    upstream = Path(lm_eval.tasks.__file__).parent
    names = {}
    for name, files in sources.files.items():
        spec = TASKS[name]
        rows = folder / f"{name}.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n" for r in read_local(spec, files)), encoding="utf-8")
        cfg = {
            "include": str(upstream / spec.upstream),
            "task": PREFIX + name,
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {spec.split: str(rows)}},
            "training_split": None,
            "validation_split": spec.split if spec.split == "validation" else None,
            "test_split": spec.split if spec.split == "test" else None,
            "num_fewshot": 0,
            "metadata": {"sources": {str(f): file_sha256(f) for f in files}},
        }
        (folder / f"{PREFIX}{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        names[name] = PREFIX + name
    return names


def command(model_dir: Path, task_dir: Path, tasks: Iterable[str], out_dir: Path, dtype: str, device: str,
            batch_size: int, limit: int | None = None) -> list[str]:
    """The `lm_eval run` command line: lm-eval's hf model on the saved folder, float32 log-softmax as ours."""
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype={dtype},softmax_dtype=float32",
           "--tasks", ",".join(tasks), "--include_path", str(task_dir), "--num_fewshot", "0",
           "--batch_size", str(batch_size), "--device", device, "--output_path", str(out_dir), "--log_samples"]
    return cmd + (["--limit", str(limit)] if limit is not None else [])


def run(lm: LoadedModel, sources: Sources, workdir: Path, batch_size: int, limit: int | None = None,
        log=None) -> dict[str, dict]:
    """Save the model, write the tasks, run lm-eval's CLI; {task: {acc, acc_stderr, acc_norm, acc_norm_stderr,
    n, loglikelihoods}} as it reports them (acc_norm None where the task has none; loglikelihoods: each example's
    choices', in document order)."""
    model_dir = save_model(lm, workdir / "model")
    names = write_tasks(sources, workdir / "tasks")
    out_dir = workdir / "results"
    dtype = DTYPE_NAMES.get(str(lm.dtype), "auto")
    cmd = command(model_dir, workdir / "tasks", names.values(), out_dir, dtype, str(lm.device), batch_size, limit)
    if log:
        log(" ".join(cmd))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"lm_eval exited with {done.returncode}:\n{done.stderr[-4000:]}")
    found = sorted(out_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"lm_eval wrote no results under {out_dir}:\n{done.stdout[-2000:]}")
    raw = json.loads(found[-1].read_text())
    out = {}
    for name, cli_name in names.items():
        m = raw["results"][cli_name]
        out[name] = {"acc": m["acc,none"], "acc_stderr": m.get("acc_stderr,none"),
                     "acc_norm": m.get("acc_norm,none"), "acc_norm_stderr": m.get("acc_norm_stderr,none"),
                     "n": raw["n-samples"][cli_name]["effective"], "loglikelihoods": _loglikelihoods(out_dir, cli_name)}
    return out


def _loglikelihoods(out_dir: Path, cli_name: str) -> list[list[float]]:
    found = sorted(out_dir.rglob(f"samples_{cli_name}_*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not found:
        return []
    samples = [json.loads(line) for line in found[-1].read_text(encoding="utf-8").splitlines() if line.strip()]
    return [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]


def max_loglikelihood_gap(ours: Mapping[str, dict], theirs: Mapping[str, dict]) -> float | None:
    """The largest |difference| between the two paths' log-likelihoods of one choice, where both kept them (ours:
    evaluate_tasks(..., keep_samples=True))."""
    gaps = [abs(a - b) for name, t in theirs.items() if t.get("loglikelihoods") and "samples" in ours["tasks"][name]
            for s, lls in zip(ours["tasks"][name]["samples"], t["loglikelihoods"], strict=True)
            for a, b in zip(s["loglikelihoods"], lls, strict=True)]
    return max(gaps) if gaps else None


def compare(ours: Mapping[str, dict], theirs: Mapping[str, dict]) -> tuple[list[list], bool]:
    """Rows (task, metric, ours, lm-eval's, |difference|, n ours/theirs, equal to the third decimal) and whether
    every score agrees within TOLERANCE on the same number of examples."""
    rows, ok = [], True
    for name, t in theirs.items():
        mine = ours["tasks"][name]
        for metric in ("acc", "acc_norm"):
            if t[metric] is None and mine[metric] is None:
                continue
            diff = abs(mine[metric] - t[metric]) if None not in (mine[metric], t[metric]) else float("inf")
            same = diff <= TOLERANCE and mine["n"] == t["n"]
            ok &= same
            rows.append([name, metric, mine[metric], t[metric], diff, f"{mine['n']}/{t['n']}", same])
    return rows, ok


def format_comparison(rows: list[list]) -> str:
    lines = [f"{'task':<14} {'metric':<8} {'ours':>8} {'lm_eval':>8} {'|diff|':>8} {'n':>11}  equal to 1e-3"]
    for name, metric, mine, theirs, diff, n, same in rows:
        lines.append(f"{name:<14} {metric:<8} {mine:8.4f} {theirs:8.4f} {diff:8.5f} {n:>11}  {'yes' if same else 'NO'}")
    return "\n".join(lines)
