"""Errors a user can cause: each message names the cause and the fix."""


class HyraxError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(HyraxError):
    """A config key, type or path is wrong; raised before any run is created."""


class RegistryError(HyraxError, KeyError):
    """A name that nothing is registered under."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(HyraxError):
    """Input data that cannot be used as a whole (not a single bad file: those are recorded)."""


class LineageError(HyraxError):
    """A run that is missing, unfinished or not the kind of run a stage needs."""
