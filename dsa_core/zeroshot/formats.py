"""Readers of the zero-shot tasks' original release files, each returning rows in the schema that
lm-evaluation-harness's task of that name reads from the Hugging Face hub.

lm-eval's prompts (its task YAMLs) then apply unchanged, so a local file and the hub give the same
contexts and choices. Which file a release calls what: PIQA `valid.jsonl` + `valid-labels.lst`; BoolQ
`dev.jsonl` (Google's release) or `val.jsonl` (SuperGLUE); RTE `val.jsonl` (SuperGLUE) or `dev.tsv`
(GLUE); HellaSwag `hellaswag_val.jsonl`; WinoGrande `dev.jsonl`; ARC `ARC-Easy-Test.jsonl` /
`ARC-Challenge-Test.jsonl`; OpenBookQA `Main/test.jsonl`. Parsing only: no model, no lm-eval here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dsa_core.errors import DataError

RTE_LABELS = {"entailment": 0, "not_entailment": 1}  # GLUE's ids, which lm-eval's choices ["True", "False"] follow


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {number}, is not valid JSON: {e.msg}.") from None
    if not rows:
        raise DataError(f"{path} holds no examples.")
    return rows


def _field(row: dict, key: str, path: Path):
    try:
        return row[key]
    except KeyError:
        raise DataError(f"{path} lacks the field '{key}'; is it the dataset's original release file?") from None


def piqa(jsonl: Path, labels: Path) -> list[dict]:
    """PIQA keeps its labels apart, one 0/1 per line, aligned with the jsonl."""
    rows = read_jsonl(jsonl)
    ids = [line.strip() for line in labels.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if len(ids) != len(rows):
        raise DataError(f"{labels} has {len(ids)} labels for {len(rows)} examples in {jsonl}.")
    return [{"goal": _field(r, "goal", jsonl), "sol1": _field(r, "sol1", jsonl), "sol2": _field(r, "sol2", jsonl),
             "label": int(label)} for r, label in zip(rows, ids)]


def boolq(path: Path) -> list[dict]:
    """SuperGLUE's `val.jsonl` is what lm-eval reads (`super_glue/boolq`): `passage` is "<title> -- <passage>",
    `label` a boolean (true → 1, choice "yes"). Google's `dev.jsonl` keeps the title apart and answers in `answer`:
    joined the same way, it gives the same 3,270 rows."""
    out = []
    for r in read_jsonl(path):
        if "label" in r:
            answer, passage = r["label"], _field(r, "passage", path)
        else:
            answer = _field(r, "answer", path)
            passage = f"{_field(r, 'title', path)} -- {_field(r, 'passage', path)}"
        if not isinstance(answer, bool):
            raise DataError(f"{path} has the answer {answer!r}; BoolQ's are JSON true and false.")
        out.append({"question": _field(r, "question", path), "passage": passage, "label": int(answer)})
    return out


def rte(path: Path) -> list[dict]:
    """lm-eval's task `rte` is GLUE's (`glue/rte`: sentence1, sentence2, label 0 = entailment, 1 = not_entailment).
    SuperGLUE's `val.jsonl` holds the same 277 pairs as premise, hypothesis and the label as a word; GLUE's `dev.tsv`
    as sentence1, sentence2 and the word. Both are mapped to GLUE's fields and ids, so `rte`'s prompt applies."""
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            # GLUE's files are unquoted: a quote character is part of the sentence.
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        pairs = [(_field(r, "sentence1", path), _field(r, "sentence2", path), _field(r, "label", path)) for r in rows]
    else:
        pairs = [(_field(r, "premise", path), _field(r, "hypothesis", path), _field(r, "label", path))
                 for r in read_jsonl(path)]
    if not pairs:
        raise DataError(f"{path} holds no examples.")
    out = []
    for s1, s2, label in pairs:
        if label not in RTE_LABELS:
            raise DataError(f"{path} has the label '{label}'; RTE's are entailment and not_entailment.")
        out.append({"sentence1": s1, "sentence2": s2, "label": RTE_LABELS[label]})
    return out


def hellaswag(path: Path) -> list[dict]:
    return [{"activity_label": _field(r, "activity_label", path), "ctx_a": _field(r, "ctx_a", path),
             "ctx_b": _field(r, "ctx_b", path), "endings": list(_field(r, "endings", path)),
             "label": str(_field(r, "label", path))} for r in read_jsonl(path)]


def winogrande(path: Path) -> list[dict]:
    return [{"sentence": _field(r, "sentence", path), "option1": _field(r, "option1", path),
             "option2": _field(r, "option2", path), "answer": str(_field(r, "answer", path))}
            for r in read_jsonl(path)]


def _choices(r: dict, path: Path) -> dict:
    question = _field(r, "question", path)
    if not isinstance(question, dict):
        raise DataError(f"{path} is not in the original release format (question should hold stem and choices).")
    choices = _field(question, "choices", path)
    return {"stem": _field(question, "stem", path), "text": [c["text"] for c in choices],
            "label": [c["label"] for c in choices]}


def arc(path: Path) -> list[dict]:
    """The release nests stem and choices under `question`; the hub flattens them."""
    out = []
    for r in read_jsonl(path):
        q = _choices(r, path)
        out.append({"id": r.get("id", ""), "question": q["stem"], "choices": {"text": q["text"], "label": q["label"]},
                    "answerKey": _field(r, "answerKey", path)})
    return out


def openbookqa(path: Path) -> list[dict]:
    out = []
    for r in read_jsonl(path):
        q = _choices(r, path)
        out.append({"id": r.get("id", ""), "question_stem": q["stem"],
                    "choices": {"text": q["text"], "label": q["label"]}, "answerKey": _field(r, "answerKey", path)})
    return out
