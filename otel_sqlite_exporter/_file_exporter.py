"""What the span and log exporters share: one writer, opened on first use and closed by shutdown(),
used under a lock that fork() waits for, and the SDK's force_flush/stats contract."""

from __future__ import annotations

import threading
from typing import Any

from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._fork import on_fork
from otel_sqlite_exporter._health import WriteHealth, abandon


class FileExporter:
    """Mixed in before the SDK's exporter base class; ``_writer`` is the subclass's writer."""

    options: Options
    _writer: Any

    def _start(self, options: Options, what: str) -> None:
        self.options = options
        self._writer = None
        self._lock = threading.Lock()
        self._health = WriteHealth(options.path, what=what)
        self._shutdown = False
        # export() runs inside SQLite under the lock; fork() waits for it (see _fork).
        on_fork(
            self,
            before=lambda exporter: exporter._lock.acquire(),
            after_in_parent=lambda exporter: exporter._lock.release(),
            after_in_child=type(self)._after_fork_in_child,
        )

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            if self._writer is not None:
                self._writer.close()
            self._writer = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        # Every export() commits before it returns: there is nothing buffered here.
        return True

    @property
    def stats(self) -> dict[str, Any]:
        """``written`` and ``failed`` spans (or log records), ``errors`` (failed exports) and the
        ``last_error``."""
        return self._health.stats()

    def _after_fork_in_child(self) -> None:
        # The parent's connection is not ours to use or close: keep it untouched, open our own.
        self._lock = threading.Lock()
        abandon(self._writer)
        self._writer = None
