"""Sharing experiments: export one as a JSON document, import one back, build permalinks.

A document is `{"format": "sparsity-explorer/experiment", "version": 1, "experiment": {...}}`. Imports treat
the file as hostile: its size is checked before it is parsed, then NaN/Infinity, duplicate keys, deep
nesting, too many values, wrong types, extra keys, another format or a newer version are refused with an
`ImportRefused` that says which, and so are config, protocol and results that the app could not read back for the
experiment's kind (storage.shapes); only a document that passes every check reaches the database, in one
transaction. No UI, no torch; nothing here writes anything but the one new row and the export file.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from storage.errors import AlreadyImported, ImportRefused, StorageError
from storage.history import History
from storage.records import (
    ID_PATTERN,
    KINDS,
    MAX_DEPTH,
    MAX_NAME,
    MAX_NODES,
    MAX_NOTES,
    MAX_TAG,
    MAX_TAGS,
    STATUSES,
    ExperimentRecord,
    check_id,
    new_record,
    parse_time,
    utcnow,
)
from storage.shapes import SHAPES, shape_problem

FORMAT = "sparsity-explorer/experiment"
VERSION = 1
MAX_IMPORT_BYTES = 5 * 1024 * 1024
IMPORTED_TAG = "imported"

_TIME = {
    "type": "string",
    "maxLength": 40,
    "pattern": r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?$",
}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "A Sparsity Explorer experiment, shared as a file",
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "version", "experiment"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "experiment": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "kind", "name", "status", "created_at", "updated_at", "config"],
            "properties": {
                "id": {"type": "string", "pattern": ID_PATTERN.pattern},
                "kind": {"enum": list(KINDS)},
                "name": {"type": "string", "maxLength": MAX_NAME},
                "status": {"enum": list(STATUSES)},
                "created_at": _TIME,
                "updated_at": _TIME,
                "config": {"type": "object"},
                "protocol": {"type": "object"},
                "results": {"type": "object"},
                "environment": {"type": "object"},
                "tags": {
                    "type": "array",
                    "maxItems": MAX_TAGS,
                    "uniqueItems": True,
                    "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG, "pattern": r'^[^"\\]*$'},
                },
                "notes": {"type": "string", "maxLength": MAX_NOTES},
                "source": {"type": ["object", "null"]},
            },
            "allOf": [{"if": {"required": ["kind"], "properties": {"kind": {"const": kind}}},
                       "then": {"properties": shape}} for kind, shape in SHAPES.items()],
        },
    },
}
_VALIDATOR = Draft202012Validator(SCHEMA)


# ---- export -------------------------------------------------------------------------------------------------

def to_document(record: ExperimentRecord) -> dict:
    return {"format": FORMAT, "version": VERSION, "experiment": record.to_dict()}


def dumps(record: ExperimentRecord) -> str:
    """The shared document as text. Refused when it could not be imported again: too large, or values that differ
    from what its kind holds (a record set aside as unreadable)."""
    problem = shape_problem(record)
    if problem is not None:
        raise StorageError(f"Experiment {record.id} holds values this version cannot read back ({problem}), so a "
                           "file of it could not be imported; it was not exported.")
    text = json.dumps(to_document(record), indent=2, ensure_ascii=False, allow_nan=False)
    size = len(text.encode("utf-8"))
    if size > MAX_IMPORT_BYTES:
        raise StorageError(
            f"Experiment {record.id} makes a {size / 2**20:.1f} MiB file, over the {MAX_IMPORT_BYTES // 2**20} MiB "
            "that can be imported; trim its results before sharing it."
        )
    return text


def export_experiment(history: History, id: str) -> bytes:
    """The experiment with this id as a UTF-8 JSON document, ready to download."""
    return dumps(history.get(id)).encode("utf-8")


def export_to_file(history: History, id: str, path: str | os.PathLike) -> Path:
    """Write the document to `path` atomically (a reader never sees half a file); returns the path."""
    path = Path(path)
    data = export_experiment(history, id)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- import -------------------------------------------------------------------------------------------------

def _refuse_constant(name: str) -> Any:
    raise ImportRefused(f"The file contains {name}, which is not a JSON number; it was not imported.")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ImportRefused(f"The file contains the number {text[:40]}, too large to store; it was not imported.")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ImportRefused(f"The file gives the key {key[:60]!r} twice in one object; it was not imported.")
        out[key] = value
    return out


# A number or literal cut short: "0.", "1e-", "-", "tr", "nul"...
_PARTIAL_TOKEN = re.compile(r"(-|\d\.|\d[eE][-+]?|\b(t|tr|tru|f|fa|fal|fals|n|nu|nul))$")


def _runs_into_the_end(text: str, error: json.JSONDecodeError) -> bool:
    """Whether the parser failed because the text stops early (a truncated file), not on a wrong character."""
    text = text.rstrip()
    return (error.pos >= len(text) or error.msg.startswith("Unterminated string")
            or (error.pos >= len(text) - 6
                and (_PARTIAL_TOKEN.search(text) is not None or error.msg.startswith("Invalid \\uXXXX"))))


def _check_shape(value: Any) -> None:
    """Depth and value-count limits, walked without recursion."""
    stack = [(value, 1)]
    nodes = 0
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ImportRefused(f"The file holds more than {MAX_NODES} values; it was not imported.")
        if depth > MAX_DEPTH + 2:  # the envelope and the experiment object add two levels
            raise ImportRefused(f"The file is nested more than {MAX_DEPTH} levels deep; it was not imported.")
        if isinstance(v, dict):
            stack.extend((item, depth + 1) for item in v.values())
        elif isinstance(v, list):
            stack.extend((item, depth + 1) for item in v)


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        size = len(data.encode("utf-8", errors="surrogatepass"))
    elif isinstance(data, bytes | bytearray | memoryview):
        size = len(data)
    else:
        raise ImportRefused(f"Expected the file's bytes or text, not {type(data).__name__}.")
    if size > MAX_IMPORT_BYTES:
        raise ImportRefused(
            f"The file is {size / 2**20:.1f} MiB; shared experiments are at most {MAX_IMPORT_BYTES // 2**20} MiB. "
            "It was not imported."
        )
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            raise ImportRefused("The file ends in the middle of a character: it looks truncated.") from None
        raise ImportRefused("The file is not UTF-8 text, so it cannot be a shared experiment.") from None


def read_document(data: bytes | str) -> dict:
    """Check a shared document without touching any database; returns its "experiment" object."""
    text = _decode(data)
    if not text.strip():
        raise ImportRefused("The file is empty.")
    try:
        doc = json.loads(text, parse_constant=_refuse_constant, parse_float=_parse_float,
                         object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        if _runs_into_the_end(text, e):
            raise ImportRefused("The file ends in the middle of the document: it looks truncated.") from None
        raise ImportRefused(
            f"The file is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})."
        ) from None
    except RecursionError:
        raise ImportRefused(f"The file is nested more than {MAX_DEPTH} levels deep; it was not imported.") from None
    except ValueError:  # an integer with more digits than Python converts (sys.get_int_max_str_digits)
        raise ImportRefused("The file holds a number with too many digits; it was not imported.") from None
    _check_shape(doc)
    if not isinstance(doc, dict):
        raise ImportRefused(f"The file holds a JSON {type(doc).__name__}, not a shared experiment.")
    if doc.get("format") != FORMAT:
        raise ImportRefused(
            f"The file's format is {str(doc.get('format'))[:60]!r}, not {FORMAT!r}: it is not a shared "
            "Sparsity Explorer experiment."
        )
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise ImportRefused(
            f"The file was written by a newer Sparsity Explorer (format version {version}); this one reads "
            f"version {VERSION}. Upgrade to import it."
        )
    error = best_match(_VALIDATOR.iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the document"
        message = error.message if len(error.message) <= 200 else error.message[:200] + "…"
        raise ImportRefused(f"The file does not match the shared-experiment format at {where}: {message}")
    experiment = doc["experiment"]
    for key in ("created_at", "updated_at"):
        try:
            parse_time(experiment[key], key)
        except StorageError as e:
            raise ImportRefused(str(e)) from None
    return experiment


def find_copy(history: History, original_id: str) -> ExperimentRecord | None:
    """The experiment of the history that a shared one with this id already is: the same id (made here, or
    imported keeping its id), else one imported from it (its source names it; imports are tagged "imported")."""
    if history.exists(original_id):
        return history.get(original_id)
    return next((r for r in history.find(tag=IMPORTED_TAG, limit=None)
                 if (r.source or {}).get("original_id") == original_id), None)


def import_experiment(history: History, data: bytes | str, *, keep_id: bool = False,
                      origin: str | None = None, again: bool = True) -> ExperimentRecord:
    """Add a shared experiment to the history and return it as stored.

    It gets a new id unless `keep_id` is set, and then only if that id is free (else ImportRefused). Its
    `source` records the original id, the import time and `origin` (e.g. the file name), and it is tagged
    "imported". With `again=False`, an experiment already in the history (`find_copy`) is not added twice:
    AlreadyImported names it. Any refusal leaves the database unchanged."""
    experiment = read_document(data)
    original_id = experiment["id"]
    copy = None if again else find_copy(history, original_id)
    if copy is not None:
        how = "imported" if copy.source else "made here"
        raise AlreadyImported(f"This experiment is already in the history as {copy.id} ({how}); nothing was "
                              "added.", copy)
    collision = ImportRefused(
        f"An experiment with id {original_id} is already in the history; import it without keeping its id "
        "to add a copy."
    )
    if keep_id and history.exists(original_id):
        raise collision
    tags = list(experiment.get("tags", []))
    if IMPORTED_TAG not in tags and len(tags) < MAX_TAGS:
        tags.append(IMPORTED_TAG)
    try:
        record = new_record(
            experiment["kind"], experiment["config"],
            name=experiment["name"], status=experiment["status"],
            protocol=experiment.get("protocol"), results=experiment.get("results"),
            environment=experiment.get("environment"), tags=tags, notes=experiment.get("notes", ""),
            id=original_id if keep_id else None,
            created_at=parse_time(experiment["created_at"], "created_at"),
            updated_at=parse_time(experiment["updated_at"], "updated_at"),
            source={"original_id": original_id, "imported_at": utcnow().isoformat(), "origin": origin,
                    "format_version": VERSION},
        )
    except StorageError as e:
        raise ImportRefused(f"The file holds a value that cannot be stored: {e}") from None
    try:
        return history.add(record)
    except StorageError:
        if keep_id and history.exists(original_id):  # taken by another writer since the check above
            raise collision from None
        raise


def import_file(history: History, path: str | os.PathLike, *, keep_id: bool = False,
                again: bool = True) -> ExperimentRecord:
    """Import the shared experiment in `path` (as `import_experiment`); its size is checked before a byte is
    parsed."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_IMPORT_BYTES:
            raise ImportRefused(
                f"{path.name} is {size / 2**20:.1f} MiB; shared experiments are at most "
                f"{MAX_IMPORT_BYTES // 2**20} MiB. It was not imported."
            )
        with path.open("rb") as f:
            data = f.read(MAX_IMPORT_BYTES + 1)  # the file may have grown since stat
    except OSError as e:
        raise ImportRefused(f"Cannot read {path}: {e.strerror or e}.") from None
    return import_experiment(history, data, keep_id=keep_id, origin=path.name, again=again)


# ---- permalinks ---------------------------------------------------------------------------------------------

def permalink(base_url: str, id: str) -> str:
    """`base_url` with `?experiment=<id>` (other query parameters are kept, an old experiment is replaced)."""
    check_id(id)
    parts = urlsplit(base_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "experiment"]
    query.append(("experiment", id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def experiment_id_from_url(url: str) -> str | None:
    """The experiment id in a permalink, or None when it has none or the value is not an id."""
    for key, value in parse_qsl(urlsplit(url).query):
        if key == "experiment" and ID_PATTERN.match(value):
            return value
    return None
