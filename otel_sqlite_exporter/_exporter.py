"""SQLiteSpanExporter: the SDK's SpanExporter contract, for use behind BatchSpanProcessor or with
``OTEL_TRACES_EXPORTER=sqlite``."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._fork import on_fork
from otel_sqlite_exporter._health import WriteHealth, abandon
from otel_sqlite_exporter._writer import TraceWriter


class SQLiteSpanExporter(SpanExporter):
    """Writes each ``export()`` batch to the trace file in one transaction.

    With no arguments every option comes from ``OTEL_EXPORTER_SQLITE_*`` (the SDK's
    auto-configuration constructs it that way). ``export()`` never raises: a batch that cannot be
    written returns ``SpanExportResult.FAILURE`` and the reason is logged once.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self.options = Options.resolve(path, options)
        self._writer: TraceWriter | None = None
        self._lock = threading.Lock()
        self._health = WriteHealth(self.options.path)
        self._shutdown = False
        # export() runs inside SQLite under the lock; fork() waits for it (see _fork).
        on_fork(
            self,
            before=lambda exporter: exporter._lock.acquire(),
            after_in_parent=lambda exporter: exporter._lock.release(),
            after_in_child=SQLiteSpanExporter._after_fork_in_child,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        with self._lock:
            try:
                self._open().write(spans)
            except Exception as exc:  # noqa: BLE001 - the exporter contract forbids raising
                self._health.failure(exc, lost=len(spans))
                return SpanExportResult.FAILURE
        self._health.wrote(len(spans))
        return SpanExportResult.SUCCESS

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
        """``written`` and ``failed`` spans, ``errors`` (failed exports) and the ``last_error``."""
        return self._health.stats()

    def _after_fork_in_child(self) -> None:
        # The parent's connection is not ours to use or close: keep it untouched, open our own.
        self._lock = threading.Lock()
        abandon(self._writer)
        self._writer = None

    def _open(self) -> TraceWriter:
        if self._writer is None:
            self._writer = TraceWriter(self.options)
        return self._writer
