"""The zero-shot tasks we know: their lm-eval task, the split it scores, and where their original release
files lie in a local data folder.

A data folder holds one folder per task named as below (case ignored), each as its release unpacks:
`piqa/valid.jsonl` + `piqa/valid-labels.lst`, `boolq/val.jsonl`, `rte/dev.tsv`,
`hellaswag/hellaswag_val.jsonl`, `winogrande/dev.jsonl`, `arc/ARC-V1-Feb2018-2/ARC-Easy/ARC-Easy-Test.jsonl`,
`openbookqa/OpenBookQA-V1-Sep2018/Data/Main/test.jsonl`; files are found at any depth inside the task's
folder. Names and paths only: nothing here imports lm-eval or touches a model.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsa_core import data
from dsa_core.errors import ConfigError, DataError
from dsa_core.zeroshot import formats


@dataclass(frozen=True)
class TaskSpec:
    """One task: lm-eval's YAML (relative to lm_eval/tasks), the split lm-eval scores, the folders that may
    hold it, the release's file layouts (each a tuple of file names read together), their reader, and the
    accuracy of a random guess (one over the number of choices; ARC's few 3- and 5-choice questions aside)."""

    name: str
    title: str
    upstream: str
    split: str
    folders: tuple[str, ...]
    layouts: tuple[tuple[str, ...], ...]
    reader: Callable[..., list[dict]]
    chance: float


_ARC_FOLDERS = ("arc", "ai2_arc", "arc-v1-feb2018-2")
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("boolq", "BoolQ", "super_glue/boolq/default.yaml", "validation", ("boolq",),
             (("val.jsonl",), ("dev.jsonl",)), formats.boolq, 0.5),
    TaskSpec("rte", "RTE", "glue/rte/default.yaml", "validation", ("rte",),
             (("val.jsonl",), ("dev.tsv",)), formats.rte, 0.5),
    TaskSpec("hellaswag", "HellaSwag", "hellaswag/hellaswag.yaml", "validation", ("hellaswag",),
             (("hellaswag_val.jsonl",),), formats.hellaswag, 0.25),
    TaskSpec("winogrande", "WinoGrande", "winogrande/default.yaml", "validation", ("winogrande", "winogrande_1.1"),
             (("dev.jsonl",),), formats.winogrande, 0.5),
    TaskSpec("arc_easy", "ARC-e", "arc/arc_easy.yaml", "test", _ARC_FOLDERS + ("arc-easy", "arc_easy"),
             (("ARC-Easy-Test.jsonl",),), formats.arc, 0.25),
    TaskSpec("arc_challenge", "ARC-c", "arc/arc_challenge.yaml", "test",
             _ARC_FOLDERS + ("arc-challenge", "arc_challenge"), (("ARC-Challenge-Test.jsonl",),), formats.arc, 0.25),
    TaskSpec("openbookqa", "OBQA", "openbookqa/openbookqa.yaml", "test", ("openbookqa", "openbookqa-v1-sep2018"),
             (("test.jsonl",),), formats.openbookqa, 0.25),
    TaskSpec("piqa", "PIQA", "piqa/piqa.yaml", "validation", ("piqa",),
             (("valid.jsonl", "valid-labels.lst"),), formats.piqa, 0.5),
)}
# The seven tasks whose mean accuracy the pruning papers (Wanda, OWL, DSA) report.
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
_ALIASES = {"arc_e": "arc_easy", "arc-e": "arc_easy", "arc_c": "arc_challenge", "arc-c": "arc_challenge",
            "obqa": "openbookqa"}


def parse_tasks(tasks: str | Iterable[str]) -> tuple[str, ...]:
    """Task names from "boolq,rte,..." or a sequence; "paper" stands for the papers' seven. Order kept, repeats
    dropped; an unknown name is a ConfigError that lists the known ones."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names: list[str] = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        expanded = PAPER_TASKS if item == "paper" else (_ALIASES.get(item, item),)
        for name in expanded:
            if name not in TASKS:
                raise ConfigError(f"Unknown zero-shot task '{item}'; choose from {', '.join(TASKS)} or 'paper'.")
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError("No zero-shot task was named; give e.g. --tasks piqa,boolq.")
    return tuple(names)


def _task_folders(spec: TaskSpec, root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in spec.folders)


def find_files(spec: TaskSpec, root: Path) -> tuple[Path, ...] | None:
    """The files of the first layout found in the task's folder under root (shallowest match), or None."""
    for folder in _task_folders(spec, root):
        for layout in spec.layouts:
            found = []
            for name in layout:
                matches = sorted(folder.rglob(name), key=lambda p: (len(p.parts), str(p)))
                if not matches:
                    break
                found.append(matches[0])
            else:
                return tuple(found)
    return None


def local_files(spec: TaskSpec, root: Path) -> tuple[Path, ...]:
    files = find_files(spec, root)
    if files is None:
        wanted = " or ".join(" + ".join(layout) for layout in spec.layouts)
        raise DataError(f"No local copy of {spec.title} under {root}: put its release ({wanted}) in a folder named "
                        f"'{spec.folders[0]}' there, or connect to the Hugging Face hub.")
    return files


def read_local(spec: TaskSpec, files: tuple[Path, ...]) -> list[dict]:
    return spec.reader(*files)


@functools.lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_sha256(path: Path) -> str:
    """The file's full SHA-256, computed once per version of the file (path, size, modification time)."""
    st = path.stat()
    return _sha256(path.resolve(), st.st_size, st.st_mtime_ns)


def origin(files: tuple[Path, ...]) -> str:
    """Provenance in data.py's form: "local:<path>#sha256:<12 hex>", one per file, joined by "+"."""
    return "+".join(f"local:{p}#sha256:{file_sha256(p)[:12]}" for p in files)


def use_hub(source: str, data_root: str | Path | None) -> bool:
    """Where the tasks come from: a data folder named by the user means its files; otherwise `source` decides,
    as for the perplexity texts (auto: the hub when reachable, else the shipped data folder)."""
    if source not in data.SOURCES:
        raise ConfigError(f"Unknown data source '{source}'; choose one of {', '.join(data.SOURCES)}.")
    if data_root is not None or source == "local":
        return False
    return source == "hub" or data.hub_reachable()


@dataclass(frozen=True)
class Sources:
    """Where each task's examples come from: the hub (lm-eval's datasets by name) or local release files; and the
    tasks that cannot be scored here, each with the reason, which every result and table must show."""

    hub: bool
    root: Path
    files: dict[str, tuple[Path, ...]]
    missing: dict[str, str]


def resolve_sources(tasks: str | Iterable[str], data_root: str | Path | None = None,
                    source: str = "auto") -> Sources:
    """Each task's data, checked before a model is loaded for nothing. Unknown tasks and a missing data folder are
    refused. A task without a local copy (when the hub is not used) is refused too, except within the papers' seven
    asked as a whole: there it is skipped and named in `missing` (HellaSwag, where its file could not be shipped),
    so the papers' table is still made and says which column it lacks."""
    names = parse_tasks(tasks)
    if data_root is not None and not Path(data_root).expanduser().is_dir():
        raise DataError(f"The zero-shot data folder '{data_root}' does not exist.")
    root = Path(data_root).expanduser() if data_root is not None else data.data_dir()
    if use_hub(source, data_root):
        return Sources(True, root, {n: () for n in names}, {})
    tolerated = set(PAPER_TASKS) <= set(names)
    files: dict[str, tuple[Path, ...]] = {}
    missing: dict[str, str] = {}
    for name in names:
        try:
            files[name] = local_files(TASKS[name], root)
        except DataError:
            if not (tolerated and name in PAPER_TASKS):
                raise
            missing[name] = f"no local copy under {root} and the Hugging Face hub is not used"
    if not files:
        raise DataError(f"None of the zero-shot tasks has a local copy under {root}.")
    return Sources(False, root, files, missing)


def check_sources(tasks: str | Iterable[str], data_root: str | Path | None = None, source: str = "auto") -> dict:
    """Refuse unknown tasks and missing local files before a model is loaded for nothing; returns the tasks that
    will be reported missing (see resolve_sources), {task: reason}."""
    return resolve_sources(tasks, data_root, source).missing


def availability(data_root: str | Path | None = None, source: str = "auto") -> dict[str, str | None]:
    """For each known task: None when it can be scored here (from the hub, or its local files), else why not; for
    a form that offers the tasks before any is asked."""
    if use_hub(source, data_root):
        return dict.fromkeys(TASKS)
    root = Path(data_root).expanduser() if data_root is not None else data.data_dir()
    return {name: None if find_files(spec, root) is not None else
            f"no local copy under {root} and the Hugging Face hub is not used" for name, spec in TASKS.items()}


# A search's zero-shot fitness (dsa_core.zeroshot.fitness) scores a fixed, seeded subset of each task's rows; a final
# table can leave those rows out (harness.evaluate_tasks(exclude=...)). The seed is fixed, not the search's, so that a
# table needs only the number of rows to know which: the rows held out for n are the first n of one permutation.
HOLDOUT_SEED = 18


def held_count(total: int, rows: int) -> int:
    """How many of a reported split's `total` rows a zero-shot fitness of `rows` rows per task holds out: at most
    half, so the final table keeps the larger part (RTE has 277 rows: a fitness of 200 takes 138)."""
    return min(rows, total // 2)


def holdout_rows(total: int, rows: int) -> list[int]:
    """The first `rows` of a fixed permutation of range(total), sorted: the rows a zero-shot fitness of `rows` rows per
    task measures (those of a smaller count are among them)."""
    order = np.random.default_rng(HOLDOUT_SEED).permutation(total)
    return sorted(int(i) for i in order[: min(rows, total)])


def fitness_split(spec: TaskSpec, hub: bool) -> tuple[str, bool]:
    """The split a zero-shot fitness reads for the task, and whether its rows are held out of the split that final
    tables report (True) or are a validation split of their own (False: ARC and OpenBookQA from the hub, whose
    tables report test). Local release files are the reported split for every task, so there rows are held out."""
    if hub and spec.split == "test":
        return "validation", False
    return spec.split, True
