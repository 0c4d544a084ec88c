"""What the web app reads back from each kind of experiment, as JSON Schemas: the parts of `config`, `protocol`
and `results` that its list, summaries and charts use. Keys not named here are free (the engine stores more than
the app reads back), and every key named here may be absent unless a schema says otherwise.

Imports are checked against these shapes before anything is written (storage.sharing), and `shape_problem` lets
the app set aside a stored record that does not match (one imported before imports were checked per kind). No
I/O and no UI imports here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from storage.records import KINDS, ExperimentRecord

# JSON integers can exceed what a float holds, and the charts compute in floats.
_NUMBER = {"type": "number", "minimum": -sys.float_info.max, "maximum": sys.float_info.max}
_MAYBE_NUMBER = {**_NUMBER, "type": ["number", "null"]}
_NUMBERS = {"type": "array", "items": _NUMBER}
_TEXT = {"type": "string"}
_TEXTS = {"type": "array", "items": _TEXT}
_CHANNELS = {"type": "array", "items": {**_NUMBER, "minimum": 0}}  # one block's kept widths


def _object(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required)}


def _objects(properties: dict, *required: str) -> dict:
    """An array of objects; `required` names the properties every item has."""
    return {"type": "array", "items": _object(properties, required)}


_ERROR = {"error": _TEXT}  # why a failed or cancelled run ended, for every kind

SHAPES: dict[str, dict] = {
    "evaluation": {
        "results": {**_object({
            **_ERROR, "target": _NUMBER, "dense_ppl": _MAYBE_NUMBER,
            "rows": _objects({"label": _TEXT, "ratios": _NUMBERS, "ppl": _NUMBER}, "label", "ratios", "ppl"),
        }), "dependentRequired": {"rows": ["target"]}},
    },
    "sweep": {
        "results": _object({
            **_ERROR, "targets": {"type": "array"},
            "series": _objects({"label": _TEXT, "points": _objects({"sparsity": _NUMBER, "ppl": _NUMBER},
                                                                    "sparsity", "ppl")}, "label", "points"),
        }),
    },
    "search": {
        "config": _object({"sparsity": _MAYBE_NUMBER, "fitness": _TEXT}),
        "protocol": _object({"stages": _objects({"tokens": {}}, "tokens")}),
        "results": _object({
            **_ERROR, "best": _TEXT, "best_fitness": _MAYBE_NUMBER, "best_ratios": _NUMBERS,
            "best_block_ratios": _NUMBERS, "start_ratios": _NUMBERS, "unit_labels": _TEXTS,
            "generations": _objects({"generation": _NUMBER, "best": _MAYBE_NUMBER, "mean": _MAYBE_NUMBER},
                                    "generation", "best", "mean"),
            "candidates": _objects({"generation": _NUMBER, "fitness": _MAYBE_NUMBER, "stage": {"type": "integer"},
                                    "phase": _TEXT}, "generation", "fitness"),
        }),
    },
    "structural": {
        "config": _object({"target_ratio": _MAYBE_NUMBER, "steps": _MAYBE_NUMBER, "batch_size": _MAYBE_NUMBER,
                           "seqlen": _MAYBE_NUMBER}),
        "results": {**_object({
            **_ERROR, "warnings": _TEXTS,
            "ppl": _object({"dense": _MAYBE_NUMBER, "compressed": _MAYBE_NUMBER, "baseline": _MAYBE_NUMBER}),
            "selection": _object({"widths": {"type": "array", "items": _CHANNELS}}, ("widths",)),
            # Channel counts: the heat map shows each width as a share of its structure's full width.
            "full_widths": {"type": "array", "items": {**_NUMBER, "type": "integer", "minimum": 1}},
            "structure_labels": _TEXTS,
            "params": _object({"target_ratio": _MAYBE_NUMBER, "ratio": _MAYBE_NUMBER}),
            "curve": _objects({"step": _NUMBER, "loss": _MAYBE_NUMBER, "ce": _MAYBE_NUMBER, "ratio": _MAYBE_NUMBER},
                              "step", "loss", "ce", "ratio"),
        }), "dependentRequired": {"selection": ["full_widths", "structure_labels"]}},
    },
}
assert set(SHAPES) == set(KINDS)

_VALIDATORS = {kind: Draft202012Validator(_object(shape)) for kind, shape in SHAPES.items()}


def shape_problem(record: ExperimentRecord, results_keys: Iterable[str] | None = None) -> str | None:
    """Where and why the record's config, protocol or results differ from what the app reads for its kind (one
    line), or None when they match. `results_keys` checks only those keys of the results: a list reads a few
    numbers, and a search's candidates are most of its size."""
    results = record.results if results_keys is None else {k: record.results[k] for k in results_keys
                                                           if k in record.results}
    error = best_match(_VALIDATORS[record.kind].iter_errors(
        {"config": record.config, "protocol": record.protocol, "results": results}))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) <= 200 else error.message[:200] + "…"
    return f"{where}: {message}"
