"""SQLiteSpanProcessor: spans in at start and at end, background writing, never blocking the app.

The application thread only appends the span to a bounded deque. Background threads do the
rest. The mapper drains the deque in small batches, soon after the spans end (while they are
still in the CPU cache, and before they pile up for the garbage collector to scan), keeps the
latest state of each span (a span that started and ended within one batch is written once), and
turns each batch into JSON rows. The committer writes the batches waiting for it, several to a
transaction. Mapping needs the GIL and committing runs inside SQLite without it, so the two
overlap; prepared rows are plain strings, bounded in total size. A third thread copies the
write-ahead log into the file beside the commits.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_sqlite_exporter import _session
from otel_sqlite_exporter._budget import BudgetMark, BudgetTracker
from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._fork import on_fork
from otel_sqlite_exporter._health import WriteHealth, abandon, logger
from otel_sqlite_exporter._retention import RetentionSweeper
from otel_sqlite_exporter._schema import is_lock_wait
from otel_sqlite_exporter._session import (
    SESSION_ATTRIBUTE,
    USER_ATTRIBUTE,
    add_listener,
    current_session,
    remove_listener,
)
from otel_sqlite_exporter._writer import SessionEvent, TraceWriter, batch_documents, retire_replaced

T = TypeVar("T")

# Start rows give way first when the queue fills: a lost start row only delays when a span
# becomes visible, while a lost end would leave it looking unfinished.
_START_SHARE = 0.9
# Writes failing this many times in a row are given up (counted in stats['failed']).
_ATTEMPTS = 3
# Span events the mapper takes at a time: small, so spans are mapped while still cache-warm.
_MAP_BATCH = 1024
# Transactions are this many times shorter while other writers wait for the file's lock.
_CONTENDED_SHARE = 4
# How long the constructor waits for the file to open (it goes on in the background after).
_OPEN_WAIT_SECONDS = 1.0
# Prepared documents waiting for the committer, in characters.
_PREPARED_BUDGET = 64 * 1024 * 1024


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class SQLiteSpanProcessor(SpanProcessor):
    """Persist every span when it starts and complete it when it ends.

    Options are those of :class:`~otel_sqlite_exporter.SQLiteSpanExporter` plus the queue settings
    (``max_queue_size``, ``max_batch_size``, ``schedule_delay_millis``) and
    ``shutdown_timeout_millis``; explicit arguments win
    over ``OTEL_EXPORTER_SQLITE_*`` environment variables.

    The constructor opens the file (creating it), waiting at most a second; past that, opening
    goes on in the background and spans queue meanwhile.

    With ``budget=TokenBudget(...)`` each ended span's usage is counted against its session on the
    thread that ends it, so a budget callback runs before the application's next step.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self.options = Options.resolve(path, options)
        self._queue: collections.deque[Any] = collections.deque()
        self._limit = self.options.max_queue_size
        self._start_limit = int(self._limit * _START_SHARE)
        # Woken early at half a batch, or half the queue when the queue is smaller.
        self._wake_at = max(1, min(self.options.max_batch_size, _MAP_BATCH, self._limit) // 2)
        self._health = WriteHealth(self.options.path)
        self._dropped = 0
        self._drop_lock = threading.Lock()
        self._drained = 0
        self._batches = 0
        self._shutdown = False
        # When shutdown() stops waiting (monotonic), and whether it did so with spans unwritten.
        self._shutdown_deadline = float("inf")
        self._gave_up = False
        # force_flush() calls waiting; set.add/discard need no lock (a lock held at fork would
        # stay held in the child).
        self._flushing: set[_Flush] = set()
        self._writer: TraceWriter | None = None
        self._open_lock = threading.Lock()
        budget = self.options.budget
        self._budget = None if budget is None else BudgetTracker(budget, self.options.prices)
        # Started once the writer has opened (and so created) the file; stopped by shutdown().
        self._sweeper = RetentionSweeper.from_options(self.options)
        self._start_threads()
        # Opening runs a few hundred statements, and a thread coming back from SQLite waits for
        # the GIL up to a switch interval (5 ms) each time: under a busy application the first
        # open would take seconds while spans pile up. So the file is opened now, while the
        # application is still setting up; past the wait it goes on opening in the background.
        self._opened.wait(_OPEN_WAIT_SECONDS)
        add_listener(self)
        on_fork(
            self,
            before=SQLiteSpanProcessor._before_fork,
            after_in_parent=SQLiteSpanProcessor._after_fork_in_parent,
            after_in_child=SQLiteSpanProcessor._after_fork_in_child,
        )

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
        if self._budget is not None:
            self._budget.learn(span)

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if len(queue) < self._limit and not self._shutdown:
            queue.append(span)
            if len(queue) == self._wake_at:
                self._wake.set()
        elif not self._shutdown:
            self._drop()
        if self._budget is not None:
            self._count(self._budget, span)

    def _count(self, budget: BudgetTracker, span: ReadableSpan) -> None:
        # Counted even when the span itself was dropped: the budget is about what the application
        # spends, not what was stored. Marks follow the span in the queue (so they are applied once
        # it is stored) and bypass the bound like session events: a session has at most three.
        seen = budget.observe(span)
        if seen is None:
            return
        marks, alerts = seen
        if not self._shutdown:
            self._queue.extend(marks)
        budget.notify(alerts)

    def session_event(self, event: SessionEvent) -> None:
        """Called by session() blocks; events bypass the bound, they are few and carry the outcome."""
        if not self._shutdown:
            self._queue.append(event)
            if event.kind == "open" and self._budget is not None:
                mark = self._budget.track(event.session_id)
                if mark is not None:
                    self._queue.append(mark)

    def _drop(self) -> None:
        with self._drop_lock:
            self._dropped += 1

    # -- the SDK contract -----------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Write everything enqueued before this call; False if that took longer than the timeout.

        During or after ``shutdown()`` it waits for the shutdown to finish (never past either
        timeout) and returns False if the shutdown gave up with spans unwritten.
        """
        timeout = max(timeout_millis, 0) / 1000
        marker = _Flush()
        flushing = self._flushing
        # Registered before the checks below: a shutdown giving up either sees this marker and
        # releases it, or has already set _gave_up.
        flushing.add(marker)
        try:
            if self._shutdown:
                return self._wait_for_shutdown(timeout)
            self._queue.append(marker)
            self._wake.set()
            if self._shutdown:
                # Shut down meanwhile: the writer may have finished before the marker came.
                return self._wait_for_shutdown(timeout)
            return marker.done.wait(timeout) and not self._gave_up
        finally:
            flushing.discard(marker)

    def shutdown(self) -> None:
        """Write everything queued, stop the writer and close the file. Later spans are ignored.

        Waits at most ``shutdown_timeout_millis``. If the writing is not done by then (another
        process holding the file's write lock, a stalled disk), it returns anyway: the span starts
        and ends still queued or being written count as ``dropped`` in :attr:`stats` (and are logged
        once), and the background threads, daemons, do not keep the interpreter from exiting.
        """
        if self._shutdown:
            return
        self._shutdown_deadline = time.monotonic() + self.options.shutdown_timeout_millis / 1000
        self._shutdown = True
        remove_listener(self)
        self._wake.set()
        if not self._join_threads(self._shutdown_deadline):
            self._give_up()
        if self._sweeper is not None:
            # A sweep ends after its current transaction; bounded like the rest of the shutdown.
            self._sweeper.stop(min(5.0, max(0.0, self._shutdown_deadline - time.monotonic())))

    def _join_threads(self, deadline: float) -> bool:
        """Wait for both background threads to finish, until ``deadline``; True if they did."""
        threads = (self._thread, self._committer)
        for thread in threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() and t is not threading.current_thread() for t in threads)

    def _wait_for_shutdown(self, timeout: float) -> bool:
        deadline = min(time.monotonic() + timeout, self._shutdown_deadline)
        return self._join_threads(deadline) and not self._gave_up

    def _give_up(self) -> None:
        self._gave_up = True
        for marker in list(self._flushing):
            marker.done.set()
        stats = self.stats
        logger.error(
            "otel-sqlite-exporter: shutdown of the writer to %s gave up after %d ms with %d span starts "
            "and ends unwritten (counted in stats['dropped']; last write error: %s)",
            self.options.path,
            self.options.shutdown_timeout_millis,
            stats["dropped"] - self._dropped,
            stats["last_error"] or "none",
        )

    @property
    def stats(self) -> dict[str, Any]:
        """Span events (each span is enqueued at start and at end) through the pipeline.

        ``enqueued`` accepted, ``written`` committed, ``dropped`` refused because the queue was
        full (or still unwritten when ``shutdown()`` gave up waiting), ``failed`` lost to write
        errors, ``queued`` waiting now; ``errors`` counts failed write attempts and ``last_error``
        says why the latest one failed.
        """
        health = self._health.stats()
        queued = len(self._queue)
        enqueued = self._drained + queued
        dropped = self._dropped
        if self._gave_up:
            # Accepted but neither written nor failed: lost with the process. Threads left behind
            # may still write some later; they then move from dropped to written. Only spans
            # count (the queue also holds session events and flush markers); copying the deque
            # is one C call, so the mapper cannot change it meanwhile.
            spans = sum(isinstance(item, ReadableSpan) for item in self._queue.copy())
            settled = health["written"] + health["failed"]
            dropped += max(0, self._drained + spans - settled)
            enqueued, queued = settled, 0
        return {
            "enqueued": enqueued,
            "written": health["written"],
            "dropped": dropped,
            "failed": health["failed"],
            "errors": health["errors"],
            "queued": queued,
            "batches": self._batches,
            "last_error": health["last_error"],
        }

    # -- the background threads -------------------------------------------------------------------

    def _start_threads(self) -> None:
        self._wake = threading.Event()
        self._opened = threading.Event()
        self._prepared: collections.deque[_Batch | None] = collections.deque()
        self._prepared_bytes = 0
        self._prepared_cv = threading.Condition()
        self._thread = threading.Thread(target=self._map_loop, name="otel-sqlite-map", daemon=True)
        self._committer = threading.Thread(target=self._commit_loop, name="otel-sqlite-commit", daemon=True)
        self._checkpoint_wake = threading.Event()
        self._checkpointing = True
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="otel-sqlite-checkpoint", daemon=True
        )
        self._thread.start()
        self._committer.start()
        self._checkpointer.start()

    def _map_loop(self) -> None:
        try:
            self._open()
        except Exception:  # noqa: BLE001 - reported by the first batch, which opens it again
            pass
        self._opened.set()
        delay = self.options.schedule_delay_millis / 1000
        while True:
            if len(self._queue) < self._wake_at and not self._shutdown:
                self._wake.wait(delay)
                self._wake.clear()
            self._drain()
            if self._shutdown and not self._queue:
                break
        self._hand_over(None)

    def _drain(self) -> None:
        """Prepare what is queued now, a small batch at a time, and hand each to the committer."""
        queue = self._queue
        while queue:
            latest: dict[int, ReadableSpan] = {}
            events: list[SessionEvent] = []
            marks: list[BudgetMark] = []
            flushes: list[_Flush] = []
            count = 0
            while queue and count < _MAP_BATCH:
                item = queue.popleft()
                if isinstance(item, ReadableSpan):
                    ctx = item.context
                    latest[ctx.trace_id << 64 | ctx.span_id] = item
                    count += 1
                elif isinstance(item, SessionEvent):
                    events.append(item)
                elif isinstance(item, BudgetMark):
                    marks.append(item)
                else:
                    flushes.append(item)
            self._drained += count
            payload = None
            if latest:
                # Mapping stores a new resource, for which another process may hold the write
                # lock a while; a file that cannot be opened fails the batch at once.
                prepared = self._attempt(count, self._prepare, latest.values(), retry=is_lock_wait)
                if prepared is None:
                    count = 0
                else:
                    payload = prepared[0]
            del latest  # the spans can go now, while they are young
            self._hand_over(_Batch(payload, events, flushes, count, marks))

    def _hand_over(self, batch: _Batch | None) -> None:
        size = len(batch.payload) if batch is not None and batch.payload is not None else 0
        with self._prepared_cv:
            # Past the budget the mapper waits; the span queue, bounded, then takes the strain.
            while self._prepared_bytes > _PREPARED_BUDGET and self._prepared:
                self._prepared_cv.wait()
            self._prepared.append(batch)
            self._prepared_bytes += size
            self._prepared_cv.notify_all()

    def _take(self) -> tuple[list[_Batch], bool]:
        """The batches waiting (up to one transaction's worth), and whether the mapper has finished.

        Each transaction costs the committer a wait for the GIL, so it gathers half a
        transaction's worth first, unless a flush or the end is waiting, or the schedule delay
        has passed since the first batch arrived.
        """
        writer = self._writer
        # While other writers wait for the file's lock too, shorter transactions give them turns
        # more often (see TraceWriter.yield_turn).
        most = self.options.max_batch_size
        if writer is not None and writer.contended:
            most = max(1, most // _CONTENDED_SHARE)
        wanted = most // 2
        delay = self.options.schedule_delay_millis / 1000
        with self._prepared_cv:
            deadline: float | None = None
            while True:
                prepared = self._prepared
                if prepared:
                    if deadline is None:
                        deadline = time.monotonic() + delay
                    if (
                        time.monotonic() >= deadline
                        or sum(b.count for b in prepared if b is not None) >= wanted
                        or any(b is None or b.flushes for b in prepared)
                    ):
                        break
                self._prepared_cv.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            taken: list[_Batch] = []
            count = 0
            while self._prepared and count < most:
                batch = self._prepared.popleft()
                if batch is None:
                    self._prepared_cv.notify_all()
                    return taken, True
                taken.append(batch)
                count += batch.count
                self._prepared_bytes -= len(batch.payload) if batch.payload is not None else 0
            self._prepared_cv.notify_all()
            return taken, False

    def _commit_loop(self) -> None:
        finished = False
        while not finished:
            batches, finished = self._take()
            flushes = [marker for batch in batches for marker in batch.flushes]
            if batches:
                self._commit(batches)
            for marker in flushes:
                marker.done.set()
            writer = self._writer  # the mapper may open one meanwhile
            if writer is not None and not finished:
                writer.yield_turn()
            if writer is not None and writer.log_overdue():
                self._copy_log(writer, between_commits=True)  # so the log can start over
            # Once shutdown() is called the application makes no more spans: the log is copied
            # beside each of the last commits, leaving little for the copy when the file closes.
            elif writer is not None and writer.checkpoint_due(idle=self._shutdown or not self._prepared):
                self._checkpoint_wake.set()
        self._checkpointing = False
        self._checkpoint_wake.set()
        self._checkpointer.join()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _checkpoint_loop(self) -> None:
        # Copying the log into the file waits mostly for the disk: here it overlaps the commits
        # instead of holding them up. (Not at a lower CPU priority: starved while it holds one
        # of SQLite's locks on the log, it would hold up every writer of the file.)
        while self._checkpointing:
            self._checkpoint_wake.wait()
            self._checkpoint_wake.clear()
            writer = self._writer
            if writer is not None and self._checkpointing:
                self._copy_log(writer)

    def _copy_log(self, writer: TraceWriter, *, between_commits: bool = False) -> None:
        try:
            writer.copy_log(between_commits=between_commits)
        except Exception as exc:  # noqa: BLE001 - a checkpoint can wait for the next one
            self._health.retrying(exc)

    def _commit(self, batches: list[_Batch]) -> None:
        """Write the batches in one transaction. Empties ``batches``: their rows are freed before
        the SQL runs, leaving only the joined documents (a burst's memory peaks here)."""
        documents = batch_documents(b.payload for b in batches)
        events = [event for b in batches for event in b.events]
        marks = [mark for b in batches for mark in b.marks]
        count = sum(b.count for b in batches)
        batches.clear()
        if not documents and not events and not marks:
            return
        if self._attempt(count, self._commit_once, documents, events, marks) is not None:
            self._health.wrote(count)
            self._batches += 1

    def _prepare(self, spans: Iterable[ReadableSpan]) -> str | None:
        return self._open().prepare(spans)

    def _commit_once(self, documents: list[str], events: list[SessionEvent], marks: list[BudgetMark]) -> None:
        self._open(check=True).commit(documents, events, marks)

    def _attempt(
        self, count: int, step: Callable[..., T], *args: Any, retry: Callable[[Exception], bool] | None = None
    ) -> tuple[T] | None:
        """``(step(*args),)``, tried up to _ATTEMPTS times (only while ``retry``, if given, says the
        error is worth another try); None when it failed for good, the ``count`` span events then
        counted as failed."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return (step(*args),)
            except Exception as exc:  # noqa: BLE001 - a failed write must never stop the writer
                if attempt == _ATTEMPTS or (retry is not None and not retry(exc)):
                    self._health.failure(exc, lost=count)
                    return None
                # Counted, not logged: a lock another writer held past the busy timeout, say,
                # is no news to the application when the next attempt gets through.
                self._health.retrying(exc)
                time.sleep(0.05 * attempt)
        return None

    def _open(self, *, check: bool = False) -> TraceWriter:
        """The writer, opened by whichever thread needs it first (the lock keeps the two from
        opening it twice). With ``check`` (the committer, before each transaction), a writer whose
        file was removed or replaced is closed and the path opened anew; if that fails, the error
        goes to the caller and the next transaction tries again."""
        with self._open_lock:
            writer = self._writer
            if check and writer is not None and writer.replaced():
                self._writer = None
                # Batches the mapper prepared for the old file go to the new one (their resource
                # ids may name no row there: those spans lack resource attributes).
                retire_replaced(writer, self._health)
            if self._writer is None:
                self._writer = TraceWriter(self.options)
                if self._sweeper is not None:
                    self._sweeper.start()
            return self._writer

    def _before_fork(self) -> None:
        # Wait until neither thread is inside SQLite (opening the file, or writing to it).
        self._open_lock.acquire()
        if self._writer is not None:
            self._writer.busy.acquire()
            self._writer.copying.acquire()

    def _after_fork_in_parent(self) -> None:
        if self._writer is not None:
            self._writer.copying.release()
            self._writer.busy.release()
        self._open_lock.release()

    def _after_fork_in_child(self) -> None:
        # The parent still owns its queue, threads and connections; the child starts clean.
        abandon(self._writer)
        self._writer = None
        self._open_lock = threading.Lock()
        self._queue = collections.deque()
        self._drained = 0
        self._drop_lock = threading.Lock()
        self._health = WriteHealth(self.options.path)
        self._flushing = set()
        self._gave_up = False
        self._shutdown_deadline = float("inf")
        if self._budget is not None:
            self._budget.after_fork()
        if not self._shutdown:
            self._start_threads()


@dataclass(frozen=True, slots=True)
class _Batch:
    payload: str | None
    events: list[SessionEvent]
    flushes: list[_Flush]
    count: int  # span events in the batch
    marks: list[BudgetMark]
