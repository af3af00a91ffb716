"""Retention: what a sweep deletes, what it keeps, and that everyone else keeps working meanwhile.

Every file is written by the real SDK through ``SQLiteSpanProcessor`` (old sessions get old span
times, as a long-running application would have written them); dead and live processes, and the
writer racing a sweep, are real subprocesses.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Tracing, query, sha256, start_tracing
from opentelemetry import trace

from otel_sqlite_exporter import (
    ConfigurationError,
    Options,
    RetentionSweeper,
    SweepResult,
    TraceFileError,
    TraceStore,
)
from otel_sqlite_exporter._exceptions import ReadOnlyStoreError

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400 * 1_000_000_000
HOUR = 3_600 * 1_000_000_000
TEXT = "please summarise the refund policy for damaged parcels " * 4


def now() -> int:
    return time.time_ns()


def write_session(
    tracing: Tracing,
    session_id: str,
    *,
    start: int,
    traces: int = 2,
    calls: int = 2,
    tools: int = 2,
    text: str = TEXT,
) -> int:
    """A session of ``traces`` agent runs, each calling a model ``calls`` times with ``tools`` tool
    calls under each; the agent span repeats its calls' usage (so rollups must not count it twice).
    Returns the number of spans."""
    tracer = tracing.tracer
    made = 0
    at = start
    for _ in range(traces):
        root = tracer.start_span(
            "agent",
            start_time=at,
            attributes={
                "session.id": session_id,
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.usage.input_tokens": 100 * calls,
                "gen_ai.usage.output_tokens": 10 * calls,
            },
        )
        made += 1
        for call in range(calls):
            began = at + 1_000 + call * 1_000_000
            llm = tracer.start_span(
                "chat gpt-4o",
                context=trace.set_span_in_context(root),
                start_time=began,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": 100,
                    "gen_ai.usage.output_tokens": 10,
                    "gen_ai.prompt": text,
                },
            )
            made += 1
            for tool in range(tools):
                step = tracer.start_span(
                    "execute_tool lookup",
                    context=trace.set_span_in_context(llm),
                    start_time=began + 10 + tool,
                    attributes={"gen_ai.operation.name": "execute_tool"},
                )
                step.end(end_time=began + 20 + tool)
                made += 1
            llm.end(end_time=began + 900_000)
        root.end(end_time=at + 10_000_000)
        at += 20_000_000
    return made


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "traces.db"


@pytest.fixture
def tracing(path: Path) -> Iterator[Tracing]:
    tracing = start_tracing(path)
    yield tracing
    tracing.close()


def session_ids(path: Path) -> set[str]:
    return {row[0] for row in query(path, "SELECT session_id FROM sessions")}


def assert_consistent(path: Path) -> None:
    """What any reader may rely on at every moment: no span without its parent (no half trees),
    no span without its trace, no trace without its session, rollups equal to the spans present,
    and a full-text index matching the spans."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot
        orphans = conn.execute(
            "SELECT count(*) FROM spans AS s WHERE s.is_root = 0 AND s.parent_span_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM spans AS p "
            "WHERE p.trace_id = s.trace_id AND p.span_id = s.parent_span_id)"
        ).fetchone()[0]
        assert orphans == 0
        assert conn.execute(
            "SELECT count(*) FROM spans AS s "
            "WHERE NOT EXISTS (SELECT 1 FROM traces AS t WHERE t.trace_id = s.trace_id)"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM traces AS t WHERE NOT EXISTS "
            "(SELECT 1 FROM sessions AS se WHERE se.session_id = t.session_id)"
        ).fetchone() == (0,)
        counted = "FILTER (WHERE s.has_usage = 1 AND s.usage_below = 0)"
        wrong_traces = conn.execute(
            f"""SELECT t.trace_id FROM traces AS t JOIN (
                SELECT s.trace_id, count(*) AS n, coalesce(sum(s.input_tokens) {counted}, 0) AS i,
                       coalesce(sum(s.output_tokens) {counted}, 0) AS o, sum(s.cost_usd) {counted} AS c
                FROM spans AS s GROUP BY s.trace_id) AS a ON a.trace_id = t.trace_id
            WHERE t.span_count != a.n OR t.input_tokens != a.i OR t.output_tokens != a.o
               OR abs(coalesce(t.cost_usd, 0) - coalesce(a.c, 0)) > 1e-9"""
        ).fetchall()
        assert wrong_traces == []
        wrong_sessions = conn.execute(
            """SELECT se.session_id FROM sessions AS se JOIN (
                SELECT session_id, sum(span_count) AS n, sum(input_tokens) AS i, sum(output_tokens) AS o
                FROM traces GROUP BY session_id) AS a ON a.session_id = se.session_id
            WHERE se.span_count != a.n OR se.input_tokens != a.i OR se.output_tokens != a.o"""
        ).fetchall()
        assert wrong_sessions == []
        spans_with_text = conn.execute(
            "SELECT count(*) FROM spans WHERE input_text LIKE '%refund%'"
        ).fetchone()[0]
        found = conn.execute("SELECT count(*) FROM spans_fts WHERE spans_fts MATCH 'refund'").fetchone()[0]
        assert found == spans_with_text
        conn.execute("COMMIT")
    finally:
        conn.close()


def fts_intact(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO spans_fts (spans_fts) VALUES ('integrity-check')")  # raises if not
    finally:
        conn.close()


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# -- what goes, what stays -------------------------------------------------------------------------


def test_old_sessions_go_whole_with_their_traces_spans_and_search_rows(path: Path, tracing: Tracing) -> None:
    old_spans = sum(write_session(tracing, f"old-{i}", start=now() - (40 + i) * DAY) for i in range(3))
    write_session(tracing, "recent", start=now() - 2 * DAY)
    write_session(tracing, "today", start=now() - HOUR, text="a different question")
    tracing.flush()
    kept_before = query(path, "SELECT * FROM sessions WHERE session_id IN ('recent', 'today') ORDER BY 1")
    traces_before = query(path, "SELECT * FROM traces WHERE session_id IN ('recent', 'today') ORDER BY 1")

    with TraceStore(path, readonly=False) as store:
        deleted = store.cleanup_old_traces()  # the default: 30 days

    assert deleted == old_spans == 3 * 14
    assert session_ids(path) == {"recent", "today"}
    assert query(path, "SELECT count(*) FROM spans WHERE session_id LIKE 'old-%'") == [(0,)]
    assert query(path, "SELECT count(*) FROM traces WHERE session_id LIKE 'old-%'") == [(0,)]
    assert query(path, "SELECT count(*) FROM pending_ancestors") == [(0,)]
    # What stays is untouched, rollups included.
    assert (
        query(path, "SELECT * FROM sessions WHERE session_id IN ('recent', 'today') ORDER BY 1")
        == kept_before
    )
    assert (
        query(path, "SELECT * FROM traces WHERE session_id IN ('recent', 'today') ORDER BY 1")
        == traces_before
    )
    with TraceStore(path) as store:
        assert {hit.entry.session_id for hit in store.search("refund")} == {"recent"}
    assert_consistent(path)
    fts_intact(path)


def test_age_is_the_last_activity_of_any_span(path: Path, tracing: Tracing) -> None:
    # Started long ago, but a span of it ended yesterday: the session is still in use.
    tracer = tracing.tracer
    long_ago = now() - 60 * DAY
    root = tracer.start_span("long job", start_time=long_ago, attributes={"session.id": "long"})
    root.end(end_time=now() - DAY)
    # Started long ago, and a new trace joined it today.
    write_session(tracing, "revisited", start=long_ago)
    write_session(tracing, "revisited", start=now() - HOUR, traces=1)
    write_session(tracing, "forgotten", start=long_ago)
    tracing.flush()
    with TraceStore(path, readonly=False) as store:
        store.cleanup_old_traces(30)
    assert session_ids(path) == {"long", "revisited"}
    assert query(path, "SELECT span_count FROM sessions WHERE session_id = 'revisited'") == [(21,)]


def test_retention_days_zero_keeps_everything(path: Path, tracing: Tracing) -> None:
    write_session(tracing, "ancient", start=now() - 3_000 * DAY)
    tracing.flush()
    with TraceStore(path, readonly=False) as store:
        store.set_retention_days(0)
        assert store.cleanup_old_traces() == 0
        assert store.cleanup_old_traces(retention_days=0) == 0
    assert RetentionSweeper(path).sweep_once().deleted_sessions == 0
    assert session_ids(path) == {"ancient"}
    # An explicit period wins over the file's setting.
    assert RetentionSweeper(path, retention_days=365).sweep_once().deleted_sessions == 1


def test_retention_setting_lives_in_the_file(path: Path, tracing: Tracing) -> None:
    write_session(tracing, "s", start=now() - 10 * DAY)
    tracing.flush()
    with TraceStore(path) as store:
        assert store.get_retention_days() == 30
        with pytest.raises(ReadOnlyStoreError, match=r"readonly=False"):
            store.set_retention_days(7)
        with pytest.raises(ReadOnlyStoreError, match=r"readonly=False"):
            store.cleanup_old_traces()
    with TraceStore(path, readonly=False) as store:
        store.set_retention_days(7)
        for bad in (-1, True, "7", 2.5, None):
            with pytest.raises(ConfigurationError, match=r"days"):
                store.set_retention_days(bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"retention_days"):
            store.cleanup_old_traces(-3)
    assert query(path, "SELECT value FROM settings WHERE key = 'retention_days'") == [("7",)]
    with TraceStore(path) as store:
        assert store.get_retention_days() == 7
        assert store.get_settings()["retention_days"] == "7"
    # Every sweep without a period of its own now keeps a week.
    assert RetentionSweeper(path).sweep_once().deleted_sessions == 1


def test_a_setting_that_is_not_a_number_stops_deletion_by_age(
    path: Path, tracing: Tracing, caplog: pytest.LogCaptureFixture
) -> None:
    write_session(tracing, "old", start=now() - 90 * DAY)
    tracing.flush()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE settings SET value = 'forever' WHERE key = 'retention_days'")
    conn.commit()
    conn.close()
    with TraceStore(path) as store, pytest.raises(TraceFileError, match=r"retention_days = 'forever'"):
        store.get_retention_days()
    with caplog.at_level(logging.ERROR, logger="otel_sqlite_exporter"):
        result = RetentionSweeper(path).sweep_once()
    assert result.deleted_sessions == 0
    assert session_ids(path) == {"old"}
    assert any("'forever'" in r.getMessage() for r in caplog.records)


# -- running sessions ----------------------------------------------------------------------------


def test_a_running_active_session_is_never_deleted(path: Path, tracing: Tracing) -> None:
    # Open for 40 days and still written by this (live) process, which is allowed to be silent
    # for longer than that: it stays, even as the oldest session of a file over its size cap.
    tracer = tracing.tracer
    open_span = tracer.start_span("serving", start_time=now() - 40 * DAY, attributes={"session.id": "server"})
    write_session(tracing, "old", start=now() - 35 * DAY)
    tracing.flush()
    sweeper = RetentionSweeper(path, retention_days=30, max_db_bytes=1, stale_after_seconds=50 * 86_400)
    result = sweeper.sweep_once()
    assert result.deleted_sessions == 1
    assert result.interrupted_sessions == 0
    assert session_ids(path) == {"server"}
    assert query(path, "SELECT status FROM sessions") == [("running",)]
    open_span.end()


def test_a_silent_running_session_is_marked_interrupted(path: Path, tracing: Tracing) -> None:
    tracer = tracing.tracer
    silent = tracer.start_span("waiting", start_time=now() - 2 * HOUR, attributes={"session.id": "silent"})
    busy = tracer.start_span("working", attributes={"session.id": "busy"})
    tracing.flush()
    result = RetentionSweeper(path).sweep_once()  # stale after an hour by default
    assert result.interrupted_sessions == 1
    assert dict(query(path, "SELECT session_id, status FROM sessions")) == {
        "silent": "interrupted",
        "busy": "running",
    }
    with TraceStore(path) as store:
        assert [e.name for e in store.get_traces(status="interrupted")] == ["waiting"]
        assert [e.name for e in store.get_traces(status="running")] == ["working"]
    assert RetentionSweeper(path, stale_after_seconds=7_200 + 60).sweep_once().interrupted_sessions == 0
    silent.end()
    busy.end()


def test_an_interrupted_session_that_sends_spans_again_runs_again(path: Path, tracing: Tracing) -> None:
    tracer = tracing.tracer
    silent = tracer.start_span("waiting", start_time=now() - 2 * HOUR, attributes={"session.id": "resumed"})
    tracing.flush()
    assert RetentionSweeper(path).sweep_once().interrupted_sessions == 1
    assert query(path, "SELECT status FROM sessions") == [("interrupted",)]
    tracer.start_span("back to work", attributes={"session.id": "resumed"}).end()
    tracing.flush()
    assert query(path, "SELECT status FROM sessions") == [("running",)]  # "waiting" is still open
    silent.end()
    tracing.flush()
    assert query(path, "SELECT status FROM sessions") == [("completed",)]


START_AND_EXIT = """
    import os, sys
    from pathlib import Path
    from helpers import start_tracing
    tracing = start_tracing(Path(sys.argv[1]))
    tracing.tracer.start_span("step in flight", attributes={"session.id": sys.argv[2]})
    tracing.flush()
    print("written", flush=True)
    if sys.argv[3] == "die":
        os._exit(0)  # the process dies with its span still open
    sys.stdin.read()  # alive until the test closes stdin
"""


def test_a_running_session_of_a_dead_process_is_interrupted(path: Path) -> None:
    # The live process opens the file first: a writer opening it after the crash would mark the
    # dead process's session itself (see test_sigkill_leaves_started_spans_on_disk).
    alive = run_python(START_AND_EXIT, str(path), "alive", "wait")
    assert alive.stdout is not None
    assert alive.stdout.readline().strip() == "written", alive.stderr
    dead = run_python(START_AND_EXIT, str(path), "crashed", "die")
    try:
        assert dead.stdout is not None
        assert dead.stdout.readline().strip() == "written", dead.stderr
        dead.wait(20)
        result = RetentionSweeper(path).sweep_once()
        assert result.interrupted_sessions == 1
        assert dict(query(path, "SELECT session_id, status FROM sessions")) == {
            "crashed": "interrupted",
            "alive": "running",
        }
        with TraceStore(path) as store:
            step = store.get_traces(session_id="crashed")[0]
            assert (step.name, step.status, step.end_time) == ("step in flight", "interrupted", None)
            assert store.get_traces(session_id="alive")[0].status == "running"
        # Interrupted, not deleted: it ages like any other session from its last activity.
        assert session_ids(path) == {"crashed", "alive"}
    finally:
        alive.communicate("", timeout=20)
        dead.communicate(timeout=20)


# -- large sessions, crashes, and size caps ----------------------------------------------------------


def test_a_large_session_goes_over_several_transactions_leaving_a_whole_tree(
    path: Path, tracing: Tracing
) -> None:
    spans = write_session(tracing, "big", start=now() - 50 * DAY, traces=3, calls=6, tools=5)
    write_session(tracing, "small", start=now() - 45 * DAY, traces=1)
    write_session(tracing, "kept", start=now() - DAY)
    tracing.flush()
    assert spans == 3 * (1 + 6 * 6)
    sweeper = RetentionSweeper(path, retention_days=30, batch_size=10)
    seen_partial = []
    done = threading.Event()

    def watch() -> None:
        # A reader sampling the file while it is swept: every snapshot is consistent.
        while not done.is_set():
            assert_consistent(path)
            left = query(path, "SELECT count(*) FROM spans WHERE session_id = 'big'")[0][0]
            if 0 < left < spans:
                seen_partial.append(left)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = sweeper.sweep_once()
    finally:
        done.set()
        watcher.join()
    assert (result.deleted_sessions, result.deleted_traces, result.deleted_spans) == (2, 4, spans + 7)
    assert seen_partial, "the session should have been deleted over several transactions"
    assert session_ids(path) == {"kept"}
    assert_consistent(path)
    fts_intact(path)


def test_a_sweep_stopped_half_way_is_finished_by_the_next(path: Path, tracing: Tracing) -> None:
    spans = write_session(tracing, "big", start=now() - 50 * DAY, traces=2, calls=10, tools=9)
    tracing.flush()
    sweeper = RetentionSweeper(path, retention_days=30, batch_size=5)
    sweeper.start()
    deadline = time.monotonic() + 10
    while query(path, "SELECT count(*) FROM spans")[0][0] == spans and time.monotonic() < deadline:
        time.sleep(0.002)
    sweeper.stop()
    left = query(path, "SELECT count(*) FROM spans")[0][0]
    assert 0 < left < spans  # stopped in the middle of the session
    assert query(path, "SELECT span_count FROM sessions WHERE session_id = 'big'") == [(left,)]
    assert_consistent(path)
    # The next sweep carries on from there.
    result = RetentionSweeper(path, retention_days=30).sweep_once()
    assert (result.deleted_sessions, result.deleted_spans) == (1, left)
    assert session_ids(path) == set()
    fts_intact(path)


def test_max_db_bytes_deletes_the_oldest_sessions_until_the_file_fits(path: Path, tracing: Tracing) -> None:
    for i in range(12):
        write_session(tracing, f"s{i:02d}", start=now() - (12 - i) * HOUR, traces=3, text=TEXT * 20)
    tracing.flush()
    conn = sqlite3.connect(path)
    live = (
        conn.execute(
            "SELECT (SELECT page_count FROM pragma_page_count) "
            "- (SELECT freelist_count FROM pragma_freelist_count)"
        ).fetchone()[0]
        * conn.execute("PRAGMA page_size").fetchone()[0]
    )
    conn.close()
    cap = live // 2
    result = RetentionSweeper(path, retention_days=0, max_db_bytes=cap).sweep_once()
    left = sorted(session_ids(path))
    assert 0 < len(left) < 12
    # The newest stay, in one unbroken run: the oldest went first.
    assert left == [f"s{i:02d}" for i in range(12 - len(left), 12)]
    assert result.deleted_sessions == 12 - len(left)
    conn = sqlite3.connect(path)
    pages, free, size = (
        conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size")
    )
    conn.close()
    assert (pages - free) * size <= cap
    assert os.path.getsize(path) <= cap * 1.1
    assert_consistent(path)


def test_max_db_bytes_deletes_one_huge_session_whole_even_if_it_is_the_only_one(
    path: Path, tracing: Tracing
) -> None:
    spans = write_session(tracing, "huge", start=now() - HOUR, traces=8, calls=20, tools=4, text=TEXT * 20)
    tracing.flush()
    before = os.path.getsize(path) + os.path.getsize(f"{path}-wal")
    assert before > 2_000_000
    result = RetentionSweeper(path, max_db_bytes="300KB", batch_size=100).sweep_once()
    assert (result.deleted_sessions, result.deleted_traces, result.deleted_spans) == (1, 8, spans)
    assert query(path, "SELECT count(*) FROM spans") == [(0,)]
    assert session_ids(path) == set()
    # The space went back to the file system: the file (and its log) shrank.
    after = os.path.getsize(path) + os.path.getsize(f"{path}-wal")
    assert after < before / 5
    assert result.bytes_reclaimed == before - after
    assert result.file_bytes == after


def test_sweeping_most_of_a_file_shrinks_it_on_disk(path: Path, tracing: Tracing) -> None:
    for i in range(30):
        write_session(tracing, f"old-{i}", start=now() - 40 * DAY + i, calls=4, text=TEXT * 20)
    write_session(tracing, "new", start=now() - HOUR)
    tracing.flush()
    tracing.close()
    before = os.path.getsize(path)
    assert before > 2_000_000
    result = RetentionSweeper(path).sweep_once()
    assert result.deleted_sessions == 30
    assert os.path.getsize(path) < before / 4
    assert query(path, "PRAGMA freelist_count") == [(0,)]
    assert session_ids(path) == {"new"}


# -- others keep working -----------------------------------------------------------------------------


WRITER_PROCESS = """
    import sys, time
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from otel_sqlite_exporter import SQLiteSpanExporter
    exporter = SQLiteSpanExporter(sys.argv[1])
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("writer process")
    print("started", flush=True)
    made = 0
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        with tracer.start_as_current_span("process step", attributes={"session.id": f"p-{made // 10}"}):
            made += 1
    provider.shutdown()
    print(made, exporter.stats["failed"], flush=True)
"""


def test_a_sweep_racing_a_writer_thread_and_a_writer_process(path: Path, tracing: Tracing) -> None:
    old = sum(write_session(tracing, f"old-{i}", start=now() - (31 + i) * DAY) for i in range(100))
    tracing.flush()
    process = run_python(WRITER_PROCESS, str(path), "2.5")
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    stop = threading.Event()
    made = [0]

    def write() -> None:
        while not stop.is_set():
            with tracing.tracer.start_as_current_span(
                "thread step", attributes={"session.id": f"t-{made[0] // 10}"}
            ):
                made[0] += 1
            time.sleep(0.0005)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        result = RetentionSweeper(path, batch_size=30).sweep_once()
    finally:
        stop.set()
        writer.join()
    out, err = process.communicate(timeout=30)
    tracing.flush()
    written, failed = (int(n) for n in out.split())
    assert (result.deleted_sessions, result.deleted_spans) == (100, old)
    assert failed == 0, err
    assert tracing.processor.stats["failed"] == 0
    assert tracing.processor.stats["dropped"] == 0
    assert query(path, "SELECT count(*) FROM spans WHERE name = 'process step'") == [(written,)]
    assert query(path, "SELECT count(*) FROM spans WHERE name = 'thread step'") == [(made[0],)]
    assert query(path, "SELECT count(*) FROM sessions WHERE session_id LIKE 'old-%'") == [(0,)]
    assert_consistent(path)


def test_sweeping_while_a_reader_holds_a_long_read_transaction(path: Path, tracing: Tracing) -> None:
    for i in range(30):
        write_session(tracing, f"old-{i}", start=now() - 40 * DAY, calls=4, text=TEXT * 20)
    write_session(tracing, "new", start=now() - HOUR)
    tracing.flush()
    tracing.close()
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    seen = reader.execute("SELECT count(*) FROM spans").fetchone()[0]
    before = os.path.getsize(path)
    try:
        started = time.monotonic()
        first = RetentionSweeper(path).sweep_once()
        assert time.monotonic() - started < 5  # it did not wait for the reader
        assert first.deleted_sessions == 30
        # The reader still sees its snapshot, whole.
        assert reader.execute("SELECT count(*) FROM spans").fetchone()[0] == seen
        assert session_ids(path) == {"new"}
    finally:
        reader.execute("COMMIT")
        reader.close()
    # Once the reader is gone the file shrinks, on this sweep or the next.
    second = RetentionSweeper(path).sweep_once()
    assert second.deleted_sessions == 0
    assert os.path.getsize(path) < before / 3
    assert os.path.getsize(f"{path}-wal") == 0


# -- the background thread --------------------------------------------------------------------------


def test_the_thread_sweeps_at_start_and_stops_promptly(path: Path, tracing: Tracing) -> None:
    write_session(tracing, "old", start=now() - 40 * DAY)
    tracing.flush()
    with RetentionSweeper(path, interval_seconds=3_600) as sweeper:
        assert sweeper.running
        deadline = time.monotonic() + 10
        while session_ids(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session_ids(path) == set()
        started = time.monotonic()
    assert time.monotonic() - started < 1  # did not wait out the hour
    assert not sweeper.running
    assert not [t for t in threading.enumerate() if t.name == "otel-sqlite-retention"]
    # Stopped, it still sweeps when asked to.
    write_session(tracing, "old again", start=now() - 40 * DAY)
    tracing.flush()
    result = sweeper.sweep_once()
    assert (result.deleted_sessions, result.complete) == (1, True)
    sweeper.close()


def test_a_failed_sweep_is_logged_and_the_thread_carries_on(
    path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="otel_sqlite_exporter"):
        sweeper = RetentionSweeper(path, interval_seconds=0.05).start()
        try:
            deadline = time.monotonic() + 10
            while not any("no such trace file" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert sweeper.running
            tracing = start_tracing(path)
            write_session(tracing, "old", start=now() - 40 * DAY)
            tracing.close()
            while session_ids(path):
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            sweeper.stop()
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert failures and str(path) in failures[0].getMessage()
    summaries = [r.getMessage() for r in caplog.records if "deleted 1 session," in r.getMessage()]
    assert summaries and "retention sweep" in summaries[0] and "\n" not in summaries[0]


def test_a_sweep_stopped_right_after_a_deletion_still_counts_it(
    path: Path, tracing: Tracing, caplog: pytest.LogCaptureFixture
) -> None:
    write_session(tracing, "old", start=now() - 40 * DAY)
    tracing.flush()
    sweeper = RetentionSweeper(path, interval_seconds=3_600)

    def stop_when_counting(sql: str) -> None:
        # stop() arrives while the sweep reads back what its committed transaction deleted.
        if "temp.sweep_counts" in sql and sql.lstrip().startswith("SELECT"):
            sweeper.stop(timeout=0)

    sweeper._connection().set_trace_callback(stop_when_counting)
    with caplog.at_level(logging.INFO, logger="otel_sqlite_exporter"):
        sweeper.start()
        deadline = time.monotonic() + 10
        while sweeper.running:  # the thread ends by itself once stopped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sweeper.stop()
    assert session_ids(path) == set()
    summaries = [r.getMessage() for r in caplog.records if "retention sweep" in r.getMessage()]
    assert len(summaries) == 1
    assert "deleted 1 session," in summaries[0] and "stopped early" in summaries[0]


def test_background_sweepers_sharing_a_file_take_turns(path: Path, tracing: Tracing) -> None:
    write_session(tracing, "s", start=now() - HOUR)
    tracing.flush()
    RetentionSweeper(path).sweep_once()  # just swept
    write_session(tracing, "old", start=now() - 40 * DAY)
    tracing.flush()
    with RetentionSweeper(path, interval_seconds=3_600):
        time.sleep(0.3)
    assert "old" in session_ids(path)  # its turn comes later
    with RetentionSweeper(path, interval_seconds=0.1):
        deadline = time.monotonic() + 10
        while "old" in session_ids(path):
            assert time.monotonic() < deadline
            time.sleep(0.01)


# -- configuration, dry run, results --------------------------------------------------------------


def test_from_options(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RetentionSweeper.from_options(Options.resolve(path)) is None
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_RETENTION_DAYS", "14")
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_SWEEP_INTERVAL_SECONDS", "60")
    sweeper = RetentionSweeper.from_options(Options.resolve(path))
    assert sweeper is not None
    assert (sweeper.retention_days, sweeper.max_db_bytes, sweeper.interval_seconds) == (14, None, 60)
    monkeypatch.delenv("OTEL_EXPORTER_SQLITE_RETENTION_DAYS")
    sweeper = RetentionSweeper.from_options(
        Options.resolve(path, {"max_db_bytes": "2GiB", "stale_after_seconds": 5})
    )
    assert sweeper is not None
    assert (sweeper.retention_days, sweeper.max_db_bytes, sweeper.stale_after_seconds) == (
        None,
        2 * 1024**3,
        5,
    )


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"retention_days": -1}, "retention_days"),
        ({"retention_days": "30"}, "retention_days"),
        ({"max_db_bytes": "lots"}, "max_db_bytes"),
        ({"max_db_bytes": 0}, "max_db_bytes"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"interval_seconds": float("nan")}, "interval_seconds"),
        ({"batch_size": 0}, "batch_size"),
        ({"stale_after_seconds": -5}, "stale_after_seconds"),
    ],
)
def test_bad_arguments_are_named(path: Path, arguments: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        RetentionSweeper(path, **arguments)  # type: ignore[arg-type]


def test_a_missing_file_is_an_error_naming_it(path: Path) -> None:
    with pytest.raises(TraceFileError, match="no such trace file") as info:
        RetentionSweeper(path).sweep_once()
    assert str(path) in str(info.value)
    assert not path.exists()


def test_dry_run_lists_what_would_go_and_changes_nothing(path: Path, tracing: Tracing) -> None:
    write_session(tracing, "old", start=now() - 40 * DAY)
    write_session(tracing, "older", start=now() - 50 * DAY)
    write_session(tracing, "new", start=now() - HOUR)
    tracing.flush()
    tracing.close()
    before = sha256(path)
    plan = RetentionSweeper(path).plan()
    assert sha256(path) == before
    assert [(p.session_id, p.reason, p.traces, p.spans) for p in plan.sessions] == [
        ("older", "age", 2, 14),
        ("old", "age", 2, 14),
    ]
    assert (plan.deleted_sessions, plan.deleted_traces, plan.deleted_spans) == (2, 4, 28)
    assert plan.retention_days == 30
    sized = RetentionSweeper(path, retention_days=0, max_db_bytes=1).plan()
    assert [p.session_id for p in sized.sessions] == ["older", "old", "new"]
    assert {p.reason for p in sized.sessions} == {"size"}
    assert sha256(path) == before
    # And the sweep does what the plan said.
    result = RetentionSweeper(path).sweep_once()
    assert (result.deleted_sessions, result.deleted_traces, result.deleted_spans) == (2, 4, 28)


def test_sweep_result_reads_as_one_line(path: Path, tracing: Tracing) -> None:
    write_session(tracing, "old", start=now() - 40 * DAY)
    tracing.flush()
    result = RetentionSweeper(path).sweep_once()
    assert isinstance(result, SweepResult)
    assert result.duration_s > 0
    text = str(result)
    assert "\n" not in text
    assert "deleted 1 session, 2 traces, 14 spans" in text
    assert result.to_dict()["deleted_spans"] == 14


def test_no_sweep_statement_reads_a_whole_table(path: Path, tracing: Tracing) -> None:
    # Every statement a sweep runs, those inside its triggers included, finds its rows through an
    # index: a sweep of a few sessions costs the same in a file of a million spans.
    from otel_sqlite_exporter import _retention

    write_session(tracing, "s", start=now() - 40 * DAY)
    silent = tracing.tracer.start_span("waiting", start_time=now() - 2 * HOUR, attributes={"session.id": "w"})
    tracing.flush()
    sweeper = RetentionSweeper(path, max_db_bytes=1)
    conn = sweeper._connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    sweeper.sweep_once()
    conn.set_trace_callback(None)
    for scratch in _retention._SCRATCH:
        if "TRIGGER" in scratch:
            body = scratch[scratch.index(" BEGIN") + 6 : scratch.rindex("END")]
            statements += [part for part in body.split(";\n") if part.strip()]
    checked = 0
    for statement in statements:
        sql = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--")).strip()
        if not sql.upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            continue
        if sql == "SELECT coalesce(sum(span_count), 0) FROM sessions":
            continue  # max_db_bytes: the size of a span on average, once per round (one row a session)
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", _dummy_params(sql))]
        checked += 1
        for line in plan:
            scanned = re.match(r"SCAN (\w+)(?: AS \w+)?( USING .*)?$", line)
            # (EXPLAIN names a table by its alias when it has one: s, se, t, p here.)
            if scanned and scanned.group(1) in (
                "spans",
                "traces",
                "sessions",
                "pending_ancestors",
                "s",
                "se",
                "t",
                "p",
            ):
                pytest.fail(f"{sql}\n    reads every row of {scanned.group(1)}: {plan}")
    assert checked > 15
    assert any("'interrupted'" in statement for statement in statements)
    sweeper.close()
    silent.end()


def _dummy_params(sql: str) -> tuple[object, ...]:
    return (0,) * sql.count("?")
