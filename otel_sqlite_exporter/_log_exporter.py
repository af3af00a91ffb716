"""SQLiteLogExporter: the SDK's log exporter contract, for use behind BatchLogRecordProcessor or
with ``OTEL_LOGS_EXPORTER=sqlite``."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

try:  # SDK 1.39 and later
    from opentelemetry.sdk._logs.export import LogRecordExporter as _LogExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult as _Result
except ImportError:  # earlier SDKs
    from opentelemetry.sdk._logs.export import LogExporter as _LogExporter  # type: ignore[assignment]
    from opentelemetry.sdk._logs.export import LogExportResult as _Result  # type: ignore[assignment]

from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._fork import on_fork
from otel_sqlite_exporter._health import WriteHealth, abandon
from otel_sqlite_exporter._logs import LogWriter


class SQLiteLogExporter(_LogExporter):  # type: ignore[misc]
    """Writes each ``export()`` batch of log records to the trace file in one transaction.

    GenAI content events (``gen_ai.client.inference.operation.details`` and the older per-message
    events) go onto their span: its input, output and reasoning text and its events. Every other
    record is stored in the ``logs`` table, linked to its span. Options are those of
    :class:`SQLiteSpanExporter` (with no arguments, from ``OTEL_EXPORTER_SQLITE_*``); ``export()``
    never raises: a batch that cannot be written returns FAILURE and the reason is logged once.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self._setup(Options.resolve(path, options))

    @classmethod
    def from_options(cls, options: Options) -> SQLiteLogExporter:
        """An exporter for options already resolved (those of a span processor, say)."""
        exporter = cls.__new__(cls)
        exporter._setup(options)
        return exporter

    def _setup(self, options: Options) -> None:
        self.options = options
        self._writer: LogWriter | None = None
        self._lock = threading.Lock()
        self._health = WriteHealth(self.options.path, what="log records")
        self._shutdown = False
        on_fork(
            self,
            before=lambda exporter: exporter._lock.acquire(),
            after_in_parent=lambda exporter: exporter._lock.release(),
            after_in_child=SQLiteLogExporter._after_fork_in_child,
        )

    def export(self, batch: Sequence[Any]) -> _Result:
        if self._shutdown:
            return _Result.FAILURE
        with self._lock:
            try:
                if self._writer is None:
                    self._writer = LogWriter(self.options)
                self._writer.write(batch)
            except Exception as exc:  # noqa: BLE001 - the exporter contract forbids raising
                self._health.failure(exc, lost=len(batch))
                return _Result.FAILURE
        self._health.wrote(len(batch))
        return _Result.SUCCESS

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
        """``written`` and ``failed`` records, ``errors`` (failed exports) and the ``last_error``."""
        return self._health.stats()

    def _after_fork_in_child(self) -> None:
        # The parent's connection is not ours to use or close: keep it untouched, open our own.
        self._lock = threading.Lock()
        abandon(self._writer)
        self._writer = None
