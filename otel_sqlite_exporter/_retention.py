"""Retention: old sessions leave the trace file whole, in small transactions, and the file shrinks.

What goes is decided per session, by its last activity (the latest start or end of any of its
spans, or of the session itself): a session goes with all its traces, spans, full-text rows and
pending usage marks. A running session is never deleted; one whose process died, or that has been
silent for ``stale_after_seconds``, is first marked ``interrupted`` (its open spans then read as
interrupted) and ages like any other.

Why small transactions: SQLite has one writer at a time, and a writer that finds the lock taken
sleeps in growing steps (1, 2, 5, 10, 15, 20, 25, 25, 50 ... ms) until it gets it. Each delete
transaction is kept to about ``_TARGET_SECONDS`` and followed by a pause at least as long, so a
waiting writer's next try falls into a pause: writers in this and other processes keep committing
while millions of spans are deleted. Several whole small sessions share a transaction; a session
larger than ``batch_size`` spans is deleted over several, newest spans first (a child never starts
before its parent), so what is left at every commit is still a connected tree whose rollups count
exactly the spans still there. A sweep stopped or crashed half way is finished by the next one.

Space goes back to the file system with ``PRAGMA incremental_vacuum`` (files are created with
incremental auto-vacuum), in small steps too, and a checkpoint that never waits for readers: a
reader holding an old snapshot only postpones the shrink to a later sweep.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from otel_sqlite_exporter._exceptions import ConfigurationError, TraceFileError
from otel_sqlite_exporter._fork import on_fork
from otel_sqlite_exporter._health import abandon
from otel_sqlite_exporter._normalize import COUNT_SLOTS
from otel_sqlite_exporter._owners import process_alive
from otel_sqlite_exporter._records import _INT64_MIN, _Record, from_ns
from otel_sqlite_exporter._schema import connect, open_reader

if TYPE_CHECKING:
    from otel_sqlite_exporter._config import Options

logger = logging.getLogger("otel_sqlite_exporter")

#: Days a session is kept when the file's settings say nothing else.
DEFAULT_RETENTION_DAYS = 30
RETENTION_SETTING = "retention_days"
#: When a sweep last started (Unix nanoseconds): background sweepers of several processes sharing
#: one file take turns instead of all sweeping at once.
LAST_SWEEP_SETTING = "last_sweep_unix_nano"

_DAY_NS = 86_400 * 1_000_000_000
# How long one delete (or vacuum) transaction should hold the write lock, and the shortest pause
# after it: a writer kept waiting tries again within a few busy-handler steps.
_TARGET_SECONDS = 0.01
_MIN_PAUSE_SECONDS = 0.01
# The fewest spans (or pages) a transaction takes, however slow the disk.
_MIN_CHUNK = 16
# Candidate sessions read per query.
_PAGE = 500
# Stale sessions marked interrupted per transaction (a statement each).
_MARK_PAGE = 50
_VACUUM_STEP_PAGES = 256
# The sweep's own deletes pile up in the write-ahead log: copy it back into the file (without
# waiting for anyone) whenever it has grown past this.
_CHECKPOINT_WAL_BYTES = 32 * 1024 * 1024
# Checkpoints tried at the end of a sweep until one copies the whole log back.
_CHECKPOINT_ATTEMPTS = 20
# The schema version that has last activity and owners.
_RETENTION_SCHEMA = 3

_TOKENS = COUNT_SLOTS
_COUNTED = "FILTER (WHERE s.has_usage = 1 AND s.usage_below = 0)"
# The share of the rollups carried by the spans about to go (those listed in temp.sweep_spans).
_DOOMED_USAGE = f"""count(*) AS n, count(*) FILTER (WHERE s.status_code = 'ERROR') AS errors,
    {", ".join(f"coalesce(sum(s.{c}) {_COUNTED}, 0) AS {c}" for c in _TOKENS)},
    sum(s.cost_usd) {_COUNTED} AS cost_usd
    FROM spans AS s WHERE s.id IN (SELECT id FROM temp.sweep_spans)"""


def _minus(table: str) -> str:
    # A cost never goes below zero through float rounding; it keeps the precision prices have.
    return f"""span_count = {table}.span_count - d.n, error_count = {table}.error_count - d.errors,
    {", ".join(f"{c} = {table}.{c} - d.{c}" for c in _TOKENS)},
    cost_usd = CASE WHEN d.cost_usd IS NULL THEN {table}.cost_usd
                    ELSE max(round({table}.cost_usd - d.cost_usd, 10), 0.0) END"""


# The sessions being deleted (``sweep_sessions``, each with the activity seen when it was chosen),
# the span ids of the next batch of a large one (``sweep_spans``), the large one being deleted
# (``sweep_large``), and what each transaction deleted (``sweep_counts``, read after it commits).
# Each transaction's work is one statement (an INSERT into a view, run by its trigger): the
# transaction then holds the write lock across a single return into Python, which another thread
# of the application may keep waiting for the interpreter lock.
_IN_BATCH = "SELECT session_id FROM temp.sweep_sessions"
_LARGE = "(SELECT session_id FROM temp.sweep_large)"
# Still deletable: not running, and no activity since it was chosen.
_STILL_DELETABLE = "se.status != 'running' AND se.last_activity_unix_nano <= {seen}"
_SCRATCH = (
    "CREATE TEMP TABLE IF NOT EXISTS sweep_sessions (session_id TEXT PRIMARY KEY, seen INTEGER NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS sweep_spans (id INTEGER PRIMARY KEY)",
    "CREATE TEMP TABLE IF NOT EXISTS sweep_large (session_id TEXT NOT NULL, seen INTEGER NOT NULL, "
    "size INTEGER NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS sweep_counts (sessions INTEGER, traces INTEGER, spans INTEGER)",
    "CREATE TEMP TABLE IF NOT EXISTS sweep_stale (session_id TEXT PRIMARY KEY, activity, pid, host)",
    "CREATE TEMP VIEW IF NOT EXISTS sweep_whole (go) AS SELECT NULL",
    f"""CREATE TEMP TRIGGER IF NOT EXISTS sweep_whole INSTEAD OF INSERT ON sweep_whole BEGIN
        DELETE FROM sweep_sessions WHERE NOT EXISTS (SELECT 1 FROM sessions AS se
            WHERE se.session_id = sweep_sessions.session_id
              AND {_STILL_DELETABLE.format(seen="sweep_sessions.seen")});
        INSERT INTO sweep_counts (sessions, traces, spans) SELECT
            (SELECT count(*) FROM sweep_sessions),
            (SELECT count(*) FROM traces WHERE session_id IN ({_IN_BATCH})),
            (SELECT count(*) FROM spans WHERE session_id IN ({_IN_BATCH}));
        DELETE FROM spans WHERE session_id IN ({_IN_BATCH});
        DELETE FROM pending_ancestors WHERE trace_id IN
            (SELECT t.trace_id FROM traces AS t WHERE t.session_id IN ({_IN_BATCH}));
        DELETE FROM logs WHERE trace_id IN
            (SELECT t.trace_id FROM traces AS t WHERE t.session_id IN ({_IN_BATCH}));
        DELETE FROM traces WHERE session_id IN ({_IN_BATCH});
        DELETE FROM sessions WHERE session_id IN ({_IN_BATCH});
        DELETE FROM sweep_sessions;
    END""",
    "CREATE TEMP VIEW IF NOT EXISTS sweep_batch (go) AS SELECT NULL",
    f"""CREATE TEMP TRIGGER IF NOT EXISTS sweep_batch INSTEAD OF INSERT ON sweep_batch BEGIN
        -- Active again: what is left of it stays, whole and consistent.
        DELETE FROM sweep_large WHERE NOT EXISTS (SELECT 1 FROM sessions AS se
            WHERE se.session_id = sweep_large.session_id
              AND {_STILL_DELETABLE.format(seen="sweep_large.seen")});
        -- Newest first: a child never starts before its parent, so no span is left without one.
        INSERT INTO sweep_spans (id) SELECT id FROM spans WHERE session_id = {_LARGE}
            ORDER BY start_time_unix_nano DESC, id DESC LIMIT coalesce((SELECT size FROM sweep_large), 0);
        INSERT INTO sweep_counts (sessions, traces, spans) SELECT 0, 0, count(*) FROM sweep_spans;
        -- The rollups lose what the batch carried, so they count exactly the spans still there.
        UPDATE traces SET {_minus("traces")}
            FROM (SELECT s.trace_id, {_DOOMED_USAGE} GROUP BY s.trace_id) AS d
            WHERE traces.trace_id = d.trace_id;
        UPDATE sessions SET {_minus("sessions")}
            FROM (SELECT {_DOOMED_USAGE}) AS d
            WHERE sessions.session_id = {_LARGE} AND d.n > 0;
        DELETE FROM spans WHERE id IN (SELECT id FROM sweep_spans);
        DELETE FROM sweep_spans;
        -- Its last spans gone, its traces and its row go too.
        INSERT INTO sweep_sessions (session_id, seen) SELECT session_id, seen FROM sweep_large
            WHERE NOT EXISTS (SELECT 1 FROM spans WHERE session_id = sweep_large.session_id);
        DELETE FROM sweep_large WHERE session_id IN ({_IN_BATCH});
        INSERT INTO sweep_whole (go) SELECT 1 WHERE EXISTS ({_IN_BATCH});
    END""",
)


_OLD_RECORDS = (
    "DELETE FROM logs WHERE log_id IN (SELECT log_id FROM logs WHERE time_unix_nano < ? LIMIT ?)",
    "DELETE FROM pending_content WHERE id IN "
    "(SELECT id FROM pending_content WHERE received_unix_nano < ? LIMIT ?)",
)

# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepResult(_Record):
    """What one sweep did. ``bytes_reclaimed`` is how much the file (with its write-ahead log)
    actually shrank on disk; ``file_bytes`` is its size afterwards."""

    deleted_sessions: int
    deleted_traces: int
    deleted_spans: int
    bytes_reclaimed: int
    duration_s: float
    #: Running sessions found stale (silent too long, or their process gone) and marked interrupted.
    interrupted_sessions: int = 0
    file_bytes: int = 0
    #: False when the sweep was stopped before it finished (the next sweep carries on).
    complete: bool = True
    #: Write transactions the sweep made, and the longest time one of them held the write lock.
    transactions: int = 0
    longest_transaction_s: float = 0.0

    def __str__(self) -> str:
        from otel_sqlite_exporter._render import plural, size

        parts = [
            f"deleted {plural(self.deleted_sessions, 'session')}, {plural(self.deleted_traces, 'trace')}, "
            f"{plural(self.deleted_spans, 'span')}"
        ]
        if self.interrupted_sessions:
            parts.append(f"marked {plural(self.interrupted_sessions, 'stale running session')} interrupted")
        parts.append(f"reclaimed {size(self.bytes_reclaimed)} (file now {size(self.file_bytes)})")
        ending = "" if self.complete else " (stopped early; the next sweep carries on)"
        return (
            "retention sweep: "
            + "; ".join(parts)
            + f" in {self.duration_s:.2f} s ({plural(self.transactions, 'transaction')}, the longest "
            f"{self.longest_transaction_s * 1000:.0f} ms){ending}"
        )


@dataclass(frozen=True, slots=True)
class PlannedDeletion(_Record):
    """A session a sweep would delete, and why: ``age`` (older than the retention period) or
    ``size`` (among the oldest while the file is over ``max_db_bytes``)."""

    session_id: str
    task: str | None
    status: str
    last_activity: datetime | None
    traces: int
    spans: int
    reason: str


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """What a sweep would do now, computed without changing anything (a dry run).

    Size-driven choices are an estimate: the file's live size is spread over its spans.
    """

    path: str
    retention_days: int
    #: Sessions with no activity since this time go by age (None when kept forever).
    cutoff: datetime | None
    max_db_bytes: int | None
    file_bytes: int
    live_bytes: int
    sessions: list[PlannedDeletion] = field(default_factory=list)
    #: Running sessions that would be marked interrupted first.
    interrupted: list[str] = field(default_factory=list)

    @property
    def deleted_sessions(self) -> int:
        return len(self.sessions)

    @property
    def deleted_traces(self) -> int:
        return sum(p.traces for p in self.sessions)

    @property
    def deleted_spans(self) -> int:
        return sum(p.spans for p in self.sessions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "retention_days": self.retention_days,
            "cutoff": None if self.cutoff is None else self.cutoff.isoformat().replace("+00:00", "Z"),
            "max_db_bytes": self.max_db_bytes,
            "file_bytes": self.file_bytes,
            "live_bytes": self.live_bytes,
            "deleted_sessions": self.deleted_sessions,
            "deleted_traces": self.deleted_traces,
            "deleted_spans": self.deleted_spans,
            "interrupted": list(self.interrupted),
            "sessions": [p.to_dict() for p in self.sessions],
        }


@dataclass
class _Tally:
    sessions: int = 0
    traces: int = 0
    spans: int = 0
    interrupted: int = 0
    transactions: int = 0
    longest: float = 0.0


class _StoppedError(Exception):
    """The sweeper was asked to stop: the sweep ends between two transactions."""


# -- settings ------------------------------------------------------------------------------------


def check_days(value: object, name: str = "retention_days") -> int:
    """``value`` as a number of days to keep (0 keeps everything), or ``ConfigurationError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"{name}: expected a whole number of days >= 0 (0 keeps everything), got {value!r}"
        )
    return value


def read_retention_days(conn: sqlite3.Connection, path: str) -> int:
    """The file's retention setting (the default when it has none)."""
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (RETENTION_SETTING,)).fetchone()
    if row is None or row[0] is None:
        return DEFAULT_RETENTION_DAYS
    text = str(row[0]).strip()
    if not text.isascii() or not text.isdigit():
        raise TraceFileError(
            path,
            f"the setting {RETENTION_SETTING} = {row[0]!r} is not a whole number of days >= 0; "
            "set it with: otel-sqlite settings retention-days N",
        )
    return int(text)


def write_retention_days(conn: sqlite3.Connection, days: int) -> None:
    _set(conn, RETENTION_SETTING, check_days(days))


# -- the sweeper ---------------------------------------------------------------------------------


class RetentionSweeper:
    """Deletes sessions older than the retention period (and, with ``max_db_bytes``, the oldest
    sessions while the file is larger), gives the space back, and marks stale running sessions
    interrupted: once per ``interval_seconds`` in a daemon thread (``start()``/``stop()``, or use
    it as a context manager), or once with ``sweep_once()``.

    ``retention_days=None`` uses the file's setting (``TraceStore.set_retention_days``, default
    30); 0 keeps sessions forever by age (``max_db_bytes`` still applies). ``max_db_bytes`` takes
    a number of bytes or text like ``"500MB"``. At most ``batch_size`` spans go per transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_days: int | None = None,
        max_db_bytes: int | str | None = None,
        interval_seconds: float = 3600,
        batch_size: int = 500,
        stale_after_seconds: float = 3600,
        busy_timeout_millis: int = 10_000,
    ) -> None:
        from otel_sqlite_exporter._config import parse_size

        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigurationError(f"path must be a non-empty file path, got {path!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.retention_days = None if retention_days is None else check_days(retention_days)
        if max_db_bytes is not None:
            try:
                max_db_bytes = parse_size(max_db_bytes)
            except ValueError as exc:
                raise ConfigurationError(f"max_db_bytes={max_db_bytes!r}: {exc}") from None
        self.max_db_bytes: int | None = max_db_bytes
        self.interval_seconds = _positive(interval_seconds, "interval_seconds")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size: expected a whole number of spans >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.stale_after_seconds = _positive(stale_after_seconds, "stale_after_seconds", allow_zero=True)
        if (
            isinstance(busy_timeout_millis, bool)
            or not isinstance(busy_timeout_millis, int)
            or busy_timeout_millis < 0
        ):
            raise ConfigurationError(
                f"busy_timeout_millis: expected a whole number >= 0, got {busy_timeout_millis!r}"
            )
        self.busy_timeout_millis = busy_timeout_millis
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0
        self._host = socket.gethostname()
        self._chunk = batch_size
        self._vacuum_step = _VACUUM_STEP_PAGES
        self._resume_at = 0.0  # monotonic time when the next paced transaction may begin
        self._tally = _Tally()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # One sweep at a time; ``_busy`` is held only while inside SQLite (fork waits for it).
        self._sweep_lock = threading.Lock()
        self._busy = threading.Lock()
        # stop() interrupts only a statement run under _interruptible(): never the bookkeeping after
        # a commit, which would lose the count of what that commit deleted.
        self._interrupt_guard = threading.Lock()
        self._interruptible_now = False
        on_fork(
            self,
            before=lambda sweeper: sweeper._busy.acquire(),
            after_in_parent=lambda sweeper: sweeper._busy.release(),
            after_in_child=RetentionSweeper._after_fork_in_child,
        )

    @classmethod
    def from_options(cls, options: Options) -> RetentionSweeper | None:
        """The sweeper a processor or exporter starts for ``options``: None unless
        ``retention_days`` or ``max_db_bytes`` is set. An explicit ``retention_days`` wins over the
        file's setting for this sweeper."""
        if options.retention_days is None and options.max_db_bytes is None:
            return None
        return cls(
            options.path,
            retention_days=options.retention_days,
            max_db_bytes=options.max_db_bytes,
            interval_seconds=options.sweep_interval_seconds,
            stale_after_seconds=options.stale_after_seconds,
            busy_timeout_millis=options.busy_timeout_millis,
        )

    def __repr__(self) -> str:
        return (
            f"RetentionSweeper({self.path!r}, retention_days={self.retention_days!r}, "
            f"max_db_bytes={self.max_db_bytes!r}, interval_seconds={self.interval_seconds!r})"
        )

    # -- the background thread -------------------------------------------------------------------

    def start(self) -> RetentionSweeper:
        """Sweep now and then every ``interval_seconds`` in a daemon thread (until ``stop()``)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otel-sqlite-retention", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread without waiting out the interval; a sweep in progress ends after (or,
        interrupted, instead of) its current transaction. Closes the connection."""
        self._stop.set()
        thread = self._thread
        with self._interrupt_guard:
            conn = self._conn
            if self._interruptible_now and conn is not None and self._conn_pid == os.getpid():
                conn.interrupt()  # a long statement (a checkpoint) ends now; its transaction rolls back
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._thread = None
            self.close()

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> RetentionSweeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def close(self) -> None:
        """Close the sweeper's connection (it is opened again by the next sweep)."""
        with self._sweep_lock, self._busy:
            conn, self._conn = self._conn, None
            if conn is not None and self._conn_pid == os.getpid():
                try:
                    conn.close()
                except sqlite3.Error:
                    pass

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                with self._sweep_lock:
                    self._sweep(turn=True)
            except Exception as exc:  # the thread must outlive any failed sweep
                if stop.is_set():
                    break
                if isinstance(exc, (sqlite3.Error, TraceFileError, OSError)):
                    logger.warning(
                        "otel-sqlite-exporter: retention sweep of %s failed (%s); trying again in %g s",
                        self.path,
                        exc,
                        self.interval_seconds,
                    )
                else:
                    logger.exception("otel-sqlite-exporter: retention sweep of %s failed", self.path)
            stop.wait(self.interval_seconds)

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its connection is not ours to use or close.
        self._busy = threading.Lock()
        self._sweep_lock = threading.Lock()
        self._interrupt_guard = threading.Lock()
        self._interruptible_now = False
        self._thread = None
        abandon(self._conn)
        self._conn = None

    # -- one sweep ---------------------------------------------------------------------------------

    def sweep_once(self) -> SweepResult:
        """Sweep now, in the calling thread: mark stale running sessions interrupted, delete by age,
        then by size, and give the space back. Raises ``TraceFileError`` (or ``sqlite3.Error``)
        when the file cannot be swept."""
        with self._sweep_lock:
            if not self.running:
                self._stop = threading.Event()  # an earlier stop() stopped the thread, not this
            result = self._sweep(turn=False)
        assert result is not None  # only a background sweep waits for its turn
        return result

    def _sweep(self, *, turn: bool) -> SweepResult | None:
        """One sweep; with ``turn``, None when another sweeper swept the file a moment ago."""
        started = time.monotonic()
        before = disk_bytes(self.path)
        tally = self._tally = _Tally()
        complete = True
        try:
            conn = self._connection()
            now = time.time_ns()
            if not self._take_turn(conn, now, turn):
                logger.debug("otel-sqlite-exporter: %s was swept a moment ago by another process", self.path)
                return None
            tally.interrupted = self._mark_stale(conn, now)
            days = self._days(conn)
            if days:
                cutoff = max(_INT64_MIN, now - days * _DAY_NS)
                self._delete_older_than(conn, cutoff, tally)
                self._delete_old_records(conn, cutoff)
            if self.max_db_bytes is not None:
                self._delete_to_size(conn, self.max_db_bytes, tally)
            self._reclaim(conn)
        except _StoppedError:
            complete = False
        except sqlite3.OperationalError:
            if not self._stop.is_set():
                raise
            complete = False  # stop() interrupted a statement; its transaction rolled back
        after = disk_bytes(self.path)
        result = SweepResult(
            deleted_sessions=tally.sessions,
            deleted_traces=tally.traces,
            deleted_spans=tally.spans,
            bytes_reclaimed=max(0, before - after),
            duration_s=time.monotonic() - started,
            interrupted_sessions=tally.interrupted,
            file_bytes=after,
            complete=complete,
            transactions=tally.transactions,
            longest_transaction_s=tally.longest,
        )
        logger.info("otel-sqlite-exporter: %s: %s", self.path, result)
        return result

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._conn_pid != os.getpid():
            abandon(self._conn)  # inherited across fork(): the parent's
            self._conn = None
        if self._conn is None:
            with self._busy:
                conn = connect(self.path, busy_timeout_millis=self.busy_timeout_millis, create=False)
                try:
                    # Checkpoints run between transactions (_checkpoint_if_large), not inside a commit.
                    conn.execute("PRAGMA wal_autocheckpoint = 0")
                    for statement in _SCRATCH:
                        conn.execute(statement)
                except BaseException:
                    conn.close()
                    raise
            self._conn, self._conn_pid = conn, os.getpid()
        return self._conn

    def _days(self, conn: sqlite3.Connection) -> int:
        if self.retention_days is not None:
            return self.retention_days
        with self._busy:
            try:
                return read_retention_days(conn, self.path)
            except TraceFileError as exc:
                # Deleting by a guessed period could lose what the user meant to keep.
                logger.error("otel-sqlite-exporter: %s; nothing is deleted by age until it is fixed", exc)
                return 0

    def _take_turn(self, conn: sqlite3.Connection, now: int, wait_turn: bool) -> bool:
        """Record that a sweep starts now. With ``wait_turn``, False (and nothing recorded) when
        another sweeper started one less than half an interval ago."""
        half = int(self.interval_seconds * 1e9 / 2)
        _took, changed = self._paced(
            conn,
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
            "WHERE NOT (? AND CAST(settings.value AS INTEGER) BETWEEN ? AND ?)",
            (LAST_SWEEP_SETTING, str(now), wait_turn, now - half, now),
        )
        return changed == 1

    # -- stale running sessions --------------------------------------------------------------------

    def _mark_stale(self, conn: sqlite3.Connection, now: int) -> int:
        with self._busy:
            running = conn.execute(
                "SELECT session_id, last_activity_unix_nano, owner_pid, owner_host FROM sessions "
                "WHERE status = 'running'"
            ).fetchall()
        stale = [row for row in running if self._stale(row, now)]
        marked = 0
        for start in range(0, len(stale), _PAGE):
            with self._busy:
                conn.executemany(
                    "INSERT INTO temp.sweep_stale VALUES (?, ?, ?, ?)", stale[start : start + _PAGE]
                )
            try:
                # Only those unchanged since they were read: a writer may have touched one since.
                _took, changed = self._paced(
                    conn,
                    """UPDATE sessions SET status = 'interrupted' FROM temp.sweep_stale AS st
                    WHERE sessions.session_id = st.session_id AND sessions.status = 'running'
                      AND sessions.last_activity_unix_nano IS st.activity
                      AND sessions.owner_pid IS st.pid AND sessions.owner_host IS st.host""",
                )
                marked += changed
            finally:
                with self._busy:
                    conn.execute("DELETE FROM temp.sweep_stale")
        return marked

    def _stale(self, row: Sequence[Any], now: int) -> bool:
        _session_id, activity, pid, host = row
        if activity is None or activity < now - self.stale_after_seconds * 1e9:
            return True
        return host == self._host and isinstance(pid, int) and not process_alive(pid)

    # -- deleting ----------------------------------------------------------------------------------

    def _delete_older_than(self, conn: sqlite3.Connection, cutoff: int, tally: _Tally) -> None:
        after: tuple[int, int] = (_INT64_MIN, -1)
        while True:
            with self._busy:
                rows = conn.execute(
                    "SELECT rowid, session_id, last_activity_unix_nano, span_count FROM sessions "
                    "WHERE last_activity_unix_nano < ? AND (last_activity_unix_nano, rowid) > (?, ?) "
                    "AND status != 'running' ORDER BY last_activity_unix_nano, rowid LIMIT ?",
                    (cutoff, *after, _PAGE),
                ).fetchall()
            if not rows:
                return
            self._delete_sessions(conn, [(sid, seen, spans) for _, sid, seen, spans in rows], tally)
            after = (rows[-1][2], rows[-1][0])

    def _delete_old_records(self, conn: sqlite3.Connection, cutoff: int) -> None:
        """Log records of no session (emitted outside any span, or whose trace was never stored),
        and GenAI content whose span never came, once older than the cutoff: a page at a time."""
        for sql in _OLD_RECORDS:
            while self._paced(conn, sql, (cutoff, _PAGE))[1]:
                pass

    def _delete_to_size(self, conn: sqlite3.Connection, cap: int, tally: _Tally) -> None:
        while True:
            with self._busy:
                live = live_bytes(conn)
                if live <= cap:
                    return
                total_spans = conn.execute("SELECT coalesce(sum(span_count), 0) FROM sessions").fetchone()[0]
            per_span = live / max(1, total_spans)
            chosen = self._oldest_until(conn, (live - cap) / per_span)
            if not chosen:
                logger.warning(
                    "otel-sqlite-exporter: %s holds %s of data, over max_db_bytes (%s), and only running "
                    "sessions (or none) are left to delete",
                    self.path,
                    _size(live),
                    _size(cap),
                )
                return
            before = tally.sessions
            self._delete_sessions(conn, chosen, tally)
            if tally.sessions == before:
                return  # every chosen session became active again meanwhile; the next sweep retries

    def _oldest_until(self, conn: sqlite3.Connection, spans_wanted: float) -> list[tuple[str, int, int]]:
        """The oldest deletable sessions holding at least ``spans_wanted`` spans (at least one)."""
        chosen: list[tuple[str, int, int]] = []
        weight = 0
        after: tuple[int, int] = (_INT64_MIN, -1)
        while weight < spans_wanted:
            with self._busy:
                rows = conn.execute(
                    "SELECT rowid, session_id, last_activity_unix_nano, span_count FROM sessions "
                    "WHERE last_activity_unix_nano IS NOT NULL AND (last_activity_unix_nano, rowid) > (?, ?) "
                    "AND status != 'running' ORDER BY last_activity_unix_nano, rowid LIMIT ?",
                    (*after, _PAGE),
                ).fetchall()
            if not rows:
                break
            for _, session_id, seen, spans in rows:
                chosen.append((session_id, seen, spans))
                weight += max(1, spans)
                if weight >= spans_wanted:
                    break
            after = (rows[-1][2], rows[-1][0])
        return chosen

    def _delete_sessions(
        self, conn: sqlite3.Connection, sessions: Sequence[tuple[str, int, int]], tally: _Tally
    ) -> None:
        """Delete whole sessions (id, activity seen when chosen, span count), oldest first: several
        small ones per transaction, a large one over several."""
        group: list[tuple[str, int]] = []
        weight = 0
        for session_id, seen, spans in sessions:
            if spans > self.batch_size:
                self._delete_group(conn, group, tally)
                group, weight = [], 0
                self._delete_large(conn, session_id, seen, tally)
                continue
            if group and weight + max(1, spans) > self._chunk:
                self._delete_group(conn, group, tally)
                group, weight = [], 0
            group.append((session_id, seen))
            weight += max(1, spans)
        self._delete_group(conn, group, tally)

    def _delete_group(
        self, conn: sqlite3.Connection, group: Sequence[tuple[str, int]], tally: _Tally
    ) -> None:
        if not group:
            return
        with self._busy:
            # Only the connection's own scratch space: no lock on the file is taken for it.
            conn.executemany("INSERT INTO temp.sweep_sessions (session_id, seen) VALUES (?, ?)", group)
        try:
            took, _ = self._paced(conn, "INSERT INTO temp.sweep_whole (go) VALUES (1)")
        finally:
            with self._busy:
                conn.execute("DELETE FROM temp.sweep_sessions")
        self._add_counts(conn, took, tally)

    def _delete_large(self, conn: sqlite3.Connection, session_id: str, seen: int, tally: _Tally) -> None:
        """A session too large for one transaction, over several (see the sweep_batch trigger); the
        traces and the session go in the last one."""
        try:
            while True:
                with self._busy:
                    conn.execute("DELETE FROM temp.sweep_large")
                    conn.execute(
                        "INSERT INTO temp.sweep_large (session_id, seen, size) VALUES (?, ?, ?)",
                        (session_id, seen, self._chunk),
                    )
                took, _ = self._paced(conn, "INSERT INTO temp.sweep_batch (go) VALUES (1)")
                self._add_counts(conn, took, tally)
                with self._busy:
                    if conn.execute("SELECT count(*) FROM temp.sweep_large").fetchone()[0] == 0:
                        return  # deleted to the end, or active again
        finally:
            with self._busy:
                conn.execute("DELETE FROM temp.sweep_large")

    def _add_counts(self, conn: sqlite3.Connection, took: float, tally: _Tally) -> None:
        """What the transaction just committed deleted (counted by the triggers)."""
        with self._busy:
            sessions, traces, spans = conn.execute(
                "SELECT coalesce(sum(sessions), 0), coalesce(sum(traces), 0), coalesce(sum(spans), 0) "
                "FROM temp.sweep_counts"
            ).fetchone()
            conn.execute("DELETE FROM temp.sweep_counts")
        tally.sessions += sessions
        tally.traces += traces
        tally.spans += spans
        if spans:
            self._chunk = _adapt(self._chunk, took, self.batch_size)

    # -- giving space back -------------------------------------------------------------------------

    def _reclaim(self, conn: sqlite3.Connection) -> None:
        with self._busy:
            incremental = conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        while incremental:
            with self._busy:
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if not free:
                break
            # executescript runs the pragma to the end; execute() would free a single page.
            took, _ = self._paced(
                conn, f"PRAGMA incremental_vacuum({int(min(free, self._vacuum_step))})", script=True
            )
            self._vacuum_step = _adapt(self._vacuum_step, took, 1 << 16)
        self._checkpoint(conn)

    def _checkpoint_if_large(self, conn: sqlite3.Connection) -> None:
        if _size_of(self.path + "-wal") > _CHECKPOINT_WAL_BYTES:
            self._checkpoint(conn, truncate=False)

    def _checkpoint(self, conn: sqlite3.Connection, *, truncate: bool = True) -> None:
        """Copy the log back into the file without waiting for anyone (PASSIVE); once all of it is
        back, the file is cut to its new size. Then empty the log, if that needs no waiting."""
        for _attempt in range(_CHECKPOINT_ATTEMPTS if truncate else 1):
            with self._busy, self._interruptible():
                _blocked, log_frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if log_frames == copied or not truncate:
                break
            # Writers appended meanwhile (what is left is short now), or a reader holds an older
            # snapshot (then the file shrinks on a later sweep).
            if self._stop.wait(_MIN_PAUSE_SECONDS):
                return
        else:
            return
        if not truncate:
            return
        with self._busy:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                # With no busy handler TRUNCATE never waits: it ends as PASSIVE would if anyone is busy.
                with self._interruptible():
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_millis)}")

    # -- transactions and pacing -------------------------------------------------------------------

    def _paced(
        self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = (), *, script: bool = False
    ) -> tuple[float, int]:
        """Run one statement as a transaction of its own, after the pause that follows the previous
        one; returns how long it took and how many rows it changed (itself, not its triggers).

        A single statement outside BEGIN ... COMMIT holds the write lock only while SQLite runs it:
        this thread never has to win the interpreter lock back while holding the file's. The pause
        after it is at least as long, so a writer that found the lock taken retries within it
        (the busy handler's steps grow about as fast as it has waited) and the sweep takes at most
        about half of the file's write time.
        """
        self._wait_turn(conn)
        with self._busy, self._interruptible():
            began = time.monotonic()
            if script:
                conn.executescript(sql)
                changed = 0
            else:
                changed = conn.execute(sql, params).rowcount
            took = time.monotonic() - began
        self._count_transaction(took)
        self._resume_at = time.monotonic() + max(_MIN_PAUSE_SECONDS, took)
        return took, changed

    @contextmanager
    def _interruptible(self) -> Iterator[None]:
        with self._interrupt_guard:
            self._interruptible_now = True
        try:
            yield
        finally:
            with self._interrupt_guard:
                self._interruptible_now = False

    def _count_transaction(self, took: float) -> None:
        self._tally.transactions += 1
        self._tally.longest = max(self._tally.longest, took)

    def _wait_turn(self, conn: sqlite3.Connection) -> None:
        """Wait out the pause after the previous transaction; raises ``_StoppedError`` on ``stop()``."""
        self._checkpoint_if_large(conn)
        if self._stop.wait(max(0.0, self._resume_at - time.monotonic())):
            raise _StoppedError

    # -- dry run -----------------------------------------------------------------------------------

    def plan(self) -> SweepPlan:
        """What ``sweep_once()`` would delete and mark now, read from the file without changing it."""
        conn = open_reader(self.path, busy_timeout_millis=self.busy_timeout_millis)
        try:
            conn.execute("BEGIN")  # one snapshot for every statement below
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < _RETENTION_SCHEMA:
                raise TraceFileError(
                    self.path,
                    f"has schema version {version}, from before retention; a sweep (or any writer) "
                    "upgrades it first, so a dry run cannot tell what it would delete",
                )
            return self._plan(conn)
        finally:
            conn.close()

    def _plan(self, conn: sqlite3.Connection) -> SweepPlan:
        now = time.time_ns()
        days = (
            self.retention_days if self.retention_days is not None else read_retention_days(conn, self.path)
        )
        running = conn.execute(
            "SELECT session_id, last_activity_unix_nano, owner_pid, owner_host FROM sessions "
            "WHERE status = 'running'"
        ).fetchall()
        stale = {row[0] for row in running if self._stale(row, now)}
        columns = (
            "SELECT se.session_id, se.task, se.status, se.last_activity_unix_nano, "
            "(SELECT count(*) FROM traces AS t WHERE t.session_id = se.session_id), se.span_count "
            "FROM sessions AS se"
        )
        order = "ORDER BY se.last_activity_unix_nano, se.rowid"
        stale_rows = [
            row for row in conn.execute(f"{columns} WHERE se.status = 'running' {order}") if row[0] in stale
        ]
        planned: list[PlannedDeletion] = []
        chosen: set[str] = set()
        cutoff = None
        if days:
            cutoff = max(_INT64_MIN, now - days * _DAY_NS)
            old = conn.execute(
                f"{columns} WHERE se.last_activity_unix_nano < ? AND se.status != 'running' {order}",
                (cutoff,),
            ).fetchall()
            old += [row for row in stale_rows if row[3] is not None and row[3] < cutoff]
            old.sort(key=lambda row: row[3])
            planned += [_planned(row, "age", "interrupted" if row[0] in stale else row[2]) for row in old]
            chosen.update(row[0] for row in old)
        live = live_bytes(conn)
        if self.max_db_bytes is not None and live > self.max_db_bytes:
            total = conn.execute("SELECT coalesce(sum(span_count), 0) FROM sessions").fetchone()[0]
            per_span = live / max(1, total)
            left = live - per_span * sum(p.spans for p in planned)
            rest = conn.execute(f"{columns} WHERE se.status != 'running' {order}").fetchall() + stale_rows
            rest.sort(key=lambda row: (row[3] is None, row[3] or 0))
            for row in rest:
                if left <= self.max_db_bytes:
                    break
                if row[0] in chosen or row[3] is None:
                    continue
                planned.append(_planned(row, "size", "interrupted" if row[0] in stale else row[2]))
                left -= per_span * max(1, row[5])
        return SweepPlan(
            path=self.path,
            retention_days=days,
            cutoff=from_ns(cutoff),
            max_db_bytes=self.max_db_bytes,
            file_bytes=disk_bytes(self.path),
            live_bytes=live,
            sessions=planned,
            interrupted=sorted(stale),
        )


# -- helpers -------------------------------------------------------------------------------------


def _planned(row: Sequence[Any], reason: str, status: str) -> PlannedDeletion:
    session_id, task, _status, activity, traces, spans = row
    return PlannedDeletion(
        session_id=session_id,
        task=task,
        status=status,
        last_activity=from_ns(activity),
        traces=traces,
        spans=spans,
        reason=reason,
    )


def _adapt(current: int, took: float, ceiling: int) -> int:
    """The next transaction's size, so that it holds the lock about ``_TARGET_SECONDS``."""
    if took > _TARGET_SECONDS:
        return max(_MIN_CHUNK, int(current * _TARGET_SECONDS / took))
    if took < _TARGET_SECONDS / 2:
        return min(ceiling, current + max(1, current // 4))
    return current


def live_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the file in use: its pages less the free ones (what ``max_db_bytes`` caps)."""
    pages, free, page_size = conn.execute(
        "SELECT (SELECT page_count FROM pragma_page_count), "
        "(SELECT freelist_count FROM pragma_freelist_count), (SELECT page_size FROM pragma_page_size)"
    ).fetchone()
    return int((pages - free) * page_size)


def disk_bytes(path: str) -> int:
    """The file and its write-ahead log on disk."""
    return _size_of(path) + _size_of(path + "-wal")


def _size_of(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _set(conn: sqlite3.Connection, key: str, value: object) -> None:
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name}: expected a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _size(n_bytes: int) -> str:
    from otel_sqlite_exporter._render import size

    return size(n_bytes)
