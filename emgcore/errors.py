"""One typed exception family for bad input data.

Every loader, validator and preprocessing step raises a subclass of :class:`EmgDataError` that
names the file (or source) and the field at fault, so a user sees *where* to look, never a silent
wrong result. Command-line entry points catch the family, print one line and exit with status 2.
"""

from __future__ import annotations

from pathlib import Path


class EmgDataError(Exception):
    """Bad input data. ``str(err)`` reads ``<source>: <field>: <message>``."""

    def __init__(self, message: str, *, source: str | Path | None = None, field: str | None = None):
        self.message = message
        self.source = str(source) if source is not None else None
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.source, f"field '{self.field}'" if self.field else None) if p]
        return ": ".join([*parts, self.message])


class MissingFileError(EmgDataError, FileNotFoundError):
    """A file or folder that should exist does not."""


class MissingFieldError(EmgDataError, KeyError):
    """A required key, dataset, column or attribute is absent."""

    # KeyError quotes its message in str(); keep the readable form.
    __str__ = EmgDataError.__str__


class ShapeError(EmgDataError, ValueError):
    """An array has the wrong number of dimensions, rows or channels."""


class InvalidValueError(EmgDataError, ValueError):
    """Values are present but wrong: NaN/Inf, non-monotonic time, mismatched rates, bad labels."""


class FormatError(EmgDataError, OSError):
    """The file is not readable in the expected format (truncated, corrupt, wrong type)."""

    __str__ = EmgDataError.__str__
