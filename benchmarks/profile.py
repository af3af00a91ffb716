"""Where the write path's time goes, per span: the application thread, mapping, SQLite, the GIL.

    python benchmarks/profile.py [--spans 100000] [--db PATH]

Spans of the burst's shape (benchmarks/_workload.py), made by the real SDK. Two parts:

1. Each step alone, in one thread with nothing else running: the SDK's own span handling (a
   provider without processors), SQLiteSpanProcessor.on_start + on_end, the mapping
   (TraceWriter.prepare: SpanMapper.row over freshly ended spans, 512 at a time as the mapping
   thread sees them in a burst, then the batch's encoding with its redaction scan), and the SQL
   of TraceWriter.commit in transactions of 8,192 spans (what the committer gathers under load),
   a step a statement (the committer runs them as one), with the checkpoints. The commits go into
   a fresh file, or with --db into a copy of that file (say, one prefilled by throughput.py
   --prefill-db), which shows how the SQL's cost grows with the file.
2. In situ: a burst through SQLiteSpanProcessor with TraceWriter's prepare, commit and copy_log
   (the checkpoint thread's) and each SQL statement timed (wall clock, and the calling thread's
   CPU time) in the threads that run them, and the garbage collector's passes timed in whichever
   thread they run.

Wall and CPU are in microseconds per span. CPU time (time.thread_time) counts only while the
thread runs: for Python that is time holding the GIL; inside a statement SQLite runs without it.
A thread's wall time beyond its CPU time is time off the CPU: waiting for the GIL (or, on a busy
machine, for a core). The mapping thread holds the GIL for all of its CPU time; the committer
holds it only between statements and while binding parameters (reported as "Python around the
statements": its CPU time in commit() outside the statements).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MAP_BATCH = 512  # spans in one mapping batch during a burst (1,024 starts and ends)
TRANSACTION = 8_192  # spans in one transaction under load (half of max_batch_size)

# Statements of the write path, by how their SQL begins.
STATEMENTS = (
    ("BEGIN", "BEGIN IMMEDIATE (the write lock)"),
    ("UPDATE temp.write_batch", "write: lock, all the steps below, commit: one statement"),
    ("INSERT INTO temp.stage_batch", "stage: unpack the document, pick normalised columns"),
    ("INSERT INTO temp.store_batch", "store: traces, sessions, span upsert, indexes, FTS"),
    ("WITH RECURSIVE up", "usage walk up the ancestors"),
    ("INSERT INTO temp.finish_batch", "finish: usage marks, rollups, clear the scratch"),
    ("COMMIT", "COMMIT (append to the WAL)"),
    ("PRAGMA wal_checkpoint", "checkpoint (WAL into the file)"),
)


def statement_label(sql: str) -> str:
    text = sql.lstrip()
    for prefix, label in STATEMENTS:
        if text.startswith(prefix):
            return label
    return "other: " + " ".join(text.split())[:40]


class Timings:
    """Wall and CPU seconds, and calls, per label."""

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def add(self, label: str, wall: float, cpu: float) -> None:
        with self._lock:
            entry = self.seen.setdefault(label, [0.0, 0.0, 0])
            entry[0] += wall
            entry[1] += cpu
            entry[2] += 1

    @contextmanager
    def timed(self, label: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(label, time.perf_counter() - wall, time.thread_time() - cpu)

    def get(self, label: str) -> tuple[float, float, int]:
        wall, cpu, calls = self.seen.get(label, (0.0, 0.0, 0))
        return wall, cpu, int(calls)


class TimedConnection:
    """A sqlite3 connection whose execute() is timed statement by statement."""

    def __init__(self, conn: sqlite3.Connection, timings: Timings) -> None:
        self._conn = conn
        self._timings = timings

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        with self._timings.timed(statement_label(sql)):
            return self._conn.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class Table:
    def __init__(self, spans: int) -> None:
        self.spans = spans
        print(f"{'':62} {'wall':>8} {'CPU':>8}")

    def heading(self, text: str) -> None:
        print(text)

    def row(self, label: str, wall: float, cpu: float | None = None, note: str = "") -> None:
        per = 1e6 / self.spans
        shown = "" if cpu is None else f"{cpu * per:8.2f}"
        print(f"  {label:60} {wall * per:8.2f} {shown:>8}{'  ' + note if note else ''}")


def collecting_provider() -> tuple[Any, list[Any]]:
    """A provider whose only processor keeps the ended spans."""
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    ended: list[Any] = []

    class Collect(SpanProcessor):
        def on_end(self, span: Any) -> None:
            ended.append(span)

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(Collect())
    return provider, ended


def alone(spans: int, tmp: str, db: str | None) -> None:
    """Part 1: each step by itself; the commits into a copy of ``db`` when given."""
    from _workload import burst
    from opentelemetry.sdk.trace import TracerProvider

    from otel_sqlite_exporter import SQLiteSpanProcessor
    from otel_sqlite_exporter._config import Options
    from otel_sqlite_exporter._writer import TraceWriter, batch_documents

    target = os.path.join(tmp, "alone.db")
    into = "a fresh file"
    if db:
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            held = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
        shutil.copyfile(db, target)
        into = f"a copy of {db} ({held:,} spans, {os.path.getsize(db) / 2**20:,.0f} MiB)"
    print(f"1. each step alone, one thread, µs per span ({spans:,} spans; the SQL into {into})")
    table = Table(spans)
    table.heading("application thread")
    bare = TracerProvider(shutdown_on_exit=False)
    burst(bare, 1_000)  # warm up
    wall, cpu = time.perf_counter(), time.thread_time()
    burst(bare, spans)
    sdk_cpu = time.thread_time() - cpu
    table.row(
        "SDK span handling (a provider without processors)",
        time.perf_counter() - wall,
        time.thread_time() - cpu,
    )

    provider, ended = collecting_provider()
    burst(provider, spans)
    processor = SQLiteSpanProcessor(os.path.join(tmp, "hooks.db"), max_queue_size=4 * spans)
    on_start, on_end = processor.on_start, processor.on_end
    wall, cpu = time.perf_counter(), time.thread_time()
    for span in ended:
        on_start(span, None)
        on_end(span)
    hooks_cpu = time.thread_time() - cpu
    table.row("SQLiteSpanProcessor.on_start + on_end", time.perf_counter() - wall, time.thread_time() - cpu)
    processor.shutdown()
    del ended[:]

    writer = TraceWriter(Options.resolve(target, {}))
    writer.stepwise = True  # to time each step: the committer runs them as one statement
    steps = Timings()
    payloads: list[tuple[str, int]] = []
    made = 0
    while made < spans:
        count, _ = burst(provider, min(MAP_BATCH, spans - made))
        made += count
        batch = list(ended)
        del ended[:]
        # The two halves of TraceWriter.prepare, apart (rows, then the document).
        with steps.timed("row"):
            rows = writer._rows(batch)
        with steps.timed("encode"):
            payloads.append((writer._mapper.encode(rows)[1:-1], count))
    table.heading("mapping thread (all of it holds the GIL)")
    table.row("SpanMapper.row: read each span object", *steps.get("row")[:2])
    table.row("encode: the batch document (orjson), redaction scan", *steps.get("encode")[:2])

    statements = Timings()
    writer._conn = TimedConnection(writer._conn, statements)  # type: ignore[assignment]
    writer._log_conn = TimedConnection(writer._log_conn, statements)  # type: ignore[assignment]
    commits = Timings()
    while payloads:
        taken: list[str] = []
        count = 0
        while payloads and count < TRANSACTION:
            payload, n = payloads.pop(0)
            taken.append(payload)
            count += n
        with commits.timed("commit"):
            writer.commit(batch_documents(taken))
        writer.checkpoint(idle=False)  # as the committer does while more is waiting
    writer.checkpoint(idle=True)
    writer.close()
    table.heading("committer thread: SQL statements (SQLite runs them without the GIL)")
    sql_rows(table, statements)
    commit_wall, commit_cpu, transactions = commits.get("commit")
    inside_wall = sum(w for label, (w, _, _) in statements.seen.items() if not label.startswith("checkpoint"))
    inside_cpu = sum(c for label, (_, c, _) in statements.seen.items() if not label.startswith("checkpoint"))
    table.row(
        "Python around the statements (holds the GIL)", commit_wall - inside_wall, commit_cpu - inside_cpu
    )
    check_wall, check_cpu, _ = statements.get("checkpoint (WAL into the file)")
    table.row("TraceWriter.commit + checkpoints, in all", commit_wall + check_wall, commit_cpu + check_cpu)
    print(f"  ({transactions} transactions of up to {TRANSACTION:,} spans)")
    per = 1e6 / spans
    mapping = steps.get("row")[1] + steps.get("encode")[1]
    print(
        f"CPU per span, each step alone: application {(sdk_cpu + hooks_cpu) * per:.1f} (the SDK "
        f"{sdk_cpu * per:.1f}, the processor's hooks {hooks_cpu * per:.1f}); mapping {mapping * per:.1f} "
        f"(holding the GIL); SQL {(commit_cpu + check_cpu) * per:.1f} (without it)"
    )


def sql_rows(table: Table, statements: Timings) -> None:
    labels = [label for _, label in STATEMENTS] + sorted(k for k in statements.seen if k.startswith("other"))
    for label in labels:
        wall, cpu, calls = statements.get(label)
        if calls:
            table.row(label, wall, cpu, f"{calls} calls")


def in_situ(spans: int, tmp: str) -> None:
    """Part 2: a burst through the real processor, its writer's calls timed where they run."""
    from _workload import burst
    from opentelemetry.sdk.trace import TracerProvider

    from otel_sqlite_exporter import SQLiteSpanProcessor
    from otel_sqlite_exporter._writer import TraceWriter

    calls = Timings()
    statements = Timings()
    collections = Timings()
    originals: dict[str, Callable[..., Any]] = {}

    def wrap(name: str) -> None:
        original = getattr(TraceWriter, name)
        originals[name] = original

        def timed(self: TraceWriter, *args: Any, **kwargs: Any) -> Any:
            with calls.timed(name):
                return original(self, *args, **kwargs)

        setattr(TraceWriter, name, timed)

    for name in ("prepare", "_rows", "commit", "copy_log"):
        wrap(name)
    init = TraceWriter.__init__

    def init_timed(self: TraceWriter, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._conn = TimedConnection(self._conn, statements)  # type: ignore[assignment]

    TraceWriter.__init__ = init_timed  # type: ignore[method-assign]
    gc_started: dict[int, tuple[float, float]] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        me = threading.get_ident()
        if phase == "start":
            gc_started[me] = (time.perf_counter(), time.thread_time())
        elif me in gc_started:
            wall, cpu = gc_started.pop(me)
            collections.add(
                f"generation {info['generation']}", time.perf_counter() - wall, time.thread_time() - cpu
            )

    try:
        provider = TracerProvider(shutdown_on_exit=False)
        processor = SQLiteSpanProcessor(os.path.join(tmp, "in-situ.db"))
        provider.add_span_processor(processor)
        gc.callbacks.append(on_gc)
        wall, cpu = time.perf_counter(), time.thread_time()
        made, _ = burst(provider, spans)
        app_wall, app_cpu = time.perf_counter() - wall, time.thread_time() - cpu
        provider.shutdown()
        total = time.perf_counter() - wall
        gc.callbacks.remove(on_gc)
    finally:
        TraceWriter.__init__ = init  # type: ignore[method-assign]
        for name, original in originals.items():
            setattr(TraceWriter, name, original)
    stats = processor.stats

    print()
    print(f"2. in situ: a burst of {made:,} spans through SQLiteSpanProcessor, µs per span")
    table = Table(made)
    table.heading("application thread")
    table.row(
        "the burst loop (SDK + on_start/on_end)",
        app_wall,
        app_cpu,
        f"{(app_wall - app_cpu) * 1e6 / made:.2f} off CPU",
    )
    table.heading("mapping thread")
    prepare_wall, prepare_cpu, batches = calls.get("prepare")
    rows_wall, rows_cpu, _ = calls.get("_rows")
    table.row("TraceWriter.prepare", prepare_wall, prepare_cpu, f"{batches} batches")
    table.row("  of which SpanMapper.row", rows_wall, rows_cpu)
    table.row("  of which encode and redaction scan", prepare_wall - rows_wall, prepare_cpu - rows_cpu)
    table.heading("committer thread")
    commit_wall, commit_cpu, transactions = calls.get("commit")
    sql_rows(table, statements)
    inside = [v for label, v in statements.seen.items() if not label.startswith("checkpoint")]
    around_cpu = commit_cpu - sum(c for _, c, _ in inside)
    table.row(
        "Python around the statements (holds the GIL)", commit_wall - sum(w for w, _, _ in inside), around_cpu
    )
    table.row("TraceWriter.commit", commit_wall, commit_cpu, f"{transactions} transactions")
    table.heading("checkpoint thread (beside the committer)")
    copy_wall, copy_cpu, copies = calls.get("copy_log")
    table.row("TraceWriter.copy_log: the log into the file", copy_wall, copy_cpu, f"{copies} calls")
    table.heading("garbage collector (in whichever thread it runs)")
    for label in sorted(collections.seen):
        wall_gc, cpu_gc, passes = collections.get(label)
        table.row(label, wall_gc, cpu_gc, f"{passes} passes")
    held = prepare_cpu + around_cpu
    per = 1e6 / made
    print(
        f"GIL held by the writer threads: {held * per:.2f} µs/span (mapping {prepare_cpu * per:.2f}, "
        f"committer {around_cpu * per:.2f}), against {app_cpu * per:.2f} µs/span of the application's own CPU"
    )
    print(
        f"burst {made / app_wall:,.0f} spans/s on the application thread, "
        f"{made / total:,.0f} spans/s committed; {stats['dropped']} dropped"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--db", help="commit part 1's spans into a copy of this trace file")
    args = parser.parse_args()
    print(
        f"profile: spans of the burst's shape; python {sys.version.split()[0]}, "
        f"sqlite {sqlite3.sqlite_version}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        alone(args.spans, tmp, args.db)
        in_situ(args.spans, tmp)


if __name__ == "__main__":
    main()
