"""Write health: counters, and write failures logged once per distinct reason, never per span."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from typing import Any

from otel_sqlite_exporter._exceptions import TraceFileError

logger = logging.getLogger("otel_sqlite_exporter")

# Connections inherited across fork(): the child must neither use nor close them (closing could
# checkpoint or unlock the parent's file), so they are kept here, untouched, for the process's life.
_abandoned: list[Any] = []

_HINTS = {
    "database or disk is full": "the disk or the file size limit is full; writing resumes when space returns",
    "readonly database": "the file or its folder is read-only for this process",
    "unable to open database file": "the file's folder is missing or not writable",
    "disk i/o error": "the file system reported an I/O error",
    "database is locked": "another process held the write lock longer than the busy timeout",
}


# SQLite says much the same ("unable to open database file", "disk I/O error", ...) whether the
# file system is read-only, the folder is gone or the file is not writable: the file system is
# asked which it is.
_ACCESS_NEEDLES = (
    "readonly",
    "read-only",
    "unable to open",
    "disk i/o error",
    "cannot create",
    "cannot open",
    "cannot read",
    "not a directory",
)

# SQLite would go on writing into a removed file, out of everyone's reach.
_REPLACED = (
    "the file or its folder was removed or replaced while open; writing goes on in the file "
    "now at that path (created anew if it is missing)"
)


def describe(exc: BaseException, path: str | None = None) -> str:
    """A one-line, actionable reason for a failed write (to the file at ``path``, if given)."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if path is not None and any(needle in lowered for needle in _ACCESS_NEEDLES):
        cause = unwritable(path)
        if cause is not None:
            return f"{text} ({cause}; writing resumes by itself when that changes)"
    for needle, hint in _HINTS.items():
        if needle in lowered:
            return f"{text} ({hint})"
    if isinstance(exc, TraceFileError):
        return text
    if isinstance(exc, sqlite3.Error):
        return f"SQLite error: {text}"
    return f"{type(exc).__name__}: {text}"


def unwritable(path: str) -> str | None:
    """Why this process cannot write the file at ``path``, or create it and its ``-wal`` and
    ``-shm`` files beside it; None when nothing stands in the way."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    # The nearest folder that exists: the rest of the path is created on opening.
    existing = folder
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            return f"{existing} is not a folder"
        if hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"the file system holding {existing} is read-only"
    except OSError as exc:
        return f"{existing} cannot be read: {exc.strerror or exc}"
    if existing != folder:
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"its folder is missing and {existing} is not writable for this process"
        return None
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return "the file is read-only for this process"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "its folder is read-only for this process (SQLite creates the -wal and -shm files there)"
    return None


class WriteHealth:
    """What a writer did: spans (or log records) written, lost to failed writes, failed attempts."""

    def __init__(self, path: str, what: str = "spans") -> None:
        self.path = path
        self.what = what
        self.written = 0
        self.failed = 0
        self.errors = 0
        self.last_error: str | None = None
        self._reported: set[str] = set()
        # The reason writes are failing for now (None while they work), and the reasons whose end
        # was logged: a fault that comes and goes (a disk nearly full) logs its recovery once too.
        self._failing: str | None = None
        self._recovered: set[str] = set()
        self._lock = threading.Lock()

    def skipped(self, count: int) -> None:
        """Spans left out of a batch that was written (they could not be mapped; logged where found)."""
        with self._lock:
            self.failed += count

    def wrote(self, count: int) -> None:
        with self._lock:
            self.written += count
            reason, self._failing = self._failing, None
            if reason is None or reason in self._recovered:
                return
            self._recovered.add(reason)
        logger.warning("otel-sqlite-exporter: writing to %s works again", self.path)

    def retrying(self, exc: BaseException) -> None:
        """An attempt failed and will be made again (nothing lost yet): counted, not logged."""
        with self._lock:
            self.errors += 1
            self.last_error = describe(exc, self.path)

    def failure(self, exc: BaseException, lost: int) -> None:
        reason = describe(exc, self.path)
        with self._lock:
            self.errors += 1
            self.failed += lost
            self.last_error = reason
            self._failing = reason
            first = reason not in self._reported
            self._reported.add(reason)
        if first:
            logger.error(
                "otel-sqlite-exporter cannot write %s to %s: %s. The application goes on; "
                "the %s lost are counted in stats['failed'] and this reason is not logged again.",
                self.what,
                self.path,
                reason,
                self.what,
            )

    def file_replaced(self) -> None:
        """The file being written is no longer the one at the path: counted as a failed attempt
        (nothing lost: the writer opens the path anew) and logged once."""
        self.failure(TraceFileError(self.path, _REPLACED), lost=0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "written": self.written,
                "failed": self.failed,
                "errors": self.errors,
                "last_error": self.last_error,
            }


def abandon(resource: Any) -> None:
    if resource is not None:
        _abandoned.append(resource)
