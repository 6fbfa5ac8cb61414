"""The core's exceptions: one small hierarchy that every front end can map to its own answers.

* :class:`CellsparseError` (``Exception``): base of everything below.
* :class:`InvalidInput` (``ValueError``): bad input; the message says what to fix (REST 400).
* :class:`InvalidType` (``InvalidInput``, ``TypeError``): input of the wrong kind, e.g. float
  labels (400).
* :class:`NotFound` (``KeyError``): unknown model, job, family ... (404).
* :class:`MissingFile` (``NotFound``, ``FileNotFoundError``): a stored model or job data is
  gone (404).
* :class:`QueueFull` (``RuntimeError``): too much work waiting; try again later (429).
* :class:`Unavailable` (``RuntimeError``): the service cannot answer now or here (503).

The built-in second bases keep older callers working (``except KeyError`` still catches an
unknown job, ``except ValueError`` bad input). Front ends map these classes, never a bare
``KeyError`` or ``TypeError``: those escaping the core are bugs.
"""

from __future__ import annotations

__all__ = [
    "CellsparseError", "InvalidInput", "InvalidType", "MissingFile", "NotFound", "QueueFull",
    "Unavailable",
]


class CellsparseError(Exception):
    """Base of the errors the core raises on purpose (its message is meant for people)."""


class InvalidInput(CellsparseError, ValueError):
    """Input that cannot be used; the message names the offending value and what to do."""


class InvalidType(InvalidInput, TypeError):
    """Input of the wrong type or dtype (also a ``TypeError`` for callers that catch that)."""


class NotFound(CellsparseError, KeyError):
    """A name (model, job, family, weights) that is not known.

    A ``KeyError`` so that ``except KeyError`` callers keep working, but its message reads as
    given: ``KeyError.__str__`` would quote it.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class MissingFile(NotFound, FileNotFoundError):
    """A stored model or file that does not exist (also a ``FileNotFoundError``)."""

    def __str__(self) -> str:
        # One-argument form only: OSError's "[Errno n] ..." form is left to OSError.
        return str(self.args[0]) if len(self.args) == 1 else FileNotFoundError.__str__(self)


class QueueFull(CellsparseError, RuntimeError):
    """Too many jobs are waiting; the same request may succeed later."""


class Unavailable(CellsparseError, RuntimeError):
    """The service asked for cannot answer (shutting down, missing weights or package)."""
