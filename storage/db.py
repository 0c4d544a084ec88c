"""Opening the history database: `open_database()` returns a `Database` (an engine and its sessions).

Where: the URL given, else the environment variable DSA_DATABASE_URL, else a SQLite file under
~/.local/share/sparsity-explorer/. SQLite-only settings (WAL journal, foreign keys, busy timeout, BEGIN
IMMEDIATE for writes) are applied in the SQLite branch alone, so a PostgreSQL URL works unchanged.
A database is checked before anything is written to it, WAL journal included: one that is refused (another
program's, or a newer schema's) is left byte for byte as it was. Database errors leave here as `StorageError`
with a sentence for the user, after the transaction has been rolled back. No queries on experiments here (see
history.py), no UI or torch imports.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, exc, insert, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from storage.errors import StorageError
from storage.models import SCHEMA_VERSION, Base, Experiment, StorageMeta

if TYPE_CHECKING:
    import optuna

ENV_VAR = "DSA_DATABASE_URL"
DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a writer waits for another one before giving up
# A search keeps its Optuna study beside the experiments (dsa_core.workers), so these tables are not foreign.
OPTUNA_TABLES = frozenset({
    "alembic_version", "studies", "study_directions", "study_system_attributes", "study_user_attributes",
    "trial_heartbeats", "trial_intermediate_values", "trial_params", "trial_system_attributes",
    "trial_user_attributes", "trial_values", "trials", "version_info",
})


def default_path() -> Path:
    return Path.home() / ".local" / "share" / "sparsity-explorer" / "history.db"


@contextmanager
def translate_errors(where: str) -> Iterator[None]:
    """Turn database failures into a StorageError the user can act on."""
    try:
        yield
    except exc.OperationalError as e:
        if re.search(r"lock|busy", str(e.orig), re.IGNORECASE):
            raise StorageError(
                f"The history database {where} is busy: another program held a lock on it for longer than the "
                "wait time. Nothing was changed; try again in a moment."
            ) from e
        raise StorageError(f"The history database {where} cannot be used: {e.orig}. Nothing was changed.") from e
    except exc.SQLAlchemyError as e:
        reason = getattr(e, "orig", None) or e
        raise StorageError(f"The history database {where} refused the operation: {reason}. Nothing was changed.") from e


class Database:
    """An engine and two session factories: reads, and writes (which on SQLite take the write lock at BEGIN,
    so that concurrent writers queue on the busy timeout instead of failing when they upgrade a read lock)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = engine.url.render_as_string(hide_password=True)
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(engine.execution_options(dsa_write=True), expire_on_commit=False)

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back (and translated) when it raises."""
        with translate_errors(self.url), (self._writes if write else self._reads).begin() as session:
            yield session

    @property
    def study_url(self) -> str | None:
        """The URL by which a search's Optuna study lives beside this history and other processes (workers) reach
        it; None for an in-memory SQLite database, which no other connection sees."""
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            return None
        return url.render_as_string(hide_password=False)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    def check(self) -> set[str]:
        """Refuse, writing nothing, a database this version cannot use: another program's tables and none of
        ours, an experiments table without our columns, or a newer schema version. Returns the tables found."""
        with translate_errors(self.url):
            inspector = inspect(self.engine)
            tables = set(inspector.get_table_names())
            ours = {Experiment.__tablename__, StorageMeta.__tablename__}
            foreign = sorted(tables - ours - OPTUNA_TABLES)
            if foreign and not tables & ours:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise StorageError(
                    f"The database {self.url} holds another program's tables ({shown}) and no Sparsity Explorer "
                    f"history; it was left untouched. Point {ENV_VAR} (or --db, --storage) at another database."
                )
            if Experiment.__tablename__ in tables:
                have = {c["name"] for c in inspector.get_columns(Experiment.__tablename__)}
                missing = sorted(set(Experiment.__table__.columns.keys()) - have)
                if missing:
                    raise StorageError(
                        f"The history database {self.url} has an experiments table without the columns "
                        f"{', '.join(missing)}: it was not written by this version of Sparsity Explorer. "
                        f"Point {ENV_VAR} at another database."
                    )
            if StorageMeta.__tablename__ in tables:
                self._check_version()
        return tables

    def prepare(self) -> None:
        """Check the database (see `check`), then switch SQLite to WAL and create what is missing."""
        tables = self.check()
        with translate_errors(self.url):
            if self.engine.dialect.name == "sqlite":
                raw = self.engine.raw_connection()  # no transaction: SQLite changes the journal only outside one
                try:
                    raw.driver_connection.execute("PRAGMA journal_mode = WAL")  # in memory, it stays "memory"
                finally:
                    raw.close()
            if not {Experiment.__tablename__, StorageMeta.__tablename__} <= tables:
                with self.engine.execution_options(dsa_write=True).begin() as conn:
                    Base.metadata.create_all(conn)  # checks again under the write lock: concurrent openers
                    if conn.scalar(select(StorageMeta.value).where(StorageMeta.key == "schema_version")) is None:
                        conn.execute(insert(StorageMeta).values(key="schema_version", value=str(SCHEMA_VERSION)))

    def _check_version(self) -> None:
        with self.engine.connect() as conn:
            found = conn.scalar(select(StorageMeta.value).where(StorageMeta.key == "schema_version"))
        if found is None:
            return
        if not found.isdigit() or int(found) > SCHEMA_VERSION:
            raise StorageError(
                f"The history database {self.url} uses schema version {found}, newer than this version of "
                f"Sparsity Explorer reads ({SCHEMA_VERSION}). Upgrade, or point {ENV_VAR} at another database."
            )


def _configure_sqlite(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of the driver's implicit, deferred transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")  # safe with WAL (set by prepare), keeps updates cheap
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection) -> None:
        write = connection.get_execution_options().get("dsa_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def database_url(url: str | None = None) -> str:
    """The URL given, else $DSA_DATABASE_URL, else the default SQLite file (its folder created)."""
    url = url or os.environ.get(ENV_VAR) or None
    if url is None:
        path = default_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"Cannot create the folder {path.parent} for the history database: {e}.") from e
        url = f"sqlite:///{path}"
    return url


def _engine(url: str, busy_timeout: float) -> Engine:
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise StorageError(f"{url!r} is not a database URL; write e.g. sqlite:///path/to/history.db.") from None
    # Raw UTF-8 in the stored JSON text, so that a tag filter (a LIKE on that text) finds non-ASCII tags.
    kwargs: dict = {"json_serializer": lambda value: json.dumps(value, ensure_ascii=False, allow_nan=False)}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        kwargs["connect_args"] = {"timeout": busy_timeout, "check_same_thread": False}
        if parsed.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database, not one per thread
    try:
        engine = create_engine(parsed, **kwargs)
    except (exc.NoSuchModuleError, ImportError) as e:
        raise StorageError(
            f"Cannot open {parsed.render_as_string(hide_password=True)}: its database driver is missing ({e}). "
            "For PostgreSQL, install psycopg."
        ) from None
    if sqlite:
        _configure_sqlite(engine, busy_timeout)
    return engine


def open_database(url: str | None = None, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Database:
    """Open (and create if needed) the history database; see the module docstring for where it lives."""
    db = Database(_engine(database_url(url), busy_timeout))
    try:
        db.prepare()
    except BaseException:
        db.close()
        raise
    return db


def check_database(url: str) -> None:
    """Refuse (StorageError) a database the history would refuse, writing nothing to it: for a program that puts
    its own tables beside the history's, as a search does with its Optuna study."""
    with Database(_engine(url, DEFAULT_BUSY_TIMEOUT)) as db:
        db.check()


def open_study_storage(url: str) -> optuna.storages.BaseStorage:
    """A search's Optuna storage in a database the history shares: checked first, so that a database the history
    refuses stays untouched (Optuna would create its tables), then opened as every worker of a study opens it."""
    from dsa_core.workers import open_storage  # imports Optuna: only for a search

    check_database(url)
    return open_storage(url)
