"""Sustained load: a producer at a fixed rate through SQLiteSpanProcessor, for a while.

    python benchmarks/sustained.py [--rate 10000] [--seconds 60] [--tick-ms 10] [--every 10]

The producer makes traces of the burst's shape (benchmarks/_workload.py: 10 nested spans with 10
GenAI attributes each) on a schedule: every tick it makes the spans due by then (rate x time
since the start, whole traces) and sleeps until the next tick, so a late tick is made up by
the next and the rate holds over the run however the threads are scheduled. The processor runs
at default settings on a fresh file.

Sampled each second: the processor's queue (stats['queued']: span starts and ends not yet
taken by the mapping thread), the backlog (span events accepted but not yet committed:
enqueued - written), and the process's resident memory. The queue is also read at every tick
for its maximum. Printed: a line every --every seconds, then the achieved rate and how far the
producer ever fell behind its schedule, max queue and backlog, dropped, failed, written against
produced (the processor's counters, and the spans in the file), RSS at the start, its peak and
at the end, and how long shutdown() took to write the rest. The exit code is 1 when a check
fails: the rate not achieved (within 2%), a span dropped or failed, written != produced, the
queue past a quarter of its capacity, or a backlog of more than 2 s of production when the
producer stops (a writer slower than the producer would be minutes behind by then).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MIB = 1024 * 1024
RATE_TOLERANCE = 0.02
BACKLOG_SECONDS = 2.0


@dataclass
class Sample:
    second: float
    produced: int  # spans made so far
    queued: int  # span events waiting for the mapper
    backlog: int  # span events accepted, not committed yet
    rss: int


def run(path: str, rate: int, seconds: float, tick: float, every: float) -> bool:
    """The whole measurement; prints the report and returns whether every check passed."""
    from _workload import SPANS_PER_TRACE, peak_rss_bytes, reset_peak_rss, rss_bytes, trace
    from opentelemetry.sdk.trace import TracerProvider

    from otel_sqlite_exporter import SQLiteSpanProcessor

    processor = SQLiteSpanProcessor(path)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("benchmark")
    capacity = processor.options.max_queue_size
    total = int(rate * seconds)

    method = reset_peak_rss()
    rss_start = rss_bytes()
    samples: list[Sample] = []
    made = 0
    max_queued = 0
    max_behind = 0.0  # seconds of production the producer was behind its schedule at a tick's start
    start = time.perf_counter()
    next_tick = start
    next_sample = start + 1.0
    while made < total:
        now = time.perf_counter()
        due = min(total, int(rate * (now - start)))
        max_behind = max(max_behind, (due - made) / rate - tick)
        while made < due:
            made += trace(tracer)
        queued = processor.stats["queued"]
        max_queued = max(max_queued, queued)
        if now >= next_sample:
            stats = processor.stats
            backlog = stats["enqueued"] - stats["written"]
            samples.append(Sample(now - start, made, stats["queued"], backlog, rss_bytes()))
            next_sample += 1.0
        if made >= total:
            break
        next_tick += tick
        pause = next_tick - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    produced_seconds = time.perf_counter() - start
    stats = processor.stats
    backlog_at_stop = stats["enqueued"] - stats["written"]
    rss_end = rss_bytes()
    peak = peak_rss_bytes()
    stopping = time.perf_counter()
    provider.shutdown()
    drain = time.perf_counter() - stopping
    rss_after = rss_bytes()
    stats = processor.stats
    with sqlite3.connect(path) as conn:
        stored, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT trace_id || span_id) FROM spans "
            "WHERE end_time_unix_nano IS NOT NULL"
        ).fetchone()

    achieved = made / produced_seconds
    print(
        f"sustained: {rate:,} spans/s for {seconds:g} s through SQLiteSpanProcessor (default settings), "
        f"{tick * 1000:g} ms ticks, traces of {SPANS_PER_TRACE} spans; python {sys.version.split()[0]}, "
        f"sqlite {sqlite3.sqlite_version}"
    )
    print(f"{'second':>6} {'produced':>10} {'queued':>8} {'backlog':>9} {'RSS MiB':>8}")
    shown = [s for s in samples if round(s.second) % every == 0 or s is samples[-1]] if every > 0 else []
    for s in shown:
        print(f"{s.second:6.0f} {s.produced:10,} {s.queued:8,} {s.backlog:9,} {s.rss / MIB:8.1f}")
    print(
        f"produced {made:,} spans in {produced_seconds:.2f} s: {achieved:,.0f} spans/s "
        f"(at most {max(0.0, max_behind) * 1000:.0f} ms behind the schedule)"
    )
    max_backlog = max([s.backlog for s in samples] + [backlog_at_stop])
    print(
        f"max queue: {max_queued:,} span events ({max_queued / capacity:.1%} of {capacity:,}); "
        f"max backlog: {max_backlog:,} span events ({max_backlog / 2 / rate:.2f} s of production); "
        f"at the stop {backlog_at_stop:,}"
    )
    print(
        f"dropped {stats['dropped']:,}, failed {stats['failed']:,}, written {stats['written']:,} span events "
        f"(2 per span: start and end), in the file {stored:,} ended spans ({distinct:,} distinct)"
    )
    print(
        f"RSS MiB: start {rss_start / MIB:.1f}, peak {peak / MIB:.1f}, end {rss_end / MIB:.1f}, "
        f"after shutdown {rss_after / MIB:.1f} (peak: {method})"
    )
    print(f"shutdown() wrote the rest in {drain:.2f} s")

    checks = {
        f"rate achieved within {RATE_TOLERANCE:.0%}": achieved >= rate * (1 - RATE_TOLERANCE),
        "nothing dropped or failed": stats["dropped"] == 0 and stats["failed"] == 0 and stats["errors"] == 0,
        "written == produced": stats["written"] == 2 * made and stored == distinct == made,
        "queue under a quarter of its capacity": max_queued < capacity / 4,
        f"backlog at the stop under {BACKLOG_SECONDS:g} s of production": backlog_at_stop
        < BACKLOG_SECONDS * 2 * rate,
    }
    for label, ok in checks.items():
        print(f"check: {label}: {'yes' if ok else 'NO'}")
    passed = all(checks.values())
    print("checks: all passed" if passed else "checks: FAILED")
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=10_000, help="spans per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tick-ms", type=float, default=10.0, help="the producer's schedule step")
    parser.add_argument("--every", type=int, default=10, help="print a sample line every N seconds (0: none)")
    parser.add_argument("--path", help="the file to write (default: a fresh one in a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or os.path.join(tmp, "sustained.db")
        if os.path.exists(path):
            raise SystemExit(f"{path} exists: the run needs a fresh file")
        passed = run(path, args.rate, args.seconds, args.tick_ms / 1000, args.every)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
