"""What the storage layer hands out and takes in: `ExperimentRecord`, a plain detached dataclass, and the
checks every stored value passes (known kind and status, tags, JSON values that survive a round trip).

No database access and no I/O here; no torch or numpy imports either (numpy values are converted by duck
typing through their `tolist()`).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from storage.errors import StorageError

KINDS = ("evaluation", "search", "structural", "sweep")
STATUSES = ("running", "done", "failed", "cancelled")

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
MAX_NAME = 200
MAX_MODEL = 500
MAX_NOTES = 100_000
MAX_TAG = 64
MAX_TAGS = 64
# Limits on a JSON value, the same for saving and importing so that whatever is saved can be shared.
MAX_DEPTH = 32
MAX_NODES = 200_000


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A timezone-aware UTC datetime; naive values are taken to be UTC already (SQLite drops the zone)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True)
class ExperimentRecord:
    """One experiment as stored, detached from any database session: safe to pass to UI code and threads.

    `source` says where an imported experiment came from (None for experiments made here)."""

    id: str
    kind: str
    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    config: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    source: dict | None = None

    @property
    def model(self) -> str | None:
        return model_of(self.config)

    def to_dict(self) -> dict:
        """JSON-ready: datetimes as ISO 8601 strings in UTC."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["created_at"] = self.created_at.isoformat()
        d["updated_at"] = self.updated_at.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentRecord:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise StorageError(f"Unknown experiment fields: {', '.join(sorted(unknown))}.")
        d = dict(d)
        for key in ("created_at", "updated_at"):
            if isinstance(d.get(key), str):
                d[key] = parse_time(d[key], key)
        return cls(**d)


def new_id() -> str:
    return uuid.uuid4().hex


def new_record(
    kind: str,
    config: Mapping[str, Any],
    *,
    name: str = "",
    status: str = "running",
    protocol: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    tags: Iterable[str] = (),
    notes: str = "",
    id: str | None = None,
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
    source: Mapping[str, Any] | None = None,
) -> ExperimentRecord:
    """A checked record with fresh copies of every value: a new uuid4 hex id and the current time unless
    given. Raises StorageError naming the first value that cannot be stored."""
    created = as_utc(created_at) if created_at is not None else utcnow()
    return ExperimentRecord(
        id=check_id(id) if id is not None else new_id(),
        kind=check_kind(kind),
        name=check_text(name, "name", MAX_NAME),
        status=check_status(status),
        created_at=created,
        updated_at=as_utc(updated_at) if updated_at is not None else created,
        config=to_json_object(config, "config"),
        protocol=to_json_object(protocol, "protocol"),
        results=to_json_object(results, "results"),
        environment=to_json_object(environment, "environment"),
        tags=check_tags(tags),
        notes=check_text(notes, "notes", MAX_NOTES),
        source=to_json_object(source, "source") if source is not None else None,
    )


def model_of(config: Mapping[str, Any]) -> str | None:
    """config["model"] when it is text (cut to MAX_MODEL characters: the copy only serves searching)."""
    model = config.get("model")
    return model[:MAX_MODEL] if isinstance(model, str) else None


def parse_time(text: str, what: str) -> datetime:
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise StorageError(f"{what} is not an ISO 8601 date and time: {text[:40]!r}.") from None


def check_id(value: object) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise StorageError(f"{str(value)[:40]!r} is not an experiment id (32 lowercase hexadecimal characters).")
    return value


def check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise StorageError(f"Unknown experiment kind {kind!r}; choose one of {', '.join(KINDS)}.")
    return kind


def check_status(status: object) -> str:
    if status not in STATUSES:
        raise StorageError(f"Unknown experiment status {status!r}; choose one of {', '.join(STATUSES)}.")
    return status


def _check_unicode(value: str, what: str) -> None:
    """A lone surrogate (half of a UTF-16 pair, which JSON's \\ud800 escapes can produce) is no UTF-8 text:
    no database stores it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StorageError(f"{what} holds a lone surrogate character (\\ud800–\\udfff), which is not valid "
                           "Unicode text; nothing was saved.") from None


def check_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise StorageError(f"The {what} must be text, not {type(value).__name__}.")
    if len(value) > limit:
        raise StorageError(f"The {what} is {len(value)} characters long; at most {limit} are kept.")
    if "\x00" in value:
        raise StorageError(f"The {what} contains a NUL character, which databases cannot store as text.")
    _check_unicode(value, f"The {what}")
    return value


def check_tags(tags: Iterable[str]) -> list[str]:
    """Tags are short single-line labels, kept in order without duplicates; they match case-insensitively."""
    if isinstance(tags, str):
        raise StorageError("Tags must be a list of labels, not a single string.")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise StorageError(f"A tag must be non-empty text, not {tag!r}.")
        tag = tag.strip()
        if len(tag) > MAX_TAG or any(c in tag for c in '"\\') or not tag.isprintable():
            raise StorageError(f"Tag {tag[:MAX_TAG]!r} is too long or holds quotes, backslashes or control characters.")
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise StorageError(f"An experiment holds at most {MAX_TAGS} tags, not {len(out)}.")
    return out


def to_json_value(value: Any, what: str) -> Any:
    """A fresh copy of `value` made only of dict (str keys), list, str, int, finite float, bool and None.

    Tuples become lists and numpy arrays or scalars become Python values (through `tolist()`). Anything
    JSON cannot hold faithfully is refused with the path to it: NaN and infinities (PostgreSQL and the
    JSON standard reject them; store None or a string), integers beyond 64 bits, non-text keys, other objects,
    deep nesting."""
    nodes = 0

    def walk(v: Any, path: str, depth: int) -> Any:
        nonlocal nodes
        nodes += 1
        if nodes > MAX_NODES:
            raise StorageError(f"{what} holds more than {MAX_NODES} values; store a summary instead.")
        if depth > MAX_DEPTH:
            raise StorageError(f"{what} is nested more than {MAX_DEPTH} levels deep at {path}.")
        if isinstance(v, str):
            _check_unicode(v, path)
            return v
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            if not -2**63 <= v < 2**63:
                raise StorageError(f"{path} is an integer beyond 64 bits, which the web app cannot send to a browser; "
                                   "store it as a float or a string instead.")
            return int(v)
        if isinstance(v, float):
            if not math.isfinite(v):
                raise StorageError(f"{path} is {v}, which JSON cannot hold; store None or a string instead.")
            return float(v)
        if isinstance(v, Mapping):
            out = {}
            for k, item in v.items():
                if not isinstance(k, str):
                    raise StorageError(f"{path} has a key {k!r} that is not text; JSON keys must be strings.")
                _check_unicode(k, f"A key of {path}")
                out[k] = walk(item, f"{path}.{k}", depth + 1)
            return out
        if isinstance(v, list | tuple):
            return [walk(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v)]
        if hasattr(v, "tolist"):
            return walk(v.tolist(), path, depth)
        raise StorageError(f"{path} is a {type(v).__name__}, which cannot be stored as JSON.")

    return walk(value, what, 0)


def to_json_object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StorageError(f"{what} must be a mapping of names to values, not {type(value).__name__}.")
    return to_json_value(value, what)
