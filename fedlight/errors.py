"""Errors that a user can fix by changing their input.

The CLI turns any :class:`FedlightError` into one line on stderr and exit
status 2; everything else is a bug and keeps its traceback.
"""


class FedlightError(Exception):
    """A problem with the user's input: configuration, data or paths."""


class ConfigError(FedlightError):
    """An invalid configuration value (names the offending option)."""


class DataError(FedlightError):
    """A missing or malformed data directory or file."""
