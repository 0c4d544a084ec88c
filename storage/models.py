"""The database tables, in SQLAlchemy 2.0 declarative style: `Experiment` (one row per evaluation, search,
structural run or sweep) and `StorageMeta` (the schema version).

The JSON columns are generic: the engine decides what goes in them. Only portable column types are used so
that the same tables work on SQLite and PostgreSQL. No sessions, queries or engines here.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime

from sqlalchemy import JSON, DateTime, Index, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from storage.records import MAX_MODEL, MAX_NAME, ExperimentRecord, as_utc

# Bump when a column changes meaning or disappears; a database written by a newer version is refused.
SCHEMA_VERSION = 1


class UTCDateTime(TypeDecorator):
    """Stores UTC, returns timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON, datetime: UTCDateTime}


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex, used in permalinks
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(MAX_NAME), default="")
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # A copy of config["model"], so that listing can filter on it without backend-specific JSON operators.
    model: Mapped[str | None] = mapped_column(String(MAX_MODEL))
    config: Mapped[dict]
    protocol: Mapped[dict]
    results: Mapped[dict]
    environment: Mapped[dict]
    tags: Mapped[list]
    notes: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[dict | None]  # provenance of an imported experiment

    __table_args__ = (
        Index("ix_experiments_created_at", "created_at"),
        Index("ix_experiments_kind", "kind"),
    )

    @classmethod
    def from_record(cls, record: ExperimentRecord) -> Experiment:
        return cls(model=record.model, **{f.name: getattr(record, f.name) for f in fields(record)})

    def to_record(self) -> ExperimentRecord:
        return ExperimentRecord(
            id=self.id, kind=self.kind, name=self.name, status=self.status,
            created_at=self.created_at, updated_at=self.updated_at,
            config=self.config or {}, protocol=self.protocol or {}, results=self.results or {},
            environment=self.environment or {}, tags=list(self.tags or []), notes=self.notes or "",
            source=self.source,
        )


class StorageMeta(Base):
    """Key/value facts about the database itself; today only "schema_version"."""

    __tablename__ = "storage_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
