"""Errors raised on bad input: every message names the file and, where known, the line and column."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file, line and/or column that caused it.

    Attributes mirror the message so callers (and tests) can inspect them.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.column = column
        where = []
        if self.file is not None:
            where.append(f"file {self.file}")
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
