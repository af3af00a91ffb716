"""Many writers, one file: processes of threads writing sessions while another process reads.

    python benchmarks/many_writers.py [--processes 4] [--threads 4] [--spans 10000] [--calls 9]
                                      [--path PATH]

Each of ``--processes`` processes runs ``--threads`` threads; each thread writes ``--spans``
spans through its process's SQLiteSpanProcessor as sessions of one agent span with ``--calls``
LLM spans under it (token counts on each call). Meanwhile a reader process opens the file with
TraceStore over and over and queries it (the latest sessions, each of their trees, stats(),
search()), timing each call.

Printed: spans/s over the whole load (the first writer's first span until the last one's shutdown()
returned), the reader's query count with median and max latency per kind of query, the
"database is locked" errors seen by the writers (stats and stderr) and the reader (must be 0),
then the checks: every span present exactly once, the session and trace rollups exact, each
process's sessions whole and its own, nothing left pending, the file intact. The exit code is
1 when any check fails.

tests/test_many_writers.py runs the same load at a small size through run_load() and verify().
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUT_TOKENS, OUTPUT_TOKENS = 30, 7


@dataclass(frozen=True)
class Load:
    processes: int = 4
    threads: int = 4
    sessions: int = 1_000  # per thread
    calls: int = 9  # LLM calls under each session's agent span

    @property
    def spans_per_session(self) -> int:
        return 1 + self.calls

    @property
    def sessions_per_process(self) -> int:
        return self.threads * self.sessions

    @property
    def spans(self) -> int:
        return self.processes * self.sessions_per_process * self.spans_per_session


@dataclass
class Outcome:
    """What the processes reported: the writers' JSON lines and stderr, the reader's."""

    seconds: float
    writers: list[dict[str, Any]] = field(default_factory=list)
    writer_errors: list[str] = field(default_factory=list)  # stderr, or why a writer failed
    reader: dict[str, Any] = field(default_factory=dict)
    reader_error: str = ""


# -- the processes ----------------------------------------------------------------------------------


def writer(path: str, name: str, load: Load) -> dict[str, Any]:
    """One writing process: ``load.threads`` threads, each ``load.sessions`` sessions."""
    from opentelemetry.sdk.trace import TracerProvider

    from otel_sqlite_exporter import SQLiteSpanProcessor, session

    # A short delay: each process commits often, so the processes contend for the write lock.
    processor = SQLiteSpanProcessor(path, schedule_delay_millis=20)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("load")
    ids: list[str] = []
    failures: list[str] = []
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": INPUT_TOKENS,
        "gen_ai.usage.output_tokens": OUTPUT_TOKENS,
    }

    def work(thread: int) -> None:
        try:
            for n in range(load.sessions):
                with session(task=f"{name}-{thread}-{n}", user_id=name) as s:
                    ids.append(s.session_id)
                    agent = {"gen_ai.operation.name": "invoke_agent"}
                    with tracer.start_as_current_span("invoke_agent load", attributes=agent):
                        for _ in range(load.calls):
                            with tracer.start_as_current_span("chat gpt-4o-mini", attributes=attributes):
                                pass
        except Exception as exc:  # noqa: BLE001 - reported, and the checks then fail
            failures.append(f"{type(exc).__name__}: {exc}")

    started = time.time()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(load.threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    provider.shutdown()
    return {
        "sessions": ids,
        "stats": processor.stats,
        "failures": failures,
        "started": started,
        "ended": time.time(),
    }


def reader(path: str, stop: str) -> dict[str, Any]:
    """Query the file until ``stop`` exists; each call timed, "locked" errors counted, not raised."""
    from otel_sqlite_exporter import TraceFileError, TraceStore

    timings: dict[str, list[float]] = {
        "open": [],
        "get_sessions": [],
        "session_tree": [],
        "stats": [],
        "search": [],
    }
    locked: list[str] = []
    rounds = 0

    def timed(kind: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        result = call(*args, **kwargs)
        timings[kind].append(time.perf_counter() - began)
        return result

    while not os.path.exists(stop):
        try:
            store = timed("open", TraceStore, path)
        except TraceFileError as exc:
            text = str(exc)
            if "locked" in text:
                locked.append(text)
            elif not ("no such trace file" in text or "empty" in text or "no trace schema" in text):
                raise
            time.sleep(0.02)  # not written yet
            continue
        try:
            with store:
                for summary in timed("get_sessions", store.get_sessions, limit=20):
                    timed("session_tree", store.session_tree, summary.id)
                timed("stats", store.stats)
                timed("search", store.search, "gpt")
            rounds += 1
        except (sqlite3.Error, TraceFileError) as exc:
            if "locked" not in str(exc):
                raise
            locked.append(str(exc))
    return {"rounds": rounds, "timings": timings, "locked": locked}


# -- running and checking ---------------------------------------------------------------------------


def run_load(path: Path, load: Load, timeout: float = 600) -> Outcome:
    """Start the reader, then the writers at once; wait for the writers, let the reader read the
    finished file once more, stop it."""
    stop = path.with_name(path.name + ".stop")
    script = os.path.abspath(__file__)
    reader_process = subprocess.Popen(
        [sys.executable, script, "--reader", str(path), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    shape = (str(load.threads), str(load.sessions), str(load.calls))
    started = time.perf_counter()
    writers = [
        subprocess.Popen(
            [sys.executable, script, "--writer", str(path), f"p{i}", *shape],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(load.processes)
    ]
    outcome = Outcome(seconds=0.0)
    try:
        for process in writers:
            out, err = process.communicate(timeout=timeout)
            if process.returncode != 0:
                outcome.writer_errors.append(f"exit {process.returncode}: {err}")
            elif err.strip():
                outcome.writer_errors.append(err)
            if out.strip():
                outcome.writers.append(json.loads(out.strip().splitlines()[-1]))
        outcome.seconds = time.perf_counter() - started
        time.sleep(0.2)  # a last read of the finished file
    finally:
        stop.touch()
        reader_out, reader_err = reader_process.communicate(timeout=120)
        for process in writers:
            if process.poll() is None:
                process.kill()
                process.wait()
        stop.unlink(missing_ok=True)
    if reader_process.returncode != 0:
        outcome.reader_error = f"exit {reader_process.returncode}: {reader_err}"
    else:
        outcome.reader_error = reader_err
        outcome.reader = json.loads(reader_out.strip().splitlines()[-1])
    return outcome


def locked_errors(outcome: Outcome) -> int:
    """How many "database is locked" errors reached the writers' applications or the reader."""
    seen = sum(err.count("locked") for err in outcome.writer_errors)
    seen += sum(1 for w in outcome.writers if "locked" in str(w["stats"].get("last_error") or ""))
    seen += len(outcome.reader.get("locked", ())) + outcome.reader_error.count("locked")
    return seen


def verify(path: Path, load: Load, outcome: Outcome) -> list[str]:
    """Every check of the load that fails, described; empty when all pass."""
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    check(not outcome.writer_errors, f"writers reported errors: {outcome.writer_errors}")
    check(
        len(outcome.writers) == load.processes, f"{len(outcome.writers)} of {load.processes} writers reported"
    )
    check(not outcome.reader_error, f"the reader failed: {outcome.reader_error}")
    check(locked_errors(outcome) == 0, f"{locked_errors(outcome)} 'database is locked' errors")
    check(outcome.reader.get("rounds", 0) > 0, "the reader never read the file")
    events = 2 * load.sessions_per_process * load.spans_per_session  # each span's start and end
    for i, result in enumerate(outcome.writers):
        stats = result["stats"]
        check(not result["failures"], f"p{i}: threads failed: {result['failures']}")
        # Every start and end accepted, and written: none dropped, none failed, no write retried.
        check(
            (stats["dropped"], stats["failed"], stats["queued"], stats["errors"]) == (0, 0, 0, 0),
            f"p{i}: stats {stats}",
        )
        check(
            stats["written"] == stats["enqueued"] == events,
            f"p{i}: {stats['written']} written, {stats['enqueued']} enqueued, {events} expected",
        )
        check(len(set(result["sessions"])) == load.sessions_per_process, f"p{i}: session ids not unique")
    if failures:
        return failures

    every = [sid for result in outcome.writers for sid in result["sessions"]]
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        one = conn.execute("SELECT count(*), count(DISTINCT trace_id || span_id) FROM spans").fetchone()
        check(one == (load.spans, load.spans), f"spans (rows, distinct) {one}, expected {load.spans} each")
        tokens_in, tokens_out = load.calls * INPUT_TOKENS, load.calls * OUTPUT_TOKENS
        rows = conn.execute(
            "SELECT session_id, status, span_count, input_tokens, output_tokens, user_id FROM sessions"
        ).fetchall()
        check(sorted(r[0] for r in rows) == sorted(every), "the sessions stored are not the sessions written")
        users = {f"p{i}" for i in range(load.processes)}
        # The agent span carries no usage of its own: each call counts once.
        wrong = [
            r
            for r in rows
            if r[1:5] != ("completed", load.spans_per_session, tokens_in, tokens_out) or r[5] not in users
        ]
        check(not wrong, f"{len(wrong)} sessions with wrong rollups, e.g. {wrong[:3]}")
        wrong = conn.execute(
            "SELECT trace_id, session_id, span_count, input_tokens, output_tokens FROM traces "
            "WHERE NOT (span_count = ? AND input_tokens = ? AND output_tokens = ?)",
            (load.spans_per_session, tokens_in, tokens_out),
        ).fetchall()
        check(not wrong, f"{len(wrong)} traces with wrong rollups, e.g. {wrong[:3]}")
        traces = conn.execute("SELECT count(*), count(DISTINCT session_id) FROM traces").fetchone()
        check(traces == (len(every), len(every)), f"traces (rows, sessions) {traces}, expected one a session")
        # Each process's sessions are its own and whole: every span of each there, in the spans table.
        for i, result in enumerate(outcome.writers):
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS mine (session_id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM temp.mine")
            conn.executemany("INSERT INTO temp.mine VALUES (?)", [(s,) for s in result["sessions"]])
            owned = conn.execute(
                "SELECT count(*) FROM sessions WHERE user_id = ? "
                "AND session_id IN (SELECT session_id FROM temp.mine)",
                (f"p{i}",),
            ).fetchone()[0]
            check(owned == load.sessions_per_process, f"p{i}: {owned} of its sessions are its own")
            counts = conn.execute(
                "SELECT count(*), min(n), max(n) FROM (SELECT count(*) AS n FROM spans "
                "WHERE session_id IN (SELECT session_id FROM temp.mine) GROUP BY session_id)"
            ).fetchone()
            expected = (load.sessions_per_process, load.spans_per_session, load.spans_per_session)
            check(counts == expected, f"p{i}: (sessions, fewest, most spans) {counts}, expected {expected}")
        pending = conn.execute("SELECT count(*) FROM pending_ancestors").fetchone()[0]
        check(pending == 0, f"{pending} pending ancestors left")
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        check(integrity == [("ok",)], f"integrity_check: {integrity[:5]}")
    finally:
        conn.close()
    return failures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        path, name, threads, sessions, calls = sys.argv[2:7]
        load = Load(threads=int(threads), sessions=int(sessions), calls=int(calls))
        print(json.dumps(writer(path, name, load)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--reader":
        print(json.dumps(reader(sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--spans", type=int, default=10_000, help="spans each thread writes")
    parser.add_argument("--calls", type=int, default=9, help="LLM spans under each session's agent span")
    parser.add_argument("--path", help="the file to write (default: a fresh one in a temp folder)")
    args = parser.parse_args()
    load = Load(args.processes, args.threads, max(1, args.spans // (1 + args.calls)), args.calls)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.path) if args.path else Path(tmp) / "shared.db"
        if path.exists():
            raise SystemExit(f"{path} exists: the load needs a fresh file")
        outcome = run_load(path, load)
        failures = verify(path, load, outcome)
    print(
        f"{load.processes} processes x {load.threads} threads x {load.sessions:,} sessions of "
        f"{load.spans_per_session} spans = {load.spans:,} spans, one reader process"
    )
    if outcome.writers:
        # From the first writer's first span to the last writer's shutdown(): start-up aside.
        window = max(w["ended"] for w in outcome.writers) - min(w["started"] for w in outcome.writers)
        print(
            f"wrote {load.spans:,} spans in {window:.1f} s: {load.spans / window:,.0f} spans/s "
            f"({outcome.seconds:.1f} s with the processes' start-up)"
        )
    timings = outcome.reader.get("timings", {})
    print(f"reader: {outcome.reader.get('rounds', 0):,} rounds")
    print(f"{'query':16} {'count':>8} {'median ms':>10} {'max ms':>10}")
    every = [s for kind in timings.values() for s in kind]
    for kind, seconds in [*timings.items(), ("all", every)]:
        if seconds:
            median, most = statistics.median(seconds) * 1000, max(seconds) * 1000
            print(f"{kind:16} {len(seconds):8,} {median:10.2f} {most:10.2f}")
    print(f"'database is locked' errors seen: {locked_errors(outcome)}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("checks: all passed" if not failures else f"checks: {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
