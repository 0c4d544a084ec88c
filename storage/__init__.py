"""Experiment history and sharing: a SQLAlchemy database of evaluations, searches, structural runs and
sweeps, with JSON export/import and permalinks.

    from storage import History, open_database
    history = History(open_database())          # DSA_DATABASE_URL, else ~/.local/share/sparsity-explorer/
    with Recorder(history).run("evaluation", config.to_dict(), name="OWL 50%") as run:   # saved as running
        run.done({"ppl": 21.3})                  # or failed / cancelled, partial results kept, if the block raises

Storage never imports torch or a UI toolkit, and hands out detached `ExperimentRecord`s, never ORM objects.
"""

from storage.db import Database, open_database
from storage.errors import AlreadyImported, ExperimentNotFound, ImportRefused, StorageError
from storage.history import Filters, History
from storage.recorder import Recorder, Run, open_recorder
from storage.records import KINDS, STATUSES, ExperimentRecord, new_record
from storage.shapes import SHAPES, shape_problem
from storage.sharing import (
    FORMAT,
    MAX_IMPORT_BYTES,
    SCHEMA,
    VERSION,
    experiment_id_from_url,
    export_experiment,
    export_to_file,
    import_experiment,
    import_file,
    permalink,
    read_document,
)

__all__ = [
    "Database", "open_database", "StorageError", "ImportRefused", "AlreadyImported", "ExperimentNotFound", "History",
    "Filters", "Recorder", "Run", "open_recorder", "ExperimentRecord", "new_record", "KINDS", "STATUSES", "SHAPES",
    "shape_problem", "FORMAT", "VERSION", "SCHEMA", "MAX_IMPORT_BYTES", "export_experiment", "export_to_file",
    "import_experiment", "import_file", "read_document", "permalink", "experiment_id_from_url",
]
