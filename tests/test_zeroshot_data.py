"""The zero-shot tasks on the real evaluation files shipped in ../shared/data (each with a PROVENANCE.md): every
row of each file through lm-eval's own task (its prompt, choices and target), checked against the fields the
datasets document, read here straight from the JSON; the file hashes in every result's protocol; HellaSwag,
which could not be shipped, reported missing rather than averaged away. Unit tests use lm-eval's task objects or
the tiny random model; one integration test scores the first rows of each task with SmolLM2."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from dsa_core import data
from dsa_core.errors import DataError
from dsa_core.zeroshot import PAPER_TASKS, TASKS
from dsa_core.zeroshot.tasks import file_sha256, resolve_sources

ROOT = data.data_dir()
SHIPPED = ("boolq", "rte", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "piqa")
ROWS = {"boolq": 3270, "rte": 277, "winogrande": 1267, "arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500,
        "piqa": 1838}

pytestmark = pytest.mark.skipif(not (ROOT / "rte" / "val.jsonl").is_file(), reason=f"no shipped task data in {ROOT}")


def raw(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sources():
    return resolve_sources("paper,piqa", None, "local")


@pytest.fixture(scope="module")
def lm_eval_task(sources):
    """lm-eval's task object for a shipped task, configured as the harness configures it, and its documents."""
    from lm_eval.tasks import TaskManager

    from dsa_core.zeroshot.harness import task_config

    manager = TaskManager(include_defaults=False)

    def load(name: str):
        cfg, _ = task_config(TASKS[name], sources.files[name])
        task = manager.load([cfg])["tasks"][name]
        return task, list(task.eval_docs)

    return load


def prompts(task, docs) -> list[tuple]:
    return [(task.doc_to_text(d), task.doc_to_choice(d), task.doc_to_target(d)) for d in docs]


def test_defaults_to_the_shipped_files_offline_with_hellaswag_missing(sources):
    assert not sources.hub and sources.root == ROOT  # conftest sets HF_HUB_OFFLINE; auto falls back to the files
    assert resolve_sources("paper,piqa").files == sources.files
    assert set(sources.files) == set(SHIPPED) and list(sources.missing) == ["hellaswag"]
    for name, files in sources.files.items():
        assert all(ROOT / name in f.parents for f in files), name
    with pytest.raises(DataError, match="HellaSwag"):
        resolve_sources("hellaswag,piqa", None, "local")  # asked for by name, not within the papers' seven: refused


def test_shipped_files_are_the_ones_their_provenance_names(sources):
    for name, files in sources.files.items():
        documented = set(re.findall(r"[0-9a-f]{64}", (ROOT / name / "PROVENANCE.md").read_text()))
        for f in files:
            assert file_sha256(f) in documented, f
        assert len(TASKS[name].reader(*files)) == ROWS[name]


def test_boolq_label_true_is_yes(sources, lm_eval_task):
    task, docs = lm_eval_task("boolq")
    assert sources.files["boolq"][0].name == "val.jsonl"  # SuperGLUE's form, the one lm-eval reads
    rows = raw(sources.files["boolq"][0])
    for (text, choices, target), r in zip(prompts(task, docs), rows, strict=True):
        assert text == f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:"
        assert choices == ["no", "yes"] and target == (1 if r["label"] is True else 0)
    assert rows[0]["label"] is False and prompts(task, docs[:1])[0][2] == 0
    assert sum(d["label"] for d in docs) == 2033  # PROVENANCE: 2,033 true, 1,237 false
    # Google's own release of the split, title apart, reads as the same rows.
    assert TASKS["boolq"].reader(ROOT / "boolq" / "dev.jsonl") == TASKS["boolq"].reader(sources.files["boolq"][0])


def test_rte_superglue_file_through_lm_eval_s_glue_task(sources, lm_eval_task):
    task, docs = lm_eval_task("rte")
    assert task.config.dataset_path == "nyu-mll/glue" and task.config.dataset_name == "rte"  # lm-eval's `rte`
    rows = raw(sources.files["rte"][0])
    assert set(rows[0]) == {"premise", "hypothesis", "label", "idx"}
    gold = {"entailment": 0, "not_entailment": 1}  # GLUE's ids: choice "True" is entailment
    for (text, choices, target), r in zip(prompts(task, docs), rows, strict=True):
        assert text == f"{r['premise']}\nQuestion: {r['hypothesis']} True or False?\nAnswer:"
        assert choices == ["True", "False"] and target == gold[r["label"]]
    assert rows[0]["label"] == "not_entailment" and docs[0]["label"] == 1
    assert [d["label"] for d in docs].count(0) == 146  # PROVENANCE: 146 entailment, 131 not


def test_winogrande_splits_the_sentence_at_its_blank(sources, lm_eval_task):
    task, docs = lm_eval_task("winogrande")
    rows = raw(sources.files["winogrande"][0])
    labels = (ROOT / "winogrande" / "dev-labels.lst").read_text().split()
    for (gold, contexts, continuation), r, label in zip(prompts(task, docs), rows, labels, strict=True):
        before, after = r["sentence"].split("_")  # exactly one blank
        assert contexts == [before + r["option1"], before + r["option2"]]
        assert continuation == after.strip() and gold == int(r["answer"]) - 1 and r["answer"] == label
    first = prompts(task, docs[:1])[0]
    assert first == (1, ["Sarah was a much better surgeon than Maria so Sarah",
                         "Sarah was a much better surgeon than Maria so Maria"], "always got the easier cases.")


@pytest.mark.parametrize("name,sizes", [("arc_easy", {3: 7, 5: 4}), ("arc_challenge", {3: 4, 5: 3})])
def test_arc_numeric_labels_and_three_or_five_choices(sources, lm_eval_task, name, sizes):
    task, docs = lm_eval_task(name)
    rows = raw(sources.files[name][0])
    numeric = 0
    for (text, choices, target), r in zip(prompts(task, docs), rows, strict=True):
        labels = [c["label"] for c in r["question"]["choices"]]
        assert text == f"Question: {r['question']['stem']}\nAnswer:"
        assert choices == [c["text"] for c in r["question"]["choices"]]
        assert target == labels.index(r["answerKey"])
        if labels[0] == "1":
            numeric += 1
            assert labels[: len(choices)] == [str(i) for i in range(1, len(choices) + 1)]
            assert target == int(r["answerKey"]) - 1
    assert numeric > 0
    counts = {k: sum(len(d["choices"]["text"]) == k for d in docs) for k in (3, 5)}
    assert counts == sizes  # PROVENANCE's counts of 3- and 5-choice questions
    if name == "arc_challenge":
        assert docs[0]["id"] == "Mercury_7175875" and prompts(task, docs[:1])[0][2] == 2  # answer C
        three = next(i for i, r in enumerate(rows) if [c["label"] for c in r["question"]["choices"]] == ["1", "2", "3"])
        assert len(prompts(task, [docs[three]])[0][1]) == 3


def test_openbookqa_reads_question_stem(sources, lm_eval_task):
    task, docs = lm_eval_task("openbookqa")
    rows = raw(sources.files["openbookqa"][0])
    for (text, choices, target), r in zip(prompts(task, docs), rows, strict=True):
        assert text == r["question"]["stem"] and choices == [c["text"] for c in r["question"]["choices"]]
        assert target == "ABCD".index(r["answerKey"].strip())
    assert docs[0]["id"] == "8-343" and prompts(task, docs[:1])[0][2] == 1  # answer B


def test_piqa_labels_come_from_their_own_file(sources, lm_eval_task):
    task, docs = lm_eval_task("piqa")
    jsonl, labels = sources.files["piqa"]
    for (text, choices, target), r, label in zip(prompts(task, docs), raw(jsonl), labels.read_text().split(),
                                                 strict=True):
        assert text == f"Question: {r['goal']}\nAnswer:" and choices == [r["sol1"], r["sol2"]]
        assert target == int(label)


def test_every_result_names_its_files_hashes_and_what_is_missing(tiny, sources):
    from dsa_core.zeroshot.harness import evaluate_tasks
    from dsa_core.zeroshot.report import format_table, paper_table

    result = evaluate_tasks(tiny, "paper", limit=2, source="local")
    assert result["mean_over"] == [n for n in PAPER_TASKS if n != "hellaswag"]
    assert list(result["missing"]) == ["hellaswag"] == list(result["protocol"]["missing"])
    assert result["mean_acc"] == pytest.approx(np.mean([t["acc"] for t in result["tasks"].values()]))
    assert "6 task(s)" in result["protocol"]["mean"] and "HellaSwag" in result["protocol"]["mean"]
    for name, files in result["protocol"]["data"].items():
        assert files == {"files": [{"path": str(f), "sha256": file_sha256(f)} for f in sources.files[name]]}
        assert result["tasks"][name]["source"].startswith(f"local:{ROOT}")
    text = format_table({"dense": result}).splitlines()
    assert text[-2].split()[:2] == ["HellaSwag", "missing"]
    assert text[-1].startswith("mean of 6 (HellaSwag missing)")
    header, row = paper_table({"dense": result}).splitlines()
    assert header.split()[:4] == ["allocation", "BoolQ", "RTE", "HellaSwag"] and row.split()[3] == "missing"


@pytest.mark.integration
def test_smollm2_first_rows_of_each_shipped_task(smollm2):
    from dsa_core.zeroshot.harness import evaluate_tasks
    from tests.test_zeroshot import check_against_direct

    result = evaluate_tasks(smollm2, "paper", limit=2, source="local", keep_samples=True)
    assert set(result["tasks"]) == set(PAPER_TASKS) - {"hellaswag"} and "hellaswag" in result["missing"]
    for name, task in result["tasks"].items():
        assert (task["n"], task["n_total"]) == (2, ROWS[name])
        check_against_direct(smollm2, name, task)
