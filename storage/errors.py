"""Errors raised by the storage layer, as part of the engine's hierarchy (`dsa_core.errors.DSAError`).

Messages are written for the user: the CLI prints them, the web app shows them. Nothing else lives here.
"""

from dsa_core.errors import DSAError


class StorageError(DSAError):
    """The history database cannot be opened, read or written, or a value cannot be stored in it."""


class ExperimentNotFound(StorageError):
    """An experiment id (from a permalink, a comparison, an update) is not in the history."""


class ImportRefused(StorageError):
    """A shared experiment file was refused; the database is unchanged."""


class AlreadyImported(ImportRefused):
    """The shared experiment is already in the history (`record`): it was made here, or imported before."""

    def __init__(self, message: str, record):
        super().__init__(message)
        self.record = record
