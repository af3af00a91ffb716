"""SQLiteLogExporter: the SDK's log exporter contract, for use behind BatchLogRecordProcessor or
with ``OTEL_LOGS_EXPORTER=sqlite``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

try:  # SDK 1.39 and later
    from opentelemetry.sdk._logs.export import LogRecordExporter as _LogExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult as _Result
except ImportError:  # earlier SDKs
    from opentelemetry.sdk._logs.export import LogExporter as _LogExporter  # type: ignore[assignment]
    from opentelemetry.sdk._logs.export import LogExportResult as _Result  # type: ignore[assignment]

from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._file_exporter import FileExporter
from otel_sqlite_exporter._logs import LogWriter


class SQLiteLogExporter(FileExporter, _LogExporter):  # type: ignore[misc]
    """Writes each ``export()`` batch of log records to the trace file in one transaction.

    GenAI content events (``gen_ai.client.inference.operation.details`` and the older per-message
    events) go onto their span: its input, output and reasoning text and its events. Every other
    record is stored in the ``logs`` table, linked to its span. Options are those of
    :class:`SQLiteSpanExporter` (with no arguments, from ``OTEL_EXPORTER_SQLITE_*``); ``export()``
    never raises: a batch that cannot be written returns FAILURE and the reason is logged once.
    """

    _writer: LogWriter | None

    def __init__(self, path: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self._start(Options.resolve(path, options), what="log records")

    @classmethod
    def from_options(cls, options: Options) -> SQLiteLogExporter:
        """An exporter for options already resolved (those of a span processor, say)."""
        exporter = cls.__new__(cls)
        exporter._start(options, what="log records")
        return exporter

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
