"""Several processes, each with several threads, write one file while another process reads it:
every span lands once, every rollup is exact, and nobody sees "database is locked".

A short version of the load: 4 processes x 4 threads, each thread a few sessions of an agent span
with LLM calls under it, and a reader querying all the while.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from helpers import query

PROCESSES = 4
THREADS = 4
SESSIONS_PER_THREAD = 10
CALLS_PER_SESSION = 10
INPUT_TOKENS, OUTPUT_TOKENS = 30, 7

WRITER = r"""
import json, sys, threading
from opentelemetry.sdk.trace import TracerProvider
from otel_sqlite_exporter import SQLiteSpanProcessor, session

path, name = sys.argv[1], sys.argv[2]
threads, sessions, calls, tokens_in, tokens_out = map(int, sys.argv[3:8])
processor = SQLiteSpanProcessor(path, schedule_delay_millis=20)
provider = TracerProvider()
provider.add_span_processor(processor)
tracer = provider.get_tracer("load")
ids = []

def work(thread):
    for n in range(sessions):
        with session(task=f"{name}-{thread}-{n}", user_id=name) as s:
            ids.append(s.session_id)
            agent = {"gen_ai.operation.name": "invoke_agent"}
            with tracer.start_as_current_span("invoke_agent load", attributes=agent):
                for _ in range(calls):
                    attributes = {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.usage.input_tokens": tokens_in,
                        "gen_ai.usage.output_tokens": tokens_out,
                    }
                    with tracer.start_as_current_span("chat gpt-4o-mini", attributes=attributes):
                        pass

workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
provider.shutdown()
print(json.dumps({"sessions": ids, "stats": processor.stats}))
"""

READER = r"""
import json, os, sys, time
from otel_sqlite_exporter import TraceFileError, TraceStore

path, stop = sys.argv[1], sys.argv[2]
reads = 0
while not os.path.exists(stop):
    try:
        store = TraceStore(path)
    except TraceFileError as exc:
        if "no such trace file" in str(exc) or "empty" in str(exc) or "no trace schema" in str(exc):
            time.sleep(0.02)
            continue
        raise
    with store:
        for summary in store.get_sessions(limit=20):
            store.session_tree(summary.id)
        store.stats()
        store.search("gpt")
        reads += 1
print(json.dumps({"reads": reads}))
"""


def test_processes_and_threads_write_one_file_while_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(path),
                f"p{i}",
                *map(str, (THREADS, SESSIONS_PER_THREAD, CALLS_PER_SESSION, INPUT_TOKENS, OUTPUT_TOKENS)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    results = []
    try:
        for writer in writers:
            out, err = writer.communicate(timeout=180)
            assert writer.returncode == 0, err
            assert "locked" not in err, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        time.sleep(0.2)  # a last read of the finished file
    finally:
        stop.touch()
        reader_out, reader_err = reader.communicate(timeout=60)
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
    assert reader.returncode == 0, reader_err
    assert "locked" not in reader_err, reader_err
    assert json.loads(reader_out.strip().splitlines()[-1])["reads"] > 0

    sessions_per_process = THREADS * SESSIONS_PER_THREAD
    spans_per_session = 1 + CALLS_PER_SESSION
    for result in results:
        stats = result["stats"]
        # Every start and end accepted, and written: none dropped, none failed.
        assert (stats["dropped"], stats["failed"], stats["queued"]) == (0, 0, 0), stats
        assert stats["written"] == stats["enqueued"] == 2 * sessions_per_process * spans_per_session
        assert len(set(result["sessions"])) == sessions_per_process

    every = [sid for result in results for sid in result["sessions"]]
    assert query(path, "SELECT count(*), count(DISTINCT trace_id || span_id) FROM spans") == [
        (len(every) * spans_per_session, len(every) * spans_per_session)
    ]
    rows = query(
        path, "SELECT session_id, status, span_count, input_tokens, output_tokens, user_id FROM sessions"
    )
    assert sorted(row[0] for row in rows) == sorted(every)
    for session_id, status, spans, tokens_in, tokens_out, user in rows:
        assert status == "completed", session_id
        # The agent span carries no usage of its own: each call counts once.
        assert (spans, tokens_in, tokens_out) == (
            spans_per_session,
            CALLS_PER_SESSION * INPUT_TOKENS,
            CALLS_PER_SESSION * OUTPUT_TOKENS,
        ), session_id
        assert user in {f"p{i}" for i in range(PROCESSES)}
    # Each process's sessions are its own, whole.
    for i, result in enumerate(results):
        owned = query(
            path,
            f"SELECT count(*) FROM sessions WHERE user_id = 'p{i}' AND session_id IN "
            f"({','.join('?' * len(result['sessions']))})",
            result["sessions"],
        )
        assert owned == [(sessions_per_process,)]
    assert query(path, "SELECT count(*) FROM pending_ancestors") == [(0,)]
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
