"""SQLiteSpanExporter: the SDK's SpanExporter contract, for use behind BatchSpanProcessor or with
``OTEL_TRACES_EXPORTER=sqlite``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_sqlite_exporter._budget import BudgetAlert, BudgetMark, BudgetTracker
from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._file_exporter import FileExporter
from otel_sqlite_exporter._retention import RetentionSweeper
from otel_sqlite_exporter._writer import TraceWriter, batch_documents, retire_replaced


class SQLiteSpanExporter(FileExporter, SpanExporter):
    """Writes each ``export()`` batch to the trace file in one transaction.

    With no arguments every option comes from ``OTEL_EXPORTER_SQLITE_*`` (the SDK's
    auto-configuration constructs it that way). ``export()`` never raises: a batch that cannot be
    written returns ``SpanExportResult.FAILURE`` and the reason is logged once.

    With ``budget=TokenBudget(...)`` the spans of each batch are counted against their sessions
    and the budget's callbacks run on the exporting thread, after the batch's write.
    """

    _writer: TraceWriter | None

    def __init__(self, path: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self._start(Options.resolve(path, options), what="spans")
        budget = self.options.budget
        self._budget = None if budget is None else BudgetTracker(budget, self.options.prices)
        # Started once the writer has opened (and so created) the file; stopped by shutdown().
        self._sweeper = RetentionSweeper.from_options(self.options)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        marks: list[BudgetMark] = []
        alerts: list[BudgetAlert] = []
        if self._budget is not None:
            self._count(self._budget, spans, marks, alerts)
        try:
            with self._lock:
                try:
                    writer = self._open()
                    unmappable = writer.unmappable
                    writer.commit(batch_documents([writer.prepare(spans)]), marks=marks)
                    skipped = writer.unmappable - unmappable
                except Exception as exc:  # noqa: BLE001 - the exporter contract forbids raising
                    self._health.failure(exc, lost=len(spans))
                    return SpanExportResult.FAILURE
                try:
                    writer.checkpoint(idle=False)
                except Exception as exc:  # noqa: BLE001 - committed: a checkpoint can wait for the next one
                    self._health.failure(exc, lost=0)
        finally:
            # Outside the lock: a callback may itself end spans that reach this exporter.
            if alerts:
                self._budget.notify(alerts)  # type: ignore[union-attr]
        self._health.skipped(skipped)
        self._health.wrote(len(spans) - skipped)
        return SpanExportResult.SUCCESS

    @staticmethod
    def _count(
        budget: BudgetTracker,
        spans: Sequence[ReadableSpan],
        marks: list[BudgetMark],
        alerts: list[BudgetAlert],
    ) -> None:
        # No on_start here: each trace's session is learned from the batch first, in start order
        # as the processor would, then usage is counted in end order (children before parents).
        for span in sorted(spans, key=lambda s: s.start_time or 0):
            budget.learn(span)
        for span in spans:
            seen = budget.observe(span)
            if seen is not None:
                marks.extend(seen[0])
                alerts.extend(seen[1])

    def shutdown(self) -> None:
        super().shutdown()
        if self._sweeper is not None:
            self._sweeper.stop()

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        if self._budget is not None:
            self._budget.after_fork()

    def _open(self) -> TraceWriter:
        # Before each export (one stat): a file removed or replaced is left, and the path opened anew.
        writer = self._writer
        if writer is not None and writer.replaced():
            self._writer = None
            retire_replaced(writer, self._health)
        if self._writer is None:
            self._writer = TraceWriter(self.options)
            if self._sweeper is not None:
                self._sweeper.start()
        return self._writer
