"""Several processes, each with several threads, write one file while another process reads it:
every span lands once, every rollup is exact, and nobody sees "database is locked".

A short version of the load: 4 processes x 4 threads, each thread a few sessions of an agent span
with LLM calls under it, and a reader querying all the while.
"""

from __future__ import annotations

import sys
from pathlib import Path

from helpers import query

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from many_writers import Load, locked_errors, run_load, verify

# benchmarks/many_writers.py runs the same load at full size (10,000 spans a thread).
LOAD = Load(processes=4, threads=4, sessions=10, calls=10)


def test_processes_and_threads_write_one_file_while_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    outcome = run_load(path, LOAD, timeout=180)

    # Each check of verify() (every span once, rollups of sessions and traces exact, each
    # process's sessions its own and whole, no write dropped, failed or retried, the file intact).
    assert verify(path, LOAD, outcome) == []
    assert locked_errors(outcome) == 0
    assert outcome.reader["rounds"] > 0
    assert sum(len(w["sessions"]) for w in outcome.writers) == 4 * 4 * 10
    assert query(path, "SELECT count(*), sum(input_tokens), sum(output_tokens) FROM sessions") == [
        (160, 160 * 10 * 30, 160 * 10 * 7)
    ]
