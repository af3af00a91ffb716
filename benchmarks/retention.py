"""Retention beside live writers: how long writers wait while a sweep deletes most of a file.

    python benchmarks/retention.py [--spans 500000] [--db template.db] [--baseline-seconds 10]

A file holds ``--spans`` spans in sessions 40 days old (they all go) and a tenth as many from the
last hour (they stay), written through SQLiteSpanProcessor. Two writers commit small batches the
whole time: a thread of this process through TraceWriter, and another process through
SQLiteSpanExporter. Each commit is timed.

(a) the writers alone on a copy of the file, for ``--baseline-seconds``;
(b) the same writers on a fresh copy while RetentionSweeper.sweep_once() deletes the old sessions.

Printed: the sweep's duration and what it deleted, the file's size on disk before and after, and
p50 / p99 / max in (a) and (b) of: the wait for the write lock (a probe connection taking it and
letting go at the writers' pace, which isolates the wait from the work), and each writer's whole
commit. The target: a p99 wait under 100 ms during the sweep. The template file is kept with
``--db`` and reused when it already exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DAY = 86_400 * 1_000_000_000
TARGET_P99_MS = 100.0
PROMPT = "What is the refund policy for a parcel that arrived damaged? " * 4


def generate(path: str, old_spans: int, per_session: int) -> None:
    """Old sessions (40 days ago) holding ``old_spans`` spans, then a tenth as many from the last hour."""
    from _workload import ATTRIBUTES
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from otel_sqlite_exporter import SQLiteSpanProcessor

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SQLiteSpanProcessor(path, max_queue_size=10_000_000))
    tracer = provider.get_tracer("benchmark")
    attributes = {**ATTRIBUTES, "gen_ai.prompt": PROMPT}
    traces_per_session = max(1, per_session // 10)

    def sessions(prefix: str, spans: int, start: int) -> None:
        made = 0
        number = 0
        while made < spans:
            at = start + number * 60_000_000_000
            for _ in range(traces_per_session):
                root = tracer.start_span(
                    "agent",
                    start_time=at,
                    attributes={"session.id": f"{prefix}-{number}", "gen_ai.operation.name": "invoke_agent"},
                )
                made += 1
                for call in range(3):
                    began = at + 1_000 + call * 1_000_000
                    llm = tracer.start_span(
                        "chat gpt-4o",
                        context=trace.set_span_in_context(root),
                        start_time=began,
                        attributes=attributes,
                    )
                    made += 1
                    for tool in range(2):
                        step = tracer.start_span(
                            "execute_tool lookup",
                            context=trace.set_span_in_context(llm),
                            start_time=began + 10 + tool,
                            attributes={"gen_ai.operation.name": "execute_tool"},
                        )
                        step.end(end_time=began + 500_000 + tool)
                        made += 1
                    llm.end(end_time=began + 900_000)
                root.end(end_time=at + 5_000_000)
                at += 10_000_000
            number += 1

    now = time.time_ns()
    sessions("old", old_spans, now - 40 * DAY)
    sessions("recent", max(1, old_spans // 10), now - 3_600_000_000_000)
    provider.shutdown()


class SpanSource:
    """Fresh finished spans, ``size`` at a time (a trace: agent -> chat -> tool ...)."""

    def __init__(self, name: str) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = provider.get_tracer(name)
        self.sessions = 0

    def batch(self, size: int) -> Any:
        from _workload import ATTRIBUTES

        self.sessions += 1
        with self.tracer.start_as_current_span("agent", attributes={"session.id": f"live-{self.sessions}"}):
            for _ in range(size - 1):
                with self.tracer.start_as_current_span("chat gpt-4o", attributes=ATTRIBUTES):
                    pass
        spans = self.memory.get_finished_spans()
        self.memory.clear()
        return spans


def write_loop(
    commit: Any, source: SpanSource, batch: int, interval: float, stop: threading.Event
) -> list[float]:
    """Commit a batch every ``interval`` seconds until ``stop``; each commit's seconds."""
    latencies = []
    while not stop.is_set():
        spans = source.batch(batch)
        began = time.perf_counter()
        commit(spans)
        latencies.append(time.perf_counter() - began)
        stop.wait(max(0.0, interval - (time.perf_counter() - began)))
    return latencies


def writer_process(path: str, batch: int, interval: float) -> None:
    """The other process: SQLiteSpanExporter.export() until a line arrives on stdin."""
    from opentelemetry.sdk.trace.export import SpanExportResult

    from otel_sqlite_exporter import SQLiteSpanExporter

    exporter = SQLiteSpanExporter(path)
    failed = 0

    def commit(spans: Any) -> None:
        nonlocal failed
        if exporter.export(spans) is not SpanExportResult.SUCCESS:
            failed += 1

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    source = SpanSource("writer process")
    print("ready", flush=True)
    latencies = write_loop(commit, source, batch, interval, stop)
    exporter.shutdown()
    print(json.dumps({"latencies": latencies, "failed": failed}), flush=True)


class Writers:
    """A writer thread here and a writer process, both committing until stopped."""

    def __init__(self, path: str, batch: int, interval: float) -> None:
        from otel_sqlite_exporter._config import Options
        from otel_sqlite_exporter._writer import TraceWriter

        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--writer-process",
                path,
                "--batch",
                str(batch),
                "--interval",
                str(interval),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the writer process did not start")
        self.writer = TraceWriter(Options.resolve(path))
        self.stop = threading.Event()
        self.thread_latencies: list[float] = []
        source = SpanSource("writer thread")
        self.thread = threading.Thread(
            target=lambda: self.thread_latencies.extend(
                write_loop(self.writer.write, source, batch, interval, self.stop)
            )
        )
        self.thread.start()

    def finish(self) -> tuple[list[float], list[float]]:
        self.stop.set()
        self.thread.join()
        self.writer.close()
        out, _ = self.process.communicate("stop\n", timeout=120)
        report = json.loads(out.strip().splitlines()[-1])
        if report["failed"]:
            print(f"warning: {report['failed']} batches of the writer process failed")
        return self.thread_latencies, report["latencies"]


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def fresh_copy(template: str, path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    shutil.copyfile(template, path)
    # Written out before anything is timed: otherwise the kernel holds back every writer (the
    # ones measured included) while it flushes the copy.
    os.sync()


class LockProbe:
    """How long a writer waits for the write lock: BEGIN IMMEDIATE then ROLLBACK on a connection
    of its own, every ``interval`` seconds (with no work of its own, nothing blurs the figure)."""

    def __init__(self, path: str, interval: float) -> None:
        from otel_sqlite_exporter._schema import connect

        self.conn = connect(path)
        self.waits: list[float] = []
        self.stop = threading.Event()

        def run() -> None:
            while not self.stop.wait(interval):
                began = time.perf_counter()
                self.conn.execute("BEGIN IMMEDIATE")
                self.waits.append(time.perf_counter() - began)
                self.conn.execute("ROLLBACK")

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def finish(self) -> list[float]:
        self.stop.set()
        self.thread.join()
        self.conn.close()
        return self.waits


def row(label: str, seconds: list[float]) -> str:
    if not seconds:
        return f"{label:34} {0:>7}"
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{label:34} {len(ms):7,} {statistics.median(ms):9.1f} {p99:9.1f} {ms[-1]:9.1f}"


def p99_ms(seconds: list[float]) -> float:
    ms = sorted(s * 1000 for s in seconds)
    return ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=500_000, help="spans in the sessions that go")
    parser.add_argument("--spans-per-session", type=int, default=50)
    parser.add_argument("--db", help="the template file: kept, and reused when it exists")
    parser.add_argument("--baseline-seconds", type=float, default=10.0, help="how long the writers run alone")
    # A processor at its defaults commits what gathered in 200 ms: 50 spans is 250 spans/s each.
    parser.add_argument("--batch", type=int, default=50, help="spans per writer commit")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between a writer's commits")
    parser.add_argument("--probe-interval", type=float, default=0.02, help="seconds between lock probes")
    parser.add_argument("--batch-size", type=int, default=500, help="the sweeper's batch_size")
    parser.add_argument("--writer-process", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer_process:
        writer_process(args.writer_process, args.batch, args.interval)
        return

    from otel_sqlite_exporter import RetentionSweeper

    with tempfile.TemporaryDirectory() as tmp:
        template = args.db or os.path.join(tmp, "template.db")
        if args.db and os.path.exists(args.db):
            print(f"reusing the file {args.db}")
        else:
            started = time.perf_counter()
            generate(template, args.spans, args.spans_per_session)
            print(f"generated {args.spans:,} old spans (and {max(1, args.spans // 10):,} recent) "
                  f"in {time.perf_counter() - started:.1f} s")  # fmt: skip

        alone = os.path.join(tmp, "alone.db")
        fresh_copy(template, alone)
        writers = Writers(alone, args.batch, args.interval)
        probe = LockProbe(alone, args.probe_interval)
        time.sleep(args.baseline_seconds)
        waits_alone = probe.finish()
        thread_alone, process_alone = writers.finish()

        swept = os.path.join(tmp, "swept.db")
        fresh_copy(template, swept)
        writers = Writers(swept, args.batch, args.interval)
        probe = LockProbe(swept, args.probe_interval)
        time.sleep(0.2)  # both writers in their stride
        before = disk_bytes(swept)
        sweeper = RetentionSweeper(swept, batch_size=args.batch_size)
        result = sweeper.sweep_once()
        sweeper.close()
        waits_sweep = probe.finish()
        thread_sweep, process_sweep = writers.finish()
        after = disk_bytes(swept)

    print(
        f"sweep: deleted {result.deleted_sessions:,} sessions, {result.deleted_traces:,} traces, "
        f"{result.deleted_spans:,} spans in {result.duration_s:.1f} s "
        f"({result.deleted_spans / max(result.duration_s, 1e-9):,.0f} spans/s), batch_size {args.batch_size}"
    )
    print(
        f"sweep: {result.transactions:,} write transactions, the longest "
        f"{result.longest_transaction_s * 1000:.1f} ms"
    )
    print(
        f"file on disk (with its log): {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB after "
        f"(the sweep reports {result.bytes_reclaimed / 2**20:.1f} MiB reclaimed)"
    )
    print(
        f"writers: a thread (TraceWriter) and a process (SQLiteSpanExporter), "
        f"{args.batch} spans every {args.interval * 1000:.0f} ms each"
    )
    print(f"{'milliseconds':34} {'count':>7} {'p50':>9} {'p99':>9} {'max':>9}")
    print(row("lock wait, writers alone", waits_alone))
    print(row("lock wait, during the sweep", waits_sweep))
    print(row("thread commit, writers alone", thread_alone))
    print(row("thread commit, during the sweep", thread_sweep))
    print(row("process commit, writers alone", process_alone))
    print(row("process commit, during the sweep", process_sweep))
    worst = p99_ms(waits_sweep)
    verdict = "met" if worst < TARGET_P99_MS else "NOT met"
    print(f"p99 lock wait during the sweep: {worst:.1f} ms (target < {TARGET_P99_MS:.0f} ms): {verdict}")


if __name__ == "__main__":
    main()
