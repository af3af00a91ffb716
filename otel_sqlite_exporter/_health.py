"""Write health: counters, and write failures logged once per distinct reason, never per span."""

from __future__ import annotations

import logging
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


def describe(exc: BaseException) -> str:
    """A one-line, actionable reason for a failed write."""
    if isinstance(exc, TraceFileError):
        return str(exc)
    text = str(exc) or type(exc).__name__
    for needle, hint in _HINTS.items():
        if needle in text.lower():
            return f"{text} ({hint})"
    if isinstance(exc, sqlite3.Error):
        return f"SQLite error: {text}"
    return f"{type(exc).__name__}: {text}"


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
        self._failing = False
        self._lock = threading.Lock()

    def wrote(self, count: int) -> None:
        with self._lock:
            self.written += count
            if self._failing:
                self._failing = False
                logger.warning("otel-sqlite-exporter: writing to %s works again", self.path)

    def failure(self, exc: BaseException, lost: int) -> None:
        reason = describe(exc)
        with self._lock:
            self.errors += 1
            self.failed += lost
            self.last_error = reason
            self._failing = True
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
