"""The benchmark scripts keep working: each runs at a tiny size and prints its table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"[\d,]+(?:\.\d+)?"
QUERY_ROWS = (
    "get_sessions(limit=50)",
    "session_tree(session)",
    "get_traces(model, 1h window)",
    "search(",
    "stats()",
    "get_span(span_id)",
    "get_traces(session_id)",
    "session_summary(session)",
    'get_sessions(status="failed")',
)


def run(script: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def query_rows(out: str) -> dict[str, tuple[float, float, str]]:
    """label -> (median ms, best ms, met) of each row of each table printed."""
    rows = {}
    for line in out.splitlines():
        found = re.match(rf"(.+?)\s+({NUMBER})\s+({NUMBER})\s+(< {NUMBER}|-)\s+(yes|no|-)$", line)
        if found:
            rows[found.group(1)] = (float(found.group(2)), float(found.group(3)), found.group(5))
    return rows


def test_query_benchmark_generates_measures_and_explains(tmp_path: Path) -> None:
    db = tmp_path / "bench.db"
    args = ("--sessions", "20", "--spans-per-session", "10", "--repeat", "2", "--db", str(db))
    out = run("query.py", *args, cwd=tmp_path)
    assert re.search(r"^generated 200 spans in [\d.]+ s", out, re.M), out
    assert "200 spans, 20 traces, 20 sessions" in out
    rows = query_rows(out)
    for label in QUERY_ROWS:
        assert any(row.startswith(label) for row in rows), (label, out)
    assert all(0 <= best <= median for median, best, _ in rows.values())
    assert rows["get_sessions(limit=50)"][2] in ("yes", "no")
    assert rows["get_span(span_id)"][2] == "-"  # no target
    # The plans: each query's statements, with the one full pass (counting every span) flagged.
    assert "query plans (EXPLAIN QUERY PLAN" in out
    assert "SCAN spans USING COVERING INDEX" in out
    assert "FULL TABLE SCAN" not in out
    assert re.search(r"^\d+ plan line\(s\) flagged$", out, re.M)

    again = run("query.py", *args, "--no-plans", cwd=tmp_path)
    assert "reusing the file" in again
    assert "generated" not in again
    assert "query plans" not in again


def test_query_benchmark_beside_a_writing_process(tmp_path: Path) -> None:
    db = tmp_path / "bench.db"
    out = run(
        "query.py",
        *("--sessions", "10", "--spans-per-session", "10", "--repeat", "2", "--db", str(db)),
        *("--no-plans", "--with-writer", "--writer-rate", "5000"),
        cwd=tmp_path,
    )
    assert "while another process appends through SQLiteSpanProcessor" in out
    assert out.count("session_tree(session)") == 2  # a table without and one with the writer
    assert re.search(r"^the appending process made [\d,]+ spans", out, re.M), out
    assert not [p.name for p in tmp_path.iterdir() if ".live-" in p.name]  # the scratch copy is gone


def test_throughput_benchmark(tmp_path: Path) -> None:
    out = run("throughput.py", "--spans", "300", "--runs", "1", "--prefill", "100", cwd=tmp_path)
    assert out.startswith("300 spans per run, 1 runs, prefill 100 spans")
    for label in (
        "BatchSpanProcessor + discard (floor)",
        "BatchSpanProcessor + SQLiteSpanExporter",
        "SQLiteSpanProcessor",
    ):
        assert re.search(
            rf"^{re.escape(label)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.M
        ), (
            label,
            out,
        )
    assert len(re.findall(r"^  median\s", out, re.M)) == 3


def test_retention_benchmark(tmp_path: Path) -> None:
    out = run("retention.py", "--spans", "1000", "--baseline-seconds", "0.5", cwd=tmp_path)
    assert re.search(r"^generated 1,000 old spans \(and 100 recent\) in [\d.]+ s$", out, re.M), out
    assert re.search(rf"^sweep: deleted 20 sessions, 100 traces, 1,000 spans in {NUMBER} s", out, re.M), out
    sizes = re.search(
        rf"^file on disk \(with its log\): ({NUMBER}) MiB before, ({NUMBER}) MiB after", out, re.M
    )
    assert sizes and float(sizes.group(2)) < float(sizes.group(1)), out
    for label in ("lock wait", "thread commit", "process commit"):
        for phase in ("writers alone", "during the sweep"):
            found = re.search(rf"^{label}, {phase}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.M)
            assert found, (label, phase, out)
    assert re.search(
        r"^p99 lock wait during the sweep: [\d.]+ ms \(target < 100 ms\): (met|NOT met)$", out, re.M
    )
    assert not [p.name for p in tmp_path.iterdir()]  # its scratch files are gone
