"""SQLiteSpanProcessor: spans in at start and at end, one background writer, never blocking the app.

The application thread only appends the span to a bounded deque. The writer thread drains it,
keeps the latest state of each span (a span that started and ended within one batch is written
once), maps the spans and commits each batch in one transaction.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_sqlite_exporter import _session
from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._health import WriteHealth, abandon
from otel_sqlite_exporter._session import (
    SESSION_ATTRIBUTE,
    USER_ATTRIBUTE,
    add_listener,
    current_session,
    remove_listener,
)
from otel_sqlite_exporter._writer import SessionEvent, TraceWriter

logger = logging.getLogger("otel_sqlite_exporter")

# Start rows give way first when the queue fills: a lost start row only delays when a span
# becomes visible, while a lost end would leave it looking unfinished.
_START_SHARE = 0.9
# Writes failing this many times in a row are given up (counted in stats['failed']).
_ATTEMPTS = 3


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class SQLiteSpanProcessor(SpanProcessor):
    """Persist every span when it starts and complete it when it ends.

    Options are those of :class:`~otel_sqlite_exporter.SQLiteSpanExporter` plus the queue settings
    (``max_queue_size``, ``max_batch_size``, ``schedule_delay_millis``); explicit arguments win
    over ``OTEL_EXPORTER_SQLITE_*`` environment variables.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self.options = Options.resolve(path, options)
        self._queue: collections.deque[Any] = collections.deque()
        self._limit = self.options.max_queue_size
        self._start_limit = int(self._limit * _START_SHARE)
        self._wake_at = max(1, min(self.options.max_batch_size // 2, 2048))
        self._health = WriteHealth(self.options.path)
        self._dropped = 0
        self._drop_lock = threading.Lock()
        self._drained = 0
        self._batches = 0
        self._shutdown = False
        self._writer: TraceWriter | None = None
        self._start_thread()
        add_listener(self)
        _register_fork_handler(self)

    # -- the application thread: enqueue and return ----------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        active = current_session(parent_context) if _session.any_open() else None
        if active is not None:
            attrs = span.attributes
            if attrs is None or SESSION_ATTRIBUTE not in attrs:
                span.set_attribute(SESSION_ATTRIBUTE, active.session_id)
                if active.user_id is not None and (attrs is None or USER_ATTRIBUTE not in attrs):
                    span.set_attribute(USER_ATTRIBUTE, active.user_id)
        queue = self._queue
        if len(queue) < self._start_limit and not self._shutdown:
            queue.append(span)
            if len(queue) == self._wake_at:
                self._wake.set()
        elif not self._shutdown:
            self._drop()

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if len(queue) < self._limit and not self._shutdown:
            queue.append(span)
            if len(queue) == self._wake_at:
                self._wake.set()
        elif not self._shutdown:
            self._drop()

    def session_event(self, event: SessionEvent) -> None:
        """Called by session() blocks; events bypass the bound, they are few and carry the outcome."""
        if not self._shutdown:
            self._queue.append(event)

    def _drop(self) -> None:
        with self._drop_lock:
            self._dropped += 1

    # -- the SDK contract -----------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Write everything enqueued before this call; False if that took longer than the timeout."""
        if self._shutdown:
            return True
        marker = _Flush()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(max(timeout_millis, 0) / 1000)

    def shutdown(self) -> None:
        """Write everything queued, stop the writer and close the file. Later spans are ignored."""
        if self._shutdown:
            return
        self._shutdown = True
        remove_listener(self)
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def stats(self) -> dict[str, Any]:
        """Span events (each span is enqueued at start and at end) through the pipeline.

        ``enqueued`` accepted, ``written`` committed, ``dropped`` refused because the queue was
        full, ``failed`` lost to write errors, ``queued`` waiting now; ``errors`` counts failed
        write attempts and ``last_error`` says why the latest one failed.
        """
        health = self._health.stats()
        queued = len(self._queue)
        return {
            "enqueued": self._drained + queued,
            "written": health["written"],
            "dropped": self._dropped,
            "failed": health["failed"],
            "errors": health["errors"],
            "queued": queued,
            "batches": self._batches,
            "last_error": health["last_error"],
        }

    # -- the writer thread ----------------------------------------------------------------------

    def _start_thread(self) -> None:
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otel-sqlite-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self.options.schedule_delay_millis / 1000
        while True:
            if len(self._queue) < self._wake_at and not self._shutdown:
                self._wake.wait(delay)
                self._wake.clear()
            self._drain()
            if self._shutdown and not self._queue:
                break
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _drain(self) -> None:
        """Write what is queued now, a batch at a time, releasing flush markers as they are reached."""
        queue = self._queue
        while queue:
            latest: dict[tuple[int, int], ReadableSpan] = {}
            events: list[SessionEvent] = []
            flushes: list[_Flush] = []
            count = 0
            budget = self.options.max_batch_size
            while queue and count < budget:
                item = queue.popleft()
                if isinstance(item, ReadableSpan):
                    ctx = item.context
                    latest[(ctx.trace_id, ctx.span_id)] = item
                    count += 1
                elif isinstance(item, SessionEvent):
                    events.append(item)
                else:
                    flushes.append(item)
            self._drained += count
            if latest or events:
                self._write(list(latest.values()), events, count)
            for marker in flushes:
                marker.done.set()

    def _write(self, spans: Sequence[ReadableSpan], events: Sequence[SessionEvent], count: int) -> None:
        for attempt in range(_ATTEMPTS):
            try:
                writer = self._open()
                writer.write(spans, events)
            except Exception as exc:  # noqa: BLE001 - a failed write must never stop the writer
                self._health.failure(exc, lost=count if attempt == _ATTEMPTS - 1 else 0)
                if attempt < _ATTEMPTS - 1:
                    time.sleep(0.05 * (attempt + 1))
                continue
            self._health.wrote(count)
            self._batches += 1
            return

    def _open(self) -> TraceWriter:
        if self._writer is None:
            self._writer = TraceWriter(self.options)
        return self._writer

    def _after_fork_in_child(self) -> None:
        # The parent still owns its queue, thread and connection; the child starts clean.
        abandon(self._writer)
        self._writer = None
        self._queue = collections.deque()
        self._drained = 0
        self._drop_lock = threading.Lock()
        self._health = WriteHealth(self.options.path)
        if not self._shutdown:
            self._start_thread()


def _register_fork_handler(processor: SQLiteSpanProcessor) -> None:
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.ref(processor)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork_in_child()

    os.register_at_fork(after_in_child=after_in_child)
