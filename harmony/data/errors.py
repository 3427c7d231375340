"""Errors that name the file, row or column at fault and say what was expected."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names where the problem is and what was expected."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
        problems: list[str] | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.row = row
        self.column = column
        self.problems = problems or []
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        head = (", ".join(where) + ": " if where else "") + self.message
        if self.problems:
            head += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        return head


class CardError(DataError):
    """A dataset card (YAML) is invalid."""


class ChecksumError(DataError):
    """A downloaded or staged file does not match its published SHA-256."""
