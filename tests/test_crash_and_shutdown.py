"""Crashes, shutdown races and pre-fork servers: what is on disk afterwards is whole and accounted for.

A process killed (SIGKILL) inside a write transaction, or inside a retention sweep, leaves a file
that passes ``PRAGMA integrity_check``, holds each batch whole or not at all, and has rollups equal
to its spans; the next writer (or sweep) carries on. Shutdown racing the application, flushes from
many threads and interpreter exit account for every span start and end: written, or counted as
dropped. A pre-fork server's workers each write through a connection of their own.

Everything runs for real: the SDK, SQLite files in temporary folders, subprocesses killed with
SIGKILL, ``os.fork``. A moment inside a transaction is found by freezing the writing process
(SIGSTOP) and reading the kernel's lock table (``/proc/locks``): a write transaction holds SQLite's
write lock, byte 120 of the ``-shm`` file.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import query, start_tracing
from test_retention import write_session

from otel_sqlite_exporter import (
    ConfigurationError,
    Options,
    RetentionSweeper,
    SQLiteLogExporter,
    SQLiteSpanExporter,
    TraceStore,
)

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400 * 1_000_000_000
PROMPT = "please summarise the refund policy for damaged parcels "
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
# SQLite's write lock in WAL mode: an exclusive lock on this byte of the -shm file.
WAL_WRITE_LOCK_BYTE = 120

needs_proc_locks = pytest.mark.skipif(
    not os.path.exists("/proc/locks"), reason="needs the kernel's lock table (/proc/locks)"
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "traces.db"


@pytest.fixture(autouse=True)
def _no_sqlite_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OTEL_EXPORTER_SQLITE_"):
            monkeypatch.delenv(key)


def python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A Python subprocess running ``code``, its output piped, no OTEL_* setting inherited."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
    )


def holds_write_lock(pid: int, shm: Path) -> bool:
    """Whether process ``pid`` holds the write lock of the file whose -shm is ``shm``."""
    try:
        inode = shm.stat().st_ino
        with open("/proc/locks", encoding="ascii") as handle:
            table = handle.read()
    except OSError:
        return False
    for line in table.splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 25430 fe:00:2188787 120 120"
        if len(fields) >= 8 and fields[1:5] == ["POSIX", "ADVISORY", "WRITE", str(pid)]:
            first, last = int(fields[6]), -1 if fields[7] == "EOF" else int(fields[7])
            if fields[5].rsplit(":", 1)[-1] == str(inode) and first <= WAL_WRITE_LOCK_BYTE <= last:
                return True
    return False


def stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (by SIGSTOP)."""
    try:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat", encoding="ascii", errors="replace") as handle:
                states.append(handle.read().rpartition(")")[2].split()[0])
    except OSError:
        return False
    return bool(states) and all(state in ("T", "t") for state in states)


def kill_inside_transaction(
    proc: subprocess.Popen[str], shm: Path, ready: Callable[[], bool], *, delay: float = 0.0
) -> None:
    """SIGKILL ``proc`` inside a write transaction, once ``ready()`` and ``delay`` seconds later.

    The process is frozen (SIGSTOP) and looked at: holding the write lock, it is killed right
    there; otherwise it runs on a moment and is looked at again. Frozen, it cannot commit between
    the look and the kill, however busy the machine.
    """
    deadline = time.monotonic() + 30
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the subprocess never got ready"
        time.sleep(0.002)
    time.sleep(delay)
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the subprocess was never seen inside a transaction"
        proc.send_signal(signal.SIGSTOP)
        while not stopped(proc.pid):
            assert proc.poll() is None, proc.communicate()
        if holds_write_lock(proc.pid, shm):
            proc.kill()
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


def integrity_ok(path: Path) -> None:
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO spans_fts (spans_fts) VALUES ('integrity-check')")  # raises if not
    finally:
        conn.close()


_COUNTED = "FILTER (WHERE s.has_usage = 1 AND s.usage_below = 0)"
_SUMS = (
    "count(*) AS n, count(*) FILTER (WHERE s.status_code = 'ERROR') AS errors, "
    + ", ".join(f"coalesce(sum(s.{c}) {_COUNTED}, 0) AS {c}" for c in TOKENS)
    + f", sum(s.cost_usd) {_COUNTED} AS cost"
)
_DIFFERS = (
    "r.span_count != coalesce(a.n, 0) OR r.error_count != coalesce(a.errors, 0) OR "
    + " OR ".join(f"r.{c} != coalesce(a.{c}, 0)" for c in TOKENS)
    + " OR abs(coalesce(r.cost_usd, 0) - coalesce(a.cost, 0)) > 1e-9"
)


def assert_whole(path: Path) -> None:
    """In one snapshot: every trace's and session's rollups equal the sums over its spans, no span
    without its parent, trace or session row, no trace without its session, and a search index
    holding exactly the spans that are there."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for table, key in (("traces", "trace_id"), ("sessions", "session_id")):
            wrong = conn.execute(
                f"SELECT r.{key} FROM {table} AS r LEFT JOIN "
                f"(SELECT s.{key}, {_SUMS} FROM spans AS s GROUP BY s.{key}) AS a ON a.{key} = r.{key} "
                f"WHERE {_DIFFERS}"
            ).fetchall()
            assert wrong == [], f"{table} whose rollups differ from their spans: {wrong[:5]}"
        assert conn.execute(
            "SELECT count(*) FROM spans AS s WHERE s.parent_span_id IS NOT NULL AND s.is_root = 0 "
            "AND NOT EXISTS (SELECT 1 FROM spans AS p WHERE p.trace_id = s.trace_id "
            "AND p.span_id = s.parent_span_id)"
        ).fetchone() == (0,), "spans without their parent"
        assert conn.execute(
            "SELECT count(*) FROM spans AS s WHERE NOT EXISTS "
            "(SELECT 1 FROM traces AS t WHERE t.trace_id = s.trace_id AND t.session_id = s.session_id)"
        ).fetchone() == (0,), "spans without their trace"
        assert conn.execute(
            "SELECT count(*) FROM traces AS t WHERE NOT EXISTS "
            "(SELECT 1 FROM sessions AS se WHERE se.session_id = t.session_id)"
        ).fetchone() == (0,), "traces without their session"
        with_text = conn.execute("SELECT count(*) FROM spans WHERE input_text LIKE '%refund%'").fetchone()
        assert (
            conn.execute("SELECT count(*) FROM spans_fts WHERE spans_fts MATCH 'refund'").fetchone()
            == with_text
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


# --- a crash inside a batch transaction ------------------------------------------------------------------

BATCH_WRITER = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from otel_sqlite_exporter import SQLiteSpanProcessor, session

path, per_group = sys.argv[1], int(sys.argv[2])
# Only a flush commits, and a whole group at once: each group is one transaction.
processor = SQLiteSpanProcessor(path, max_batch_size=1_000_000, schedule_delay_millis=600_000)
provider = TracerProvider()
provider.add_span_processor(processor)
tracer = provider.get_tracer("crash")
with session(task="batch writer"):
    in_flight = tracer.start_span("in flight")
    group = 0
    while True:
        root = tracer.start_span(f"group-{group}")
        context = trace.set_span_in_context(root)
        for i in range(per_group):
            with tracer.start_as_current_span(
                f"g{group}-call-{i}",
                context=context,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": 100 + i,
                    "gen_ai.usage.output_tokens": 10 + group,
                    "gen_ai.prompt": f"group {group} call {i} " + PROMPT * 40,
                },
            ):
                pass
        root.end()
        print("flushing", group, flush=True)
        assert processor.force_flush(60_000)
        print("flushed", group, flush=True)
        group += 1
""".replace("PROMPT", repr(PROMPT))


class Progress:
    """Lines a subprocess printed so far, read without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._buffer = b""

    def lines(self) -> list[str]:
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buffer += chunk
        return self._buffer.decode().splitlines()

    def printed(self, line: str) -> bool:
        return line in self.lines()


@needs_proc_locks
def test_sigkill_inside_a_batch_transaction_leaves_whole_batches_and_exact_rollups(tmp_path: Path) -> None:
    per_group = 1500
    # Killed at a few moments after the second batch: each kill lands inside a transaction.
    for attempt, delay in enumerate((0.0, 0.07)):
        db = tmp_path / f"attempt-{attempt}.db"
        proc = python(BATCH_WRITER, str(db), str(per_group))
        progress = Progress(proc)
        kill_inside_transaction(
            proc, Path(f"{db}-shm"), functools.partial(progress.printed, "flushed 1"), delay=delay
        )
        lines = progress.lines()
        flushed = [int(line.split()[1]) for line in lines if line.startswith("flushed")]
        flushing = max(int(line.split()[1]) for line in lines if line.startswith("flushing"))

        integrity_ok(db)
        stored = dict(
            query(
                db,
                "SELECT CAST(substr(name, 2, instr(name, '-') - 2) AS INTEGER), count(*) FROM spans "
                "WHERE name GLOB 'g[0-9]*-call-*' GROUP BY 1",
            )
        )
        roots = {
            int(name.split("-")[1])
            for (name,) in query(db, "SELECT name FROM spans WHERE name GLOB 'group-*'")
        }
        # Each group is all there or not at all: every flushed group whole, the one being
        # committed when the process died not at all.
        assert set(stored) == roots == set(flushed)
        assert flushing not in stored
        assert all(count == per_group for count in stored.values()), stored
        # What was committed is intact, span by span.
        for name, text, input_tokens, output_tokens, ended in query(
            db,
            "SELECT name, input_text, input_tokens, output_tokens, end_time_unix_nano IS NOT NULL "
            "FROM spans WHERE name GLOB 'g[0-9]*-call-*'",
        ):
            group, call = int(name[1 : name.index("-")]), int(name.rsplit("-", 1)[1])
            assert text == f"group {group} call {call} " + PROMPT * 40
            assert (input_tokens, output_tokens, ended) == (100 + call, 10 + group, 1)
        assert_whole(db)
        assert query(db, "SELECT task, status, owner_pid FROM sessions") == [
            ("batch writer", "running", proc.pid)
        ]

        # A new writer carries on, and the dead process's session and open span read interrupted.
        tracing = start_tracing(db)
        with tracing.tracer.start_as_current_span("after the crash"):
            pass
        tracing.close()
        integrity_ok(db)
        assert_whole(db)
        with TraceStore(db) as store:
            sessions = {s.task: s.status for s in store.get_sessions()}
            assert sessions == {"batch writer": "interrupted", None: "completed"}
            assert [t.name for t in store.get_traces(status="interrupted")] == ["in flight"]
            assert store.get_traces(status="running") == []
            [crashed] = [s for s in store.get_sessions() if s.task == "batch writer"]
            assert crashed.total_events == 1 + len(stored) * (per_group + 1)
            assert crashed.input_tokens == len(stored) * sum(100 + i for i in range(per_group))


# --- a crash inside a retention sweep --------------------------------------------------------------------


OLD = 300  # small old sessions
SWEEP = """
import sys
from otel_sqlite_exporter import RetentionSweeper

print(RetentionSweeper(sys.argv[1], retention_days=30, batch_size=int(sys.argv[2])).sweep_once(), flush=True)
"""


@needs_proc_locks
def test_sigkill_inside_a_retention_sweep_leaves_whole_sessions_and_the_next_sweep_finishes(db: Path) -> None:
    tracing = start_tracing(db)
    now = time.time_ns()
    # The oldest session is larger than a sweep transaction: it goes over several, newest spans first.
    large = write_session(tracing, "large", start=now - 50 * DAY, traces=150, calls=10, tools=1, text=PROMPT)
    for i in range(OLD):
        write_session(tracing, f"old-{i:03}", start=now - 40 * DAY + i * 1_000_000_000, tools=1, text=PROMPT)
    for i in range(5):
        write_session(tracing, f"recent-{i}", start=now - DAY, tools=1, text=PROMPT)
    tracing.close()
    recent = query(db, "SELECT * FROM sessions WHERE session_id GLOB 'recent-*' ORDER BY 1")
    recent_spans = query(db, "SELECT * FROM spans WHERE session_id GLOB 'recent-*' ORDER BY id")
    assert query(db, "SELECT span_count FROM sessions WHERE session_id = 'large'") == [(large,)]

    reader = sqlite3.connect(db)

    def large_left() -> int:
        row = reader.execute("SELECT span_count FROM sessions WHERE session_id = 'large'").fetchone()
        return 0 if row is None else row[0]

    def old_left() -> int:
        return reader.execute("SELECT count(*) FROM sessions WHERE session_id GLOB 'old-*'").fetchone()[0]

    try:
        # First killed while deleting the large session, then while deleting small ones.
        for round_, ready in enumerate((lambda: 0 < large_left() < large * 3 // 4, lambda: old_left() < OLD)):
            # Transactions of about 10 ms (the sweep's pacing target), so that a look finds one.
            proc = python(SWEEP, str(db), "1000")
            kill_inside_transaction(proc, Path(f"{db}-shm"), ready)
            integrity_ok(db)
            assert_whole(db)
            # Nothing recent was touched; what is left of the large session is counted exactly.
            assert query(db, "SELECT * FROM sessions WHERE session_id GLOB 'recent-*' ORDER BY 1") == recent
            left = query(db, "SELECT count(*) FROM spans WHERE session_id = 'large'")[0][0]
            if round_ == 0:
                assert 0 < left < large  # killed half way through the large session
            assert query(
                db, "SELECT coalesce(sum(span_count), 0) FROM sessions WHERE session_id = 'large'"
            ) == [(left,)]
        assert large_left() == 0
        assert old_left() < OLD
    finally:
        reader.close()

    result = RetentionSweeper(db, retention_days=30).sweep_once()
    assert result.complete
    assert query(db, "SELECT session_id FROM sessions ORDER BY 1") == [(f"recent-{i}",) for i in range(5)]
    assert query(db, "SELECT * FROM sessions ORDER BY 1") == recent
    assert query(db, "SELECT * FROM spans ORDER BY id") == recent_spans
    integrity_ok(db)
    assert_whole(db)


# --- shutdown racing the application -----------------------------------------------------------------------


def stored_events(db: Path) -> int:
    """Span starts and ends in the file: a row is its start, an end time its end."""
    return query(db, "SELECT count(*) + count(end_time_unix_nano) FROM spans")[0][0]


def test_spans_ending_while_shutdown_runs_are_written_or_ignored_never_lost(db: Path) -> None:
    tracing = start_tracing(db, schedule_delay_millis=50)
    tracer = tracing.tracer
    threads_n = 4
    during = threading.Event()  # set just before shutdown() is called
    after = threading.Event()  # set once it has returned
    stop = threading.Event()
    ended_before: list[str] = []
    ended_during: list[str] = []
    started_after: list[str] = []
    ended_after: list[str] = []
    errors: list[BaseException] = []

    def produce(t: int) -> None:
        try:
            held = tracer.start_span(f"t{t}-held")  # ends after the shutdown: its end is ignored
            i = 0
            while not stop.is_set():
                name = f"t{t}-{i}"
                late = after.is_set()
                span = tracer.start_span(name, attributes={"gen_ai.prompt": PROMPT})
                if late:
                    started_after.append(name)
                if after.is_set():
                    ended_after.append(name)
                racing = during.is_set()
                span.end()
                if not during.is_set():
                    ended_before.append(name)
                elif racing and not after.is_set():
                    ended_during.append(name)
                i += 1
                if i % 10 == 0:
                    time.sleep(0.001)  # leaves the writer threads some of the interpreter
            held.end()
            ended_after.append(f"t{t}-held")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    during.set()
    tracing.processor.shutdown()
    at_shutdown = tracing.processor.stats
    after.set()
    time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors

    stats = tracing.processor.stats
    assert stats == at_shutdown  # what came after is not counted as accepted
    assert stats["enqueued"] > 1_000
    assert (stats["dropped"], stats["failed"], stats["queued"]) == (0, 0, 0)
    assert stats["enqueued"] == stats["written"] + stats["failed"]
    # Every accepted start and end is in the file. (A span whose end came too late may still be
    # stored ended: its start, taken after it ended, carries the end time.)
    rows, ends = query(db, "SELECT count(*), count(end_time_unix_nano) FROM spans")[0]
    assert rows <= stats["written"] <= rows + ends
    assert rows + ends - stats["written"] <= threads_n
    # Spans ended before shutdown() was called were all accepted, so all are stored, ended.
    stored_ended = {
        name for (name,) in query(db, "SELECT name FROM spans WHERE end_time_unix_nano IS NOT NULL")
    }
    assert set(ended_before) <= stored_ended
    assert ended_during and started_after and ended_after  # the race did happen
    names = ", ".join(f"'{name}'" for name in started_after)
    assert query(db, f"SELECT count(*) FROM spans WHERE name IN ({names})") == [(0,)]
    names = ", ".join(f"'{name}'" for name in ended_after)
    assert query(
        db, f"SELECT count(*) FROM spans WHERE name IN ({names}) AND end_time_unix_nano IS NOT NULL"
    ) == [(0,)]
    assert query(
        db, "SELECT count(*) FROM spans WHERE name GLOB 't*-held' AND end_time_unix_nano IS NULL"
    ) == [(threads_n,)]
    integrity_ok(db)
    assert_whole(db)
    tracing.close()


def test_force_flush_from_eight_threads_at_once_writes_what_came_before_each(db: Path) -> None:
    tracing = start_tracing(db, schedule_delay_millis=600_000)  # only the flushes write promptly
    tracer = tracing.tracer
    stop = threading.Event()
    last_ended = -1

    def produce() -> None:
        nonlocal last_ended
        i = 0
        while not stop.is_set():
            with tracer.start_as_current_span(f"bg-{i}"):
                pass
            last_ended = i
            i += 1
            if i % 20 == 0:
                time.sleep(0.001)  # a steady stream, not a flood: the flushes are what is tested

    flushers, rounds = 8, 4
    barrier = threading.Barrier(flushers)
    results: list[tuple[bool, float, int, int]] = []
    errors: list[BaseException] = []

    def flush(t: int) -> None:
        try:
            conn = sqlite3.connect(db)
            for r in range(rounds):
                with tracer.start_as_current_span(f"flusher-{t}-{r}"):
                    pass
                background = last_ended
                barrier.wait()
                began = time.monotonic()
                ok = tracing.processor.force_flush(10_000)
                took = time.monotonic() - began
                mine = conn.execute(
                    "SELECT count(*) FROM spans WHERE name = ? AND end_time_unix_nano IS NOT NULL",
                    (f"flusher-{t}-{r}",),
                ).fetchone()[0]
                seen = conn.execute(
                    "SELECT count(*) FROM spans WHERE name = ? AND end_time_unix_nano IS NOT NULL",
                    (f"bg-{background}",),
                ).fetchone()[0]
                results.append((ok, took, mine, seen if background >= 0 else 1))
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    threads = [threading.Thread(target=flush, args=(t,)) for t in range(flushers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    producer.join()
    assert not errors
    assert len(results) == flushers * rounds
    assert all(ok for ok, _, _, _ in results)
    assert max(took for _, took, _, _ in results) < 10
    assert all(mine == 1 and seen == 1 for _, _, mine, seen in results), results
    tracing.close()
    stats = tracing.processor.stats
    assert stats["enqueued"] == stats["written"] == stored_events(db)


EXIT_WITH_FULL_QUEUE = """
import atexit, json, sys
# Registered before the provider's own exit hook, so it runs after it (atexit runs in reverse).
atexit.register(lambda: print(json.dumps({"before_exit": before, "after_exit": processor.stats}), flush=True))
from opentelemetry.sdk.trace import TracerProvider
from otel_sqlite_exporter import SQLiteSpanProcessor

processor = SQLiteSpanProcessor(
    sys.argv[1], max_queue_size=200, max_batch_size=1_000_000, schedule_delay_millis=600_000
)
provider = TracerProvider()  # shuts its processors down at exit
provider.add_span_processor(processor)
tracer = provider.get_tracer("flood")
for i in range(int(sys.argv[2])):
    with tracer.start_as_current_span(f"flood-{i}", attributes={"i": i}):
        pass
before = processor.stats
"""


def test_interpreter_exit_with_a_full_queue_writes_or_counts_every_span(db: Path) -> None:
    spans = 5_000
    proc = python(EXIT_WITH_FULL_QUEUE, str(db), str(spans))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    before, after = report["before_exit"], report["after_exit"]
    # The queue overflowed and nothing was committed before exit: the exit wrote all it had accepted.
    assert before["dropped"] > 0 and before["written"] == 0, before
    assert after["written"] > 0
    assert after["written"] + after["dropped"] == 2 * spans
    assert after["enqueued"] == after["written"] and (after["failed"], after["queued"]) == (0, 0)
    rows, ended = query(db, "SELECT count(*), count(end_time_unix_nano) FROM spans")[0]
    # A row is a span whose start or end was written; an end time, one whose end was.
    assert rows <= after["written"] <= rows + ended
    integrity_ok(db)


EXIT_WHILE_LOCKED = """
import atexit, json, sys, threading, time
report = {}

def at_exit():
    shut_down = time.monotonic()
    report["shutdown_s"] = shut_down - report.pop("main_returned")
    flusher.join(5)
    report["pending_flush"] = pending.get("result")
    # Released by the shutdown; its thread notes the time once it runs again (within a second),
    # long before its own 30 s timeout.
    report["pending_flush_returned_in_shutdown"] = pending.get("at", float("inf")) <= shut_down + 1
    began = time.monotonic()
    report["flush_after"] = processor.force_flush(10_000)
    report["flush_after_s"] = time.monotonic() - began
    report["stats"] = processor.stats
    print(json.dumps(report), flush=True)

atexit.register(at_exit)  # before the provider's: runs after its shutdown
from opentelemetry.sdk.trace import TracerProvider
from otel_sqlite_exporter import SQLiteSpanProcessor

processor = SQLiteSpanProcessor(sys.argv[1], busy_timeout_millis=60_000)
provider = TracerProvider()
provider.add_span_processor(processor)
tracer = provider.get_tracer("locked out")
for i in range(int(sys.argv[2])):
    with tracer.start_as_current_span(f"locked-{i}"):
        pass
pending = {}

def flush():
    # Waiting for a flush when the shutdown gives up: it must return then, not at its own timeout.
    pending["result"] = processor.force_flush(30_000)
    pending["at"] = time.monotonic()

flusher = threading.Thread(target=flush, daemon=True)
flusher.start()
time.sleep(0.2)
report["main_returned"] = time.monotonic()
"""


def test_exit_with_the_file_locked_returns_within_the_shutdown_timeout_and_counts_the_loss(db: Path) -> None:
    tracing = start_tracing(db)
    with tracing.tracer.start_as_current_span("before"):
        pass
    tracing.close()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock until the subprocess is gone
    try:
        spans = 500
        began = time.monotonic()
        proc = python(
            EXIT_WHILE_LOCKED,
            str(db),
            str(spans),
            env={"OTEL_EXPORTER_SQLITE_SHUTDOWN_TIMEOUT_MILLIS": "1000"},
        )
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - began
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert 0.9 <= report["shutdown_s"] < 1.0 + 1.5, report
    assert took < 15  # the busy timeout alone would be 60 s
    # A flush waiting when the shutdown gave up returned then (False), not at its own 30 s timeout.
    assert report["pending_flush"] is False and report["pending_flush_returned_in_shutdown"]
    assert report["flush_after"] is False and report["flush_after_s"] < 0.2
    stats = report["stats"]
    assert (stats["written"], stats["failed"], stats["enqueued"], stats["queued"]) == (0, 0, 0, 0), stats
    assert stats["dropped"] == 2 * spans
    assert "gave up after 1000 ms" in err and f"{2 * spans} span starts and ends unwritten" in err
    assert query(db, "SELECT name FROM spans") == [("before",)]
    integrity_ok(db)


def test_shutdown_timeout_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Options.resolve(tmp_path / "t.db").shutdown_timeout_millis == 30_000
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_SHUTDOWN_TIMEOUT_MILLIS", "2500")
    assert Options.resolve(tmp_path / "t.db").shutdown_timeout_millis == 2_500
    assert (
        Options.resolve(tmp_path / "t.db", {"shutdown_timeout_millis": None}).shutdown_timeout_millis == 2_500
    )
    assert Options.resolve(tmp_path / "t.db", {"shutdown_timeout_millis": 0}).shutdown_timeout_millis == 0
    for bad in (-1, 1.5, "soon"):
        with pytest.raises(ConfigurationError, match="shutdown_timeout_millis"):
            Options.resolve(tmp_path / "t.db", {"shutdown_timeout_millis": bad})
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_SHUTDOWN_TIMEOUT_MILLIS", "-5")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_SQLITE_SHUTDOWN_TIMEOUT_MILLIS"):
        Options.resolve(tmp_path / "t.db")
    monkeypatch.delenv("OTEL_EXPORTER_SQLITE_SHUTDOWN_TIMEOUT_MILLIS")
    # The exporters share the options: they accept it (the SDK's processor in front of them has
    # its own export timeout).
    SQLiteSpanExporter(tmp_path / "t.db", shutdown_timeout_millis=100).shutdown()
    SQLiteLogExporter(tmp_path / "t.db", shutdown_timeout_millis=100).shutdown()


# --- a pre-fork server -------------------------------------------------------------------------------------

PRE_FORK = """
import json, os, sys, time
from opentelemetry import trace
from otel_sqlite_exporter import configure, session

path, workers, per_worker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
provider = configure(path, instrument=False, logs=False)
tracer = trace.get_tracer("server")


def trace_files() -> int:
    # Descriptors open on the trace file itself (not its -wal or -shm).
    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(path))


with tracer.start_as_current_span("parent-setup"):
    pass
assert provider.force_flush(10_000)  # the parent's writer and connection exist before the fork
inherited = trace_files()
children = []
for w in range(workers):
    pid = os.fork()
    if pid == 0:
        with session(task=f"worker-{w}"):
            for i in range(per_worker):
                with tracer.start_as_current_span(f"worker-{w}-{i}", attributes={"pid": os.getpid()}):
                    with tracer.start_as_current_span(f"worker-{w}-{i}-child"):
                        pass
        assert provider.force_flush(10_000)
        report = {"worker": w, "pid": os.getpid(), "inherited": inherited, "fds": trace_files()}
        print(json.dumps(report), flush=True)
        sys.exit(0)  # the exit hooks run: the provider's shutdown writes what is left
    children.append(pid)
for i in range(per_worker):
    with tracer.start_as_current_span(f"parent-{i}"):
        pass
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
with tracer.start_as_current_span("parent-after"):
    pass
print(json.dumps({"parent": os.getpid(), "codes": codes}), flush=True)
"""


@pytest.mark.skipif(
    not hasattr(os, "fork") or not os.path.isdir("/proc/self/fd"), reason="needs fork and /proc"
)
def test_pre_fork_workers_each_write_their_spans_through_their_own_connection(db: Path) -> None:
    workers, per_worker = 3, 100
    proc = python(PRE_FORK, str(db), str(workers), str(per_worker))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    reports = [json.loads(line) for line in out.splitlines()]
    [parent] = [r for r in reports if "parent" in r]
    assert parent["codes"] == [0] * workers
    children = {r["worker"]: r for r in reports if "worker" in r}
    assert sorted(children) == list(range(workers))
    for child in children.values():
        # The inherited descriptors stay open (closing them would drop the parent's locks) and are
        # not used: the child's writer opened the file again.
        assert child["fds"] > child["inherited"] >= 1, child
    for w, child in children.items():
        rows = query(
            db,
            "SELECT count(*), count(DISTINCT span_id), count(end_time_unix_nano), "
            "min(attributes ->> '$.pid'), max(attributes ->> '$.pid') FROM spans WHERE name GLOB ?",
            (f"worker-{w}-*",),
        )
        assert rows == [(2 * per_worker, 2 * per_worker, 2 * per_worker, child["pid"], child["pid"])]
    # Each worker's session was written by the worker itself, and ended with it.
    assert query(db, "SELECT task, owner_pid, status FROM sessions WHERE task IS NOT NULL ORDER BY task") == [
        (f"worker-{w}", children[w]["pid"], "completed") for w in range(workers)
    ]
    assert query(db, "SELECT count(*) FROM spans WHERE name GLOB 'parent-*'") == [(per_worker + 2,)]
    assert query(db, "SELECT count(*) FROM spans") == [(workers * 2 * per_worker + per_worker + 2,)]
    integrity_ok(db)
    assert_whole(db)
