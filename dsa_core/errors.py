"""The engine's error hierarchy. Messages are written for the user: the CLI prints them and exits 2,
the web app shows them beside the control that caused them."""


class DSAError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(DSAError, ValueError):
    """A setting is out of range or inconsistent with another (sparsity, pattern, allocation...)."""


class ModelError(DSAError):
    """A model cannot be found, loaded, or is of an architecture we cannot prune."""


class DataError(DSAError):
    """A dataset cannot be found or is too short for what was asked."""


class ResourceError(DSAError):
    """The device ran out of memory; the message says what to reduce."""


class Cancelled(DSAError):
    """The user stopped the run before it finished (a Cancel button, Ctrl-C): not a failure of the run."""
