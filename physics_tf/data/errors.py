"""Errors raised by the jet data layer.

Every error is one line of the form ``<file>: field '<name>': <what>`` (the field part is left out when the
problem is not tied to one field), so a broken input is identified without reading a traceback. All of them
derive from :class:`DataError`, itself a :class:`ValueError`, so callers can catch one type.
"""

from __future__ import annotations

import os

__all__ = [
    "DataError",
    "MissingFieldError",
    "UnknownLabelError",
    "CorruptFileError",
    "EmptyFileError",
    "InvalidValueError",
    "ConfigError",
]


class DataError(ValueError):
    """Bad input data: ``<file>: field '<name>': <what>``.

    Parameters
    ----------
    file
        The offending file (or a description such as ``"<config>"``).
    what
        What is wrong, one line.
    field
        The branch/column/feature concerned, if any.
    """

    def __init__(self, file: str | os.PathLike | None, what: str | None = None, field: str | None = None):
        if what is None:  # one ready message: how torch re-raises an error from a DataLoader worker
            self.file, self.field, self.what = None, None, str(file)
            super().__init__(self.what)
            return
        self.file = None if file is None else str(file)
        self.field = field
        self.what = " ".join(str(what).split())  # one line
        parts = [self.file or "<unknown file>"]
        if field is not None:
            parts.append(f"field '{field}'")
        parts.append(self.what)
        super().__init__(": ".join(parts))

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (self.__class__, (self.file, self.what, self.field))


class MissingFieldError(DataError):
    """A branch / column needed by the configuration is not in the file."""


class UnknownLabelError(DataError):
    """A configured label name is not a known label of the format."""


class CorruptFileError(DataError):
    """The file cannot be opened or decoded (truncated, random bytes, wrong format)."""


class EmptyFileError(DataError):
    """The file holds no entries (reported only when a whole split is empty; empty files are skipped)."""


class InvalidValueError(DataError):
    """A value is NaN / inf or otherwise unusable (e.g. a jet with no selected label)."""


class ConfigError(DataError):
    """The data configuration itself is inconsistent (unknown feature variable, bad expression, ...)."""
