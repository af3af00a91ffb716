"""SQLiteSpanProcessor and SQLiteSpanExporter: the write path as the application sees it.

Start rows, flush and shutdown, counters and drops, concurrency, a crash (SIGKILL), fork, unwritable
files and configuration from the environment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from helpers import query, sha256
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from otel_sqlite_exporter import (
    ConfigurationError,
    Options,
    SQLiteSpanExporter,
    SQLiteSpanProcessor,
    TraceStore,
    session,
)

LOGGER = "otel_sqlite_exporter"
REASON = re.compile(r"cannot|unable|not a directory|read-only|readonly", re.IGNORECASE)


def tracer_for(processor: SQLiteSpanProcessor) -> tuple[TracerProvider, trace.Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("test_processor")


def error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "traces.db"


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A path no process can create: its parent is a regular file (chmod does not stop root)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")
    return blocker / "traces.db"


@pytest.fixture
def processor(db: Path) -> Iterator[SQLiteSpanProcessor]:
    p = SQLiteSpanProcessor(db)
    yield p
    p.shutdown()


# --- start rows, flush, shutdown -------------------------------------------------------------------------


def test_the_file_is_open_when_the_constructor_returns(db: Path) -> None:
    # Opened while the application sets up, not under its first burst of spans.
    processor = SQLiteSpanProcessor(db)
    try:
        assert db.exists()
        assert query(db, "SELECT count(*) FROM sessions") == [(0,)]
    finally:
        processor.shutdown()


def test_a_file_that_cannot_be_opened_yet_delays_the_constructor_a_second_at_most(db: Path) -> None:
    SQLiteSpanProcessor(db).shutdown()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # in exclusive locking mode, no other connection can even read
    began = time.monotonic()
    processor = SQLiteSpanProcessor(db, busy_timeout_millis=5_000)
    took = time.monotonic() - began
    provider, tracer = tracer_for(processor)
    try:
        assert 0.9 <= took < 2.5, took
        with tracer.start_as_current_span("made while the file was held"):
            pass
        holder.execute("ROLLBACK")
        holder.close()  # the opening, still waiting, gets through
        assert processor.force_flush(10_000)
        assert query(db, "SELECT name FROM spans") == [("made while the file was held",)]
    finally:
        provider.shutdown()


def test_start_row_is_visible_before_the_span_ends(processor: SQLiteSpanProcessor, db: Path) -> None:
    provider, tracer = tracer_for(processor)
    span = tracer.start_span("long step", attributes={"step": 1})
    assert processor.force_flush(10_000)
    [(name, start, end, status)] = query(
        db, "SELECT name, start_time_unix_nano, end_time_unix_nano, status_code FROM spans"
    )
    assert (name, end, status) == ("long step", None, "UNSET")
    assert start == span.start_time  # type: ignore[attr-defined]
    assert query(db, "SELECT status FROM traces") == [("running",)]
    span.set_attribute("late", "value")
    span.end()
    assert processor.force_flush(10_000)
    [(end, duration, attributes)] = query(
        db, "SELECT end_time_unix_nano, duration_ms, attributes ->> '$.late' FROM spans"
    )
    assert end == span.end_time  # type: ignore[attr-defined]
    assert duration == pytest.approx((span.end_time - span.start_time) / 1e6)  # type: ignore[attr-defined]
    assert attributes == "value"
    assert query(db, "SELECT count(*) FROM spans") == [(1,)]
    assert query(db, "SELECT status FROM traces") == [("completed",)]
    provider.shutdown()


def test_span_started_and_ended_within_one_batch_is_one_row(db: Path) -> None:
    processor = SQLiteSpanProcessor(db, schedule_delay_millis=60_000)
    provider, tracer = tracer_for(processor)
    with tracer.start_as_current_span("parent"):
        for i in range(50):
            with tracer.start_as_current_span(f"child-{i}"):
                pass
    assert processor.force_flush(10_000)
    assert query(db, "SELECT count(*), count(DISTINCT span_id), count(end_time_unix_nano) FROM spans") == [
        (51, 51, 51)
    ]
    assert processor.stats["batches"] >= 1
    provider.shutdown()


def test_force_flush_returns_true_and_makes_everything_visible(db: Path) -> None:
    processor = SQLiteSpanProcessor(db, schedule_delay_millis=60_000)  # only a flush writes promptly
    provider, tracer = tracer_for(processor)
    for i in range(300):
        with tracer.start_as_current_span(f"span-{i}"):
            pass
    assert processor.force_flush(10_000) is True
    assert query(db, "SELECT count(*) FROM spans WHERE end_time_unix_nano IS NOT NULL") == [(300,)]
    stats = processor.stats
    assert stats["enqueued"] == stats["written"] == 600
    assert (stats["dropped"], stats["failed"], stats["queued"], stats["errors"]) == (0, 0, 0, 0)
    assert stats["last_error"] is None
    provider.shutdown()


def test_the_log_is_copied_into_the_file_while_the_processor_runs(db: Path) -> None:
    processor = SQLiteSpanProcessor(db)
    provider, tracer = tracer_for(processor)
    try:
        for i in range(2_000):
            with tracer.start_as_current_span(f"span-{i}", attributes={"payload": "x" * 1_000}):
                pass
        assert processor.force_flush(10_000)
        # The spans (over 2 MB) reach the file itself, not only its log, with the processor open.
        deadline = time.monotonic() + 10
        while os.path.getsize(db) < 2_000_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.getsize(db) >= 2_000_000
        assert processor.stats["errors"] == 0
    finally:
        provider.shutdown()
    assert query(db, "SELECT count(*) FROM spans") == [(2_000,)]


def test_a_log_that_no_checkpoint_copied_whole_stays_overdue_until_one_does(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otel_sqlite_exporter import _writer

    monkeypatch.setattr(_writer, "_CHECKPOINT_AFTER_CHARS", 0)  # any unsettled log is overdue
    writer = _writer.TraceWriter(Options.resolve(db))
    spans = list(_finished(15))
    try:
        writer.write(spans[:5])
        reader = sqlite3.connect(db)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM spans").fetchall()  # holds its snapshot of the log
        writer.write(spans[5:10])
        writer.copy_log()
        assert writer.log_overdue()  # the reader's snapshot kept the newest pages in the log
        # Between two commits a reader still in the way is waited for as long again, not at once.
        writer.copy_log(between_commits=True)
        assert not writer.log_overdue()
        writer.write(spans[10:])
        assert writer.log_overdue()
        reader.rollback()
        reader.close()
        writer.copy_log()
        assert not writer.log_overdue()
    finally:
        writer.close()
    assert query(db, "SELECT count(*) FROM spans") == [(15,)]


def test_prepared_batches_join_into_documents_of_bounded_size_in_order_skipping_empty_ones(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otel_sqlite_exporter import _writer
    from otel_sqlite_exporter._writer import TraceWriter, batch_documents

    writer = TraceWriter(Options.resolve(db))
    spans = list(_finished(6))
    try:
        assert batch_documents([None, ""]) == []  # nothing prepared: nothing to write
        prepared = [
            writer.prepare(spans[:2]),
            None,
            "",
            writer.prepare(spans[2:5]),
            writer.prepare(spans[5:]),
        ]
        assert prepared[0] is not None and prepared[3] is not None and prepared[4] is not None
        rows = [json.loads(f"[{p}]") for p in (prepared[0], prepared[3], prepared[4])]
        # Joined until a document holds _DOCUMENT_CHARS or more: here the first two, then the last.
        monkeypatch.setattr(_writer, "_DOCUMENT_CHARS", len(prepared[0]) + 1)
        documents = batch_documents(prepared)
        assert [json.loads(d) for d in documents] == [rows[0] + rows[1], rows[2]]
        # However small the documents are to be, a batch is cut into _DOCUMENTS at most.
        monkeypatch.setattr(_writer, "_DOCUMENT_CHARS", 1)
        monkeypatch.setattr(_writer, "_DOCUMENTS", 2)
        capped = [json.loads(d) for d in batch_documents(prepared)]
        assert len(capped) <= 2 and [row for d in capped for row in d] == rows[0] + rows[1] + rows[2]
        monkeypatch.undo()
        assert [json.loads(d) for d in batch_documents(prepared)] == [rows[0] + rows[1] + rows[2]]
        writer.commit(documents)
    finally:
        writer.close()
    stored = query(db, "SELECT name FROM spans ORDER BY start_time_unix_nano")
    assert stored == [(span.name,) for span in sorted(spans, key=lambda s: s.start_time or 0)]


def test_a_batch_is_one_statement_and_its_own_transaction_unless_it_stops_early(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each statement costs the writer a wait for the GIL while the application runs, so a batch is
    # one statement that takes the write lock, applies session() opens and closes, prices models it
    # meets first, writes its documents and commits. One whose usage climbs deeper than the
    # statement does rolls back whole and is written again inside a transaction, a step a statement.
    from otel_sqlite_exporter import _writer
    from otel_sqlite_exporter._writer import SessionEvent, TraceWriter, batch_documents

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("x")
    call = {
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 10,
    }
    with tracer.start_as_current_span("agent"), tracer.start_as_current_span("chat", attributes=call):
        pass
    chain = [tracer.start_span("level 0")]
    for level in range(1, 40):
        context = trace.set_span_in_context(chain[-1])
        chain.append(
            tracer.start_span(f"level {level}", context=context, attributes=call if level == 39 else {})
        )
    for span in chain:
        span.end()
    spans = memory.get_finished_spans()
    writer = TraceWriter(Options.resolve(db))
    statements: list[str] = []

    def executed(sql: str) -> None:
        # Each step of a trigger is reported with its statement's text: a statement is counted once.
        text = " ".join(sql.split()[:3])
        if not text.startswith("--") and (not statements or statements[-1] != text):
            statements.append(text)

    writer._conn.set_trace_callback(executed)
    one_statement = "UPDATE temp.write_batch SET"
    try:
        block = [
            SessionEvent("open", "s-1", 1, task="a task"),
            SessionEvent("close", "s-1", 2, outcome="completed"),
        ]
        # gpt-4o is new to this writer: priced from Python, inside the statement. Two documents,
        # a span each: still one statement.
        monkeypatch.setattr(_writer, "_DOCUMENT_CHARS", 1)
        writer.commit(batch_documents([writer.prepare([span]) for span in spans[:2]]), events=block)
        assert statements == [one_statement]
        statements.clear()
        # The 39 levels above the last first, then the last, whose usage climbs them all: more
        # than the statement climbs, in its second document.
        writer.commit(batch_documents([writer.prepare(spans[2:41]), writer.prepare(spans[41:])]))
        assert statements[0] == one_statement
        assert "BEGIN IMMEDIATE" in statements and statements[-1] == "COMMIT"
    finally:
        writer.close()
    rows = query(db, "SELECT name, cost_usd > 0 FROM spans WHERE input_tokens IS NOT NULL ORDER BY name")
    assert rows == [("chat", 1), ("level 39", 1)]
    # The batch that stopped early is stored once and its usage rolled up once.
    rollups = query(db, "SELECT span_count, input_tokens, cost_usd > 0 FROM traces ORDER BY span_count")
    assert rollups == [(2, 1000, 1), (40, 1000, 1)]
    assert query(db, "SELECT count(*) FROM spans WHERE usage_below = 1") == [(40,)]
    assert query(db, "SELECT task, status FROM sessions WHERE session_id = 's-1'") == [
        ("a task", "completed")
    ]


def test_a_new_resource_waits_out_a_lock_held_past_the_busy_timeout(db: Path) -> None:
    # Mapping stores a span's resource the first time it meets it: a lock another process holds
    # a little past the busy timeout costs a retry (counted, not logged), not the spans.
    processor = SQLiteSpanProcessor(db, busy_timeout_millis=50, schedule_delay_millis=10)
    provider = TracerProvider(resource=Resource.create({"service.name": "held-up"}))
    provider.add_span_processor(processor)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.12, holder.rollback)
    release.start()
    try:
        with provider.get_tracer("t").start_as_current_span("waits"):
            pass
        assert processor.force_flush(10_000)
    finally:
        release.join()
        holder.close()
        provider.shutdown()
    stats = processor.stats
    assert (stats["written"], stats["failed"]) == (2, 0) and stats["errors"] >= 1
    stored = query(db, "SELECT r.service_name FROM spans JOIN resources AS r USING (resource_id)")
    assert stored == [("held-up",)]


def test_a_writer_that_waited_for_the_lock_leaves_the_next_turn_to_others(db: Path) -> None:
    from otel_sqlite_exporter._writer import TraceWriter

    writer = TraceWriter(Options.resolve(db))
    spans = list(_finished(4))
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        writer.write(spans[:2])
        assert not writer.contended  # nobody else writes: no turn to leave
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock for 0.2 s
        release = threading.Timer(0.2, holder.rollback)
        release.start()
        writer.write(spans[2:])
        release.join()
        assert writer.contended
        asked = time.monotonic()
        writer.yield_turn()  # about as long as it held the lock: briefly, and at most half a second
        assert time.monotonic() - asked < 0.5
        writer.write(spans[:1])
        assert not writer.contended
    finally:
        holder.close()
        writer.close()
    assert query(db, "SELECT count(*) FROM spans") == [(4,)]


def test_shutdown_writes_everything_queued_and_ignores_later_spans(db: Path) -> None:
    processor = SQLiteSpanProcessor(db, schedule_delay_millis=60_000)
    provider, tracer = tracer_for(processor)
    for i in range(200):
        with tracer.start_as_current_span(f"before-{i}"):
            pass
    open_span = tracer.start_span("still open at shutdown")
    started = time.monotonic()
    processor.shutdown()
    assert time.monotonic() - started < 10  # it does not wait for the schedule delay
    assert query(db, "SELECT count(*) FROM spans WHERE name LIKE 'before-%'") == [(200,)]
    assert query(db, "SELECT end_time_unix_nano FROM spans WHERE name = 'still open at shutdown'") == [
        (None,)
    ]
    # After shutdown: no error, nothing written, flush and a second shutdown are harmless.
    open_span.end()
    for i in range(10):
        with tracer.start_as_current_span(f"after-{i}"):
            pass
    assert processor.force_flush(1_000)
    processor.shutdown()
    provider.shutdown()
    assert query(db, "SELECT count(*) FROM spans WHERE name LIKE 'after-%'") == [(0,)]
    assert query(db, "SELECT count(*) FROM spans") == [(201,)]


def test_provider_shutdown_flushes_the_processor(db: Path) -> None:
    processor = SQLiteSpanProcessor(db, schedule_delay_millis=60_000)
    provider, tracer = tracer_for(processor)
    with tracer.start_as_current_span("only"):
        pass
    provider.shutdown()
    assert query(db, "SELECT name FROM spans WHERE end_time_unix_nano IS NOT NULL") == [("only",)]


# --- counters and the bounded queue ----------------------------------------------------------------------


def test_tiny_queue_drops_and_counts_without_blocking_or_raising(db: Path) -> None:
    processor = SQLiteSpanProcessor(db, max_queue_size=10, schedule_delay_millis=600_000)
    provider, tracer = tracer_for(processor)
    spans = 500
    started = time.monotonic()
    for i in range(spans):
        with tracer.start_as_current_span(f"burst-{i}"):
            pass
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"the application was blocked for {elapsed:.1f}s"
    before = processor.stats
    assert before["dropped"] > 0
    assert before["queued"] <= 10
    assert processor.force_flush(10_000)
    stats = processor.stats
    assert stats["queued"] == 0
    # Every span event (start + end) is accounted for: accepted or counted as dropped.
    assert stats["enqueued"] + stats["dropped"] == 2 * spans
    assert stats["enqueued"] == stats["written"] + stats["failed"] + stats["queued"]
    assert stats["failed"] == 0
    # What was accepted is on disk.
    stored = query(db, "SELECT count(*) FROM spans")[0][0]
    assert 0 < stored <= stats["written"]
    provider.shutdown()


def test_many_threads_store_every_span_exactly_once(db: Path) -> None:
    processor = SQLiteSpanProcessor(db)
    provider, tracer = tracer_for(processor)
    threads_n, per_thread = 8, 500
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                with tracer.start_as_current_span(f"t{t}-{i}", attributes={"thread": t, "i": i}):
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert processor.force_flush(30_000)
    total = threads_n * per_thread
    assert query(
        db,
        "SELECT count(*), count(DISTINCT name), count(DISTINCT trace_id || span_id), "
        "count(end_time_unix_nano) FROM spans",
    ) == [(total, total, total, total)]
    per = query(db, "SELECT attributes ->> '$.thread', count(*) FROM spans GROUP BY 1 ORDER BY 1")
    assert per == [(t, per_thread) for t in range(threads_n)]
    stats = processor.stats
    assert stats["dropped"] == 0
    assert stats["enqueued"] == stats["written"] == 2 * total
    provider.shutdown()


def test_a_transaction_of_many_documents_rolls_up_as_one(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite writes a transaction's documents one after another: sessions opened in the first and
    # closed in a later one, and traces whose spans fall into several, come out as if it were one.
    from otel_sqlite_exporter import _writer

    monkeypatch.setattr(_writer, "_DOCUMENT_CHARS", 1)  # each mapped batch a document of its own
    documents: list[int] = []
    commit = _writer.TraceWriter.commit

    def counted(self: _writer.TraceWriter, batch: Sequence[str], *args: object, **kwargs: object) -> None:
        documents.append(len(batch))
        commit(self, batch, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_writer.TraceWriter, "commit", counted)
    processor = SQLiteSpanProcessor(db, schedule_delay_millis=2_000)
    provider, tracer = tracer_for(processor)
    usage = {
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 1,
    }
    for s in range(20):
        with session(task=f"task {s}"):
            for _ in range(10):
                # The agent repeats its model call's usage: counted once, from the call.
                with tracer.start_as_current_span("agent", attributes=usage):
                    with tracer.start_as_current_span("chat", attributes=usage):
                        with tracer.start_as_current_span("tool"):
                            pass
    provider.shutdown()
    assert max(documents) > 1
    assert query(db, "SELECT count(*), sum(end_time_unix_nano IS NOT NULL) FROM spans") == [(600, 600)]
    assert query(
        db, "SELECT span_count, input_tokens, output_tokens, status FROM traces GROUP BY 1, 2, 3, 4"
    ) == [(3, 10, 1, "completed")]
    assert query(
        db,
        "SELECT count(*), min(span_count), max(span_count), sum(input_tokens), min(status), max(status) "
        "FROM sessions",
    ) == [(20, 30, 30, 2000, "completed", "completed")]


# --- crash and fork --------------------------------------------------------------------------------------

CRASH_SCRIPT = """
import os, signal, sys
from opentelemetry.sdk.trace import TracerProvider
from otel_sqlite_exporter import SQLiteSpanProcessor, session

processor = SQLiteSpanProcessor(sys.argv[1])
provider = TracerProvider()
provider.add_span_processor(processor)
tracer = provider.get_tracer("crash")
with session(task="doomed"):
    with tracer.start_as_current_span("agent run"):
        for i in range(3):
            with tracer.start_as_current_span(f"finished-{i}"):
                pass
        with tracer.start_as_current_span("llm call in flight"):
            tracer.start_span("tool in flight").set_attribute("x", 1)
            assert processor.force_flush(10_000)
            print("flushed", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_leaves_started_spans_on_disk(db: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(db)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "flushed" in result.stdout
    rows = dict(query(db, "SELECT name, end_time_unix_nano IS NULL FROM spans"))
    assert rows == {
        "agent run": 1,
        "llm call in flight": 1,
        "tool in flight": 1,
        "finished-0": 0,
        "finished-1": 0,
        "finished-2": 0,
    }
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert query(db, "SELECT count(DISTINCT session_id) FROM spans") == [(1,)]
    assert query(db, "SELECT task, status FROM sessions") == [("doomed", "running")]
    # A reader, which never writes, reads the dead process's session and open spans as interrupted.
    before = sha256(db)
    with TraceStore(db) as store:
        [crashed] = store.get_sessions(status="interrupted")
        assert (crashed.task, store.get_sessions(status="running")) == ("doomed", [])
        assert sorted(e.name for e in store.get_traces(status="interrupted")) == [
            "agent run",
            "llm call in flight",
            "tool in flight",
        ]
        assert "interrupted" in store.format_tree(crashed.id)
    assert sha256(db) == before
    assert query(db, "SELECT status FROM sessions") == [("running",)]
    # The file stays usable: a new writer marks the dead process's session interrupted and writes on.
    processor = SQLiteSpanProcessor(db)
    provider, tracer = tracer_for(processor)
    with tracer.start_as_current_span("after the crash"):
        pass
    provider.shutdown()
    assert query(db, "SELECT count(*) FROM spans") == [(7,)]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    with TraceStore(db) as store:
        assert {(s.task, s.status) for s in store.get_sessions()} == {
            ("doomed", "interrupted"),
            (None, "completed"),
        }
        assert sorted(e.name for e in store.get_traces(status="interrupted")) == [
            "agent run",
            "llm call in flight",
            "tool in flight",
        ]
        assert store.get_traces(status="running") == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_forked_child_writes_through_its_own_connection(db: Path) -> None:
    processor = SQLiteSpanProcessor(db, schedule_delay_millis=50)
    provider, tracer = tracer_for(processor)
    with tracer.start_as_current_span("parent-before-fork"):
        pass
    assert processor.force_flush(10_000)  # the writer thread and its connection exist before fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            for i in range(100):
                with tracer.start_as_current_span(f"child-{i}"):
                    pass
            processor.shutdown()
            code = 0
        finally:
            os._exit(code)
    for i in range(100):
        with tracer.start_as_current_span(f"parent-{i}"):
            pass
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert processor.force_flush(10_000)
    counts = dict(query(db, "SELECT substr(name, 1, instr(name, '-') - 1), count(*) FROM spans GROUP BY 1"))
    assert counts == {"child": 100, "parent": 101}
    assert query(db, "SELECT count(*) FROM spans WHERE end_time_unix_nano IS NULL") == [(0,)]
    provider.shutdown()
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


# --- SQLiteSpanExporter behind the SDK's processors --------------------------------------------------------


def test_exporter_behind_batch_span_processor_writes_every_span(db: Path) -> None:
    exporter = SQLiteSpanExporter(db)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=4096, max_export_batch_size=256))
    tracer = provider.get_tracer("bsp")
    with tracer.start_as_current_span("root"):
        for i in range(1000):
            with tracer.start_as_current_span(f"child-{i}"):
                pass
    assert provider.force_flush(30_000)
    assert query(db, "SELECT count(*), count(DISTINCT span_id) FROM spans") == [(1001, 1001)]
    assert exporter.stats["written"] == 1001
    provider.shutdown()


def test_export_is_one_transaction_and_returns_success(db: Path) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("x")
    for i in range(20):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    exporter = SQLiteSpanExporter(db)
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    assert exporter.force_flush() is True
    assert query(db, "SELECT count(*) FROM spans") == [(20,)]
    exporter.shutdown()
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.FAILURE  # after shutdown


def _finished(n: int) -> Sequence:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("x")
    for i in range(n):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    return memory.get_finished_spans()


def test_a_span_that_cannot_be_read_is_counted_failed_and_the_rest_written(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(ReadableSpan):
        @property
        def name(self) -> str:
            raise RuntimeError("this span object is broken")

    broken = Broken("broken", context=SpanContext(1, 2, is_remote=False), start_time=1, end_time=2)
    exporter = SQLiteSpanExporter(db)
    caplog.set_level(logging.ERROR, logger=LOGGER)
    assert exporter.export([*_finished(3), broken]) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert (exporter.stats["written"], exporter.stats["failed"]) == (3, 1)
    assert query(db, "SELECT count(*) FROM spans") == [(3,)]
    assert any("could not map span" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["parent is a regular file", "read-only folder"])
def test_exporter_reports_an_unwritable_file_once_and_returns_failure(
    tmp_path: Path, unwritable: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    if kind == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        path = folder / "traces.db"
    else:
        path = unwritable
    caplog.set_level(logging.WARNING, logger=LOGGER)
    exporter = SQLiteSpanExporter(path)
    spans = _finished(3)
    try:
        for _ in range(4):
            assert exporter.export(spans) is SpanExportResult.FAILURE
    finally:
        if kind == "read-only folder":
            (tmp_path / "ro").chmod(0o700)
    logged = error_logs(caplog)
    assert len(logged) == 1, logged
    assert str(path) in logged[0]
    assert REASON.search(logged[0])
    stats = exporter.stats
    assert stats["errors"] == 4
    assert stats["failed"] == 12
    assert stats["written"] == 0
    assert stats["last_error"] and REASON.search(stats["last_error"])
    assert not path.exists()
    exporter.shutdown()


def test_exporter_behind_batch_processor_with_unwritable_file_lets_the_app_continue(
    unwritable: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    exporter = SQLiteSpanExporter(unwritable)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_export_batch_size=10, schedule_delay_millis=10)
    )
    tracer = provider.get_tracer("x")
    for round_ in range(3):
        for i in range(25):
            with tracer.start_as_current_span(f"r{round_}-{i}"):
                pass
        provider.force_flush(10_000)
    provider.shutdown()
    logged = error_logs(caplog)
    assert len(logged) == 1, logged
    assert str(unwritable) in logged[0]
    assert exporter.stats["failed"] == 75
    assert exporter.stats["errors"] >= 3


def test_processor_with_unwritable_file_lets_the_app_continue(
    unwritable: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    processor = SQLiteSpanProcessor(unwritable, schedule_delay_millis=10)
    provider, tracer = tracer_for(processor)
    for round_ in range(3):
        for i in range(20):
            with tracer.start_as_current_span(f"r{round_}-{i}"):
                pass
        processor.force_flush(10_000)
    stats = processor.stats
    assert stats["errors"] > 0
    assert stats["written"] == 0
    assert stats["last_error"] and REASON.search(stats["last_error"])
    assert str(unwritable) in stats["last_error"]
    assert stats["enqueued"] == stats["written"] + stats["failed"] + stats["queued"]
    assert stats["failed"] == 120
    provider.shutdown()
    logged = error_logs(caplog)
    assert len(logged) == 1, logged
    assert str(unwritable) in logged[0]


# --- configuration ----------------------------------------------------------------------------------------


def _export_one(exporter: SQLiteSpanExporter, text: str = "hello") -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("x").start_as_current_span("configured", attributes={"input.value": text}):
        pass
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    exporter.shutdown()


def test_exporter_without_arguments_uses_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env" / "traces.db"
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_PATH", str(path))
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_MAX_CONTENT_LENGTH", "5")
    _export_one(SQLiteSpanExporter(), "abcdefghij")
    assert query(path, "SELECT name, input_text FROM spans") == [("configured", "abcde")]


def test_exporter_default_path_is_traces_db_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_SQLITE_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    _export_one(SQLiteSpanExporter())
    assert query(tmp_path / "traces.db", "SELECT name FROM spans") == [("configured",)]


def test_capture_content_false_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.db"
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_CAPTURE_CONTENT", "false")
    _export_one(SQLiteSpanExporter(path), "secret prompt")
    [(text, attributes)] = query(path, "SELECT input_text, attributes FROM spans")
    assert text is None
    assert "secret prompt" not in (attributes or "")


def test_explicit_arguments_win_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_path = tmp_path / "env.db"
    arg_path = tmp_path / "arg.db"
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_PATH", str(env_path))
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_MAX_CONTENT_LENGTH", "3")
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_CAPTURE_CONTENT", "false")
    _export_one(SQLiteSpanExporter(arg_path, max_content_length=8, capture_content=True), "0123456789")
    assert not env_path.exists()
    assert query(arg_path, "SELECT input_text FROM spans") == [("01234567",)]


def test_processor_takes_its_path_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "proc-env.db"
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_PATH", str(path))
    processor = SQLiteSpanProcessor()
    provider, tracer = tracer_for(processor)
    with tracer.start_as_current_span("env"):
        pass
    provider.shutdown()
    assert query(path, "SELECT name FROM spans") == [("env",)]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_SQLITE_MAX_CONTENT_LENGTH", "abc"),
        ("OTEL_EXPORTER_SQLITE_MAX_CONTENT_LENGTH", "-1"),
        ("OTEL_EXPORTER_SQLITE_CAPTURE_CONTENT", "maybe"),
        ("OTEL_EXPORTER_SQLITE_RETENTION_DAYS", "a week"),
    ],
)
@pytest.mark.parametrize("cls", [SQLiteSpanExporter, SQLiteSpanProcessor])
def test_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, cls: type
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_PATH", str(tmp_path / "t.db"))
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        cls()
    assert issubclass(ConfigurationError, ValueError)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"colour": "blue"}, "colour"),
        ({"max_content_length": -1}, "max_content_length"),
        ({"max_content_length": "lots"}, "max_content_length"),
        ({"capture_content": "maybe"}, "capture_content"),
        ({"max_queue_size": 0}, "max_queue_size"),
    ],
)
@pytest.mark.parametrize("cls", [SQLiteSpanExporter, SQLiteSpanProcessor])
def test_bad_option_names_the_option(tmp_path: Path, options: dict, name: str, cls: type) -> None:
    with pytest.raises(ConfigurationError, match=name):
        cls(tmp_path / "t.db", **options)


def test_a_queue_smaller_than_a_batch_is_written_as_it_fills(db: Path) -> None:
    # The writer is woken at half the queue, not only at half a batch: a paced producer into a
    # small queue loses nothing even when the timer never fires.
    processor = SQLiteSpanProcessor(db, max_queue_size=100, schedule_delay_millis=600_000)
    provider, tracer = tracer_for(processor)
    for i in range(2_000):
        with tracer.start_as_current_span(f"paced-{i}"):
            pass
        if i % 20 == 19:
            time.sleep(0.005)
    assert processor.force_flush(10_000)
    stats = processor.stats
    provider.shutdown()
    # Woken only by the timer, all but the last queue-full would be lost (99%); a busy machine
    # may still lose some to a slow commit.
    assert stats["dropped"] < 2_000, stats
    assert query(db, "SELECT count(*) FROM spans")[0][0] >= 1_000


def test_none_means_not_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_RETENTION_DAYS", "9")
    options = Options.resolve(tmp_path / "t.db", {"retention_days": None, "max_db_bytes": None})
    assert options.retention_days == 9
    assert options.max_db_bytes is None
