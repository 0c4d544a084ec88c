"""The experiment history: save, update, get, find, count, delete and compare experiments.

Everything handed out is an `ExperimentRecord`, detached from the session, so the UI and worker threads can
keep it. Each call is one short transaction; `update` is a single UPDATE by primary key, cheap enough to
call after every generation of a search. No UI, no torch, no SQL specific to one backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Text, cast, delete, func, or_, select, update
from sqlalchemy import exc as sa_exc

from storage.db import Database
from storage.errors import ExperimentNotFound, StorageError
from storage.models import Experiment
from storage.records import (
    MAX_NAME,
    MAX_NOTES,
    ExperimentRecord,
    as_utc,
    check_kind,
    check_status,
    check_tags,
    check_text,
    model_of,
    new_record,
    to_json_object,
    utcnow,
)


@dataclass(frozen=True)
class Filters:
    """What `History.find` and `History.count` select. `text` matches the name or the model, ignoring case;
    `tag` matches one tag, ignoring case; the time bounds are inclusive."""

    kind: str | None = None
    status: str | None = None
    text: str | None = None
    tag: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def apply(self, query: Select) -> Select:
        if self.kind is not None:
            query = query.where(Experiment.kind == check_kind(self.kind))
        if self.status is not None:
            query = query.where(Experiment.status == check_status(self.status))
        if self.text:
            query = query.where(or_(Experiment.name.icontains(self.text, autoescape=True),
                                    Experiment.model.icontains(self.text, autoescape=True)))
        if self.tag:
            (tag,) = check_tags([self.tag])
            # Tags hold no quotes or backslashes (see check_tags), so '"tag"' matches exactly one list element
            # of the stored JSON text on every backend.
            query = query.where(cast(Experiment.tags, Text).icontains(f'"{tag}"', autoescape=True))
        if self.created_after is not None:
            query = query.where(Experiment.created_at >= as_utc(self.created_after))
        if self.created_before is not None:
            query = query.where(Experiment.created_at <= as_utc(self.created_before))
        return query


class History:
    """The experiments in one database. Thread-safe: every call opens its own short session."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, kind: str, config: dict, **values: Any) -> ExperimentRecord:
        """Create an experiment and return it as stored. `values` are the keywords of `new_record` (name,
        status, protocol, results, environment, tags, notes, id, created_at, updated_at, source); `id` defaults
        to a fresh uuid4 hex, and one that is taken raises StorageError and stores nothing."""
        return self.add(new_record(kind, config, **values))

    def add(self, record: ExperimentRecord) -> ExperimentRecord:
        """Insert a record made by `new_record` (checked again here) and return it as stored."""
        record = new_record(**{f.name: getattr(record, f.name) for f in fields(record)})
        row = Experiment.from_record(record)
        with self.db.session(write=True) as session:
            if session.get(Experiment, row.id) is not None:
                raise StorageError(f"An experiment with id {row.id} already exists; nothing was saved.")
            session.add(row)
            try:
                session.flush()
            except sa_exc.IntegrityError:
                raise StorageError(f"An experiment with id {row.id} already exists; nothing was saved.") from None
            return row.to_record()

    def update(self, id: str, **changes: Any) -> None:
        """Change some fields of an experiment in one UPDATE; `updated_at` becomes now.

        Accepted fields: name, status, config, protocol, results, environment, tags, notes. JSON fields are
        replaced whole. Raises ExperimentNotFound when the id is not in the history."""
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "name":
                values[key] = check_text(value, "name", MAX_NAME)
            elif key == "notes":
                values[key] = check_text(value, "notes", MAX_NOTES)
            elif key == "status":
                values[key] = check_status(value)
            elif key == "tags":
                values[key] = check_tags(value)
            elif key in ("config", "protocol", "results", "environment"):
                values[key] = to_json_object(value, key)
                if key == "config":
                    values["model"] = model_of(values[key])
            else:
                raise StorageError(f"Cannot update {key!r}; change one of name, status, config, protocol, "
                                   "results, environment, tags, notes.")
        values["updated_at"] = utcnow()
        with self.db.session(write=True) as session:
            done = session.execute(update(Experiment).where(Experiment.id == id).values(**values))
            if done.rowcount != 1:
                raise ExperimentNotFound(f"No experiment with id {id!r} in the history; it may have been deleted.")

    def get(self, id: str) -> ExperimentRecord:
        """The experiment with this id; ExperimentNotFound (a StorageError) when there is none."""
        with self.db.session() as session:
            row = session.get(Experiment, id)
            if row is None:
                raise ExperimentNotFound(f"No experiment with id {id!r} in the history; it may have been deleted.")
            return row.to_record()

    def exists(self, id: str) -> bool:
        with self.db.session() as session:
            return session.get(Experiment, id) is not None

    def find(self, filters: Filters | None = None, *, limit: int | None = 50, offset: int = 0,
             **criteria: Any) -> list[ExperimentRecord]:
        """Experiments matching the filters, newest first. Give a `Filters` or its fields as keywords
        (kind, status, text, tag, created_after, created_before); `limit=None` returns all."""
        filters = _filters(filters, criteria)
        if (limit is not None and limit < 0) or offset < 0:
            raise StorageError("limit and offset cannot be negative.")
        query = filters.apply(select(Experiment)).order_by(Experiment.created_at.desc(), Experiment.id.desc())
        query = query.limit(limit).offset(offset)
        with self.db.session() as session:
            return [row.to_record() for row in session.scalars(query)]

    def count(self, filters: Filters | None = None, **criteria: Any) -> int:
        """How many experiments match (for paging through `find`)."""
        query = _filters(filters, criteria).apply(select(func.count()).select_from(Experiment))
        with self.db.session() as session:
            return session.scalar(query)

    def delete(self, ids: str | Iterable[str]) -> int:
        """Delete one experiment or several; returns how many were deleted (missing ids are skipped)."""
        ids = [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))
        if not ids:
            return 0
        with self.db.session(write=True) as session:
            return session.execute(delete(Experiment).where(Experiment.id.in_(ids))).rowcount

    def compare(self, ids: Sequence[str]) -> list[ExperimentRecord]:
        """The experiments with these ids, in the order given. ExperimentNotFound names every missing id."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        wanted = list(dict.fromkeys(ids))
        with self.db.session() as session:
            found = {row.id: row.to_record() for row in session.scalars(
                select(Experiment).where(Experiment.id.in_(wanted)))}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise ExperimentNotFound(
                f"Cannot compare: {len(missing)} of {len(wanted)} experiments are not in the history "
                f"({', '.join(map(str, missing))}); they may have been deleted."
            )
        return [found[i] for i in ids]


def _filters(filters: Filters | None, criteria: dict[str, Any]) -> Filters:
    if filters is not None and criteria:
        raise StorageError("Give either a Filters object or filter keywords, not both.")
    if filters is not None:
        return filters
    unknown = set(criteria) - set(Filters.__dataclass_fields__)
    if unknown:
        raise StorageError(f"Unknown filters: {', '.join(sorted(unknown))}; use kind, status, text, tag, "
                           "created_after, created_before.")
    return Filters(**criteria)
