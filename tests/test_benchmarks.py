"""The benchmark scripts keep working: each runs at a tiny size and prints its table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import query, sha256, start_tracing

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
    # The plans: each query's statements, with the passes over every span's key in an index
    # (counting the spans, finding one by its span id alone) flagged.
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
    assert re.search(r"^prefilled 100 spans in [\d.]+ s", out, re.M), out
    assert "300 spans per run, 1 runs, prefill 100 spans" in out
    labels = (
        "BatchSpanProcessor + discard (floor)",
        "BatchSpanProcessor + SQLiteSpanExporter",
        "SQLiteSpanProcessor",
    )
    for label in labels:
        # Throughput: app spans/s, x floor, committed spans/s, x floor, dropped.
        assert re.search(rf"^{re.escape(label)}(\s+{NUMBER}){{5}}$", out, re.M), (label, out)
    floor = re.search(
        rf"^{re.escape(labels[0])}\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+{NUMBER}\s+0$", out, re.M
    )
    assert floor and floor.group(2) == "1.00", out
    assert len(re.findall(r"^  median\s", out, re.M)) == 6  # three configs, two tables
    # Memory and size, the second table: peak MiB, x floor, growth MiB, x floor, bytes per span.
    memory = out[out.index("peak MiB") :]
    assert re.search(rf"^{re.escape(labels[0])}(\s+{NUMBER}){{4}}\s+-$", memory, re.M), out
    sizes = {}
    for label in labels[1:]:
        found = re.search(rf"^{re.escape(label)}(?:\s+{NUMBER}){{4}}\s+({NUMBER})$", memory, re.M)
        assert found, (label, out)
        sizes[label] = float(found.group(1).replace(",", ""))
    # The file holds the prefill and the burst: a few hundred bytes to a few KiB each, pages included.
    assert all(200 < size < 10_000 for size in sizes.values()), sizes
    assert re.search(r"^peak: .* measured by (VmHWM reset|ru_maxrss)", out, re.M), out
    assert re.search(r"^bytes/span: .* page_size \d+, [\d,]+ free pages", out, re.M), out
    assert "targets (SQLiteSpanProcessor against the floor, best of 1 run(s) each):" in out
    for target in (
        "app-thread throughput >= 0.80x floor",
        "spans dropped at default settings == 0",
        "committed throughput >= 0.50x floor (file holding 100 spans)",
        "peak memory during the burst < 2.00x floor's",
        "file bytes per span <= 800",
    ):
        assert re.search(rf"^  {re.escape(target)}.*\s({NUMBER}x?)\s+(met|NOT met)$", out, re.M), (
            target,
            out,
        )
    # The processor drops nothing of a burst at default settings.
    assert re.search(r"^  spans dropped at default settings == 0\s+0\s+met$", out, re.M), out


def test_throughput_prefill_is_kept_and_reused(tmp_path: Path) -> None:
    keep = tmp_path / "template.db"
    args = ("--spans", "100", "--runs", "1", "--configs", "c", "--prefill", "200", "--prefill-db", str(keep))
    first = run("throughput.py", *args, cwd=tmp_path)
    assert "prefilled 200 spans" in first
    assert query(keep, "SELECT count(*) FROM spans WHERE end_time_unix_nano IS NOT NULL") == [(200,)]
    again = run("throughput.py", *args, cwd=tmp_path)
    assert f"reusing {keep} (200 spans)" in again
    assert "prefilled 200" not in again
    # Each run wrote into a copy: the kept file still holds only the prefill.
    assert query(keep, "SELECT count(*) FROM spans") == [(200,)]


def test_sustained_benchmark(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sustained.py"), "--rate", "2000", "--seconds", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    # Exit 1 only when a check fails; the rate is the one a busy machine may miss.
    assert result.returncode in (0, 1), out + result.stderr
    assert out.startswith("sustained: 2,000 spans/s for 2 s through SQLiteSpanProcessor"), out
    assert re.search(rf"^produced 4,000 spans in {NUMBER} s: {NUMBER} spans/s", out, re.M), out
    assert re.search(rf"^max queue: {NUMBER} span events .* max backlog: {NUMBER} span events", out, re.M), (
        out
    )
    assert "dropped 0, failed 0, written 8,000 span events" in out
    assert "in the file 4,000 ended spans (4,000 distinct)" in out
    assert re.search(
        rf"^RSS MiB: start {NUMBER}, peak {NUMBER}, end {NUMBER}, after shutdown {NUMBER}", out, re.M
    )
    samples = re.findall(rf"^\s+(\d+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", out, re.M)
    assert samples and samples[-1][1] == "4,000", out  # a line a second, the last at the end
    for check in (
        "nothing dropped or failed",
        "written == produced",
        "queue under a quarter of its capacity",
    ):
        assert f"check: {check}: yes" in out, out
    assert (result.returncode == 0) == ("checks: all passed" in out)


def test_many_writers_benchmark(tmp_path: Path) -> None:
    out = run("many_writers.py", "--processes", "2", "--threads", "2", "--spans", "100", cwd=tmp_path)
    assert "2 processes x 2 threads x 10 sessions of 10 spans = 400 spans, one reader process" in out
    assert re.search(rf"^wrote 400 spans in {NUMBER} s: {NUMBER} spans/s", out, re.M), out
    rows = dict(re.findall(rf"^(\w+)\s+{NUMBER}\s+({NUMBER})\s+{NUMBER}$", out, re.M))
    assert {"open", "get_sessions", "stats", "search", "all"} <= rows.keys(), out
    assert "'database is locked' errors seen: 0" in out
    assert out.rstrip().endswith("checks: all passed"), out


def test_profile_benchmark(tmp_path: Path) -> None:
    out = run("profile.py", "--spans", "2000", cwd=tmp_path)
    rows = {
        label.strip(): (float(wall), float(cpu))
        for label, wall, cpu in re.findall(r"^  (.+?)\s+(\d+\.\d+)\s+(\d+\.\d+)(?:  .*)?$", out, re.M)
    }
    for label in (
        "SDK span handling (a provider without processors)",
        "SQLiteSpanProcessor.on_start + on_end",
        "SpanMapper.row: read each span object",
        "stage: unpack the document, pick normalised columns",
        "store: traces, sessions, span upsert, indexes, FTS",
        "finish: usage marks, rollups, clear the scratch",
        "COMMIT (append to the WAL)",
        "Python around the statements (holds the GIL)",
        "the burst loop (SDK + on_start/on_end)",
        "TraceWriter.prepare",
        "TraceWriter.commit",
    ):
        assert label in rows, (label, out)
    assert all(cpu >= 0 for _, cpu in rows.values()), out
    # The SQL is the bulk of the work, and none of it is spent on the application thread.
    assert (
        rows["store: traces, sessions, span upsert, indexes, FTS"][1]
        > rows["SQLiteSpanProcessor.on_start + on_end"][1]
    )
    assert re.search(r"^GIL held by the writer threads: [\d.]+ µs/span", out, re.M), out
    assert re.search(r"0 dropped$", out, re.M), out


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


def file_size_figures(out: str) -> tuple[dict[str, float], dict[str, float]]:
    """bytes a span of each table or index printed, and of each layout."""
    objects = {
        name: float(size.replace(",", ""))
        for name, size in re.findall(
            rf"^(\S+)\s+(?:table|index|key|fts|-)\s+{NUMBER}\s+({NUMBER})\s", out, re.M
        )
    }
    layouts = {
        label.strip(): float(size.replace(",", ""))
        for label, size in re.findall(
            rf"^(\s*[a-z].+?)\s+{NUMBER}\s+({NUMBER})$", out[out.index("layout") :], re.M
        )
    }
    return objects, layouts


def test_file_size_benchmark_breaks_a_new_file_down(tmp_path: Path) -> None:
    out = run("file_size.py", "--spans", "2000", cwd=tmp_path)
    assert "wrote 2,000 spans of the benchmarks' shape" in out
    assert re.search(rf": 2,000 spans, page size 4,096, {NUMBER} bytes a span$", out, re.M), out
    objects, layouts = file_size_figures(out)
    # The span rows are the largest part; the unique key and the full-text index are there too.
    assert max(objects, key=objects.__getitem__) == "spans", out
    assert {"sqlite_autoindex_spans_1", "spans_by_session", "spans_fts_data"} <= objects.keys(), out
    found = re.search(rf"^total in tables and indexes\s+{NUMBER}\s+({NUMBER})$", out, re.M)
    assert found, out
    total = float(found.group(1).replace(",", ""))
    # Each figure is rounded to a tenth; the tables and indexes under half a byte are not listed.
    assert sum(objects.values()) <= total + 0.05 * len(objects), out
    assert total <= layouts["as written"], out
    assert set(layouts) == {
        "as written",
        "packed (VACUUM)",
        "the fewest indexes, no response ids",
        "and 8 KiB pages",
    }, out
    assert (
        layouts["the fewest indexes, no response ids"] < layouts["packed (VACUUM)"] <= layouts["as written"]
    )
    assert re.search(r"^target\s+800$", out, re.M), out


def test_file_size_benchmark_reads_a_file_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "mine.db"
    tracing = start_tracing(path)
    for number in range(30):
        with tracing.tracer.start_as_current_span(f"call {number}", attributes={"gen_ai.request.model": "m"}):
            pass
    tracing.close()
    before = sha256(path)
    out = run("file_size.py", "--db", str(path), cwd=tmp_path)
    assert f"{path}: 30 spans, page size 4,096" in out
    assert "wrote" not in out
    assert sha256(path) == before
    assert {p.name for p in tmp_path.iterdir()} <= {"mine.db", "mine.db-wal", "mine.db-shm"}

    missing = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "file_size.py"), "--db", str(tmp_path / "none.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0
    assert f"no such file: {tmp_path / 'none.db'}" in missing.stderr
