"""The processor, the exporter and configure() start the retention sweeper when asked to."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_sqlite_exporter import SQLiteSpanExporter
from tests.helpers import query, start_tracing

_DAY_NS = 86_400 * 10**9


def _sweeper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "otel-sqlite-retention" and t.is_alive()]


def _write_sessions(tracer, now: int) -> None:  # type: ignore[no-untyped-def]
    for name, age_days in (("old", 40), ("fresh", 1)):
        start = now - age_days * _DAY_NS
        span = tracer.start_span(name, start_time=start, attributes={"session.id": name})
        span.end(end_time=start + 10**6)


def _sessions(path: Path) -> list[str]:
    return [row[0] for row in query(path, "SELECT session_id FROM sessions ORDER BY session_id")]


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_retention_days_from_the_environment_sweeps_with_the_processor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "traces.db"
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_RETENTION_DAYS", "30")
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_SWEEP_INTERVAL_SECONDS", "0.2")
    tracing = start_tracing(path)
    try:
        _write_sessions(tracing.tracer, time.time_ns())
        tracing.flush()
        assert _wait_for(lambda: _sessions(path) == ["fresh"]), _sessions(path)
        assert query(path, "SELECT value FROM settings WHERE key = 'retention_days'") == [("30",)]
        assert _sweeper_threads()
    finally:
        tracing.close()
    assert not _sweeper_threads(), "shutdown() stops the sweeper"


def test_no_retention_option_means_no_sweeper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_SQLITE_RETENTION_DAYS", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_SQLITE_MAX_DB_BYTES", raising=False)
    path = tmp_path / "traces.db"
    tracing = start_tracing(path)
    try:
        _write_sessions(tracing.tracer, time.time_ns())
        tracing.flush()
        assert not _sweeper_threads()
        assert _sessions(path) == ["fresh", "old"]
    finally:
        tracing.close()


def test_exporter_behind_the_sdk_batch_processor_sweeps_by_size(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    exporter = SQLiteSpanExporter(path, max_db_bytes="1MB", retention_days=0, sweep_interval_seconds=0.2)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    try:
        now = time.time_ns()
        for index in range(200):  # ~2 MB of prompts over 200 sessions, oldest first
            start = now - (400 - index) * 60 * 10**9
            span = tracer.start_span(
                f"call {index}",
                start_time=start,
                attributes={"session.id": f"s{index:03d}", "input.value": f"{index} " + "x" * 10_000},
            )
            span.end(end_time=start + 10**6)
        provider.force_flush()

        def live_bytes() -> int:
            (pages,), (free,), (size,) = (
                query(path, "PRAGMA page_count")[0],
                query(path, "PRAGMA freelist_count")[0],
                query(path, "PRAGMA page_size")[0],
            )
            return (pages - free) * size

        assert _wait_for(lambda: live_bytes() <= 1_000_000), live_bytes()
        kept = _sessions(path)
        assert kept and "s199" in kept and "s000" not in kept  # the oldest went first
    finally:
        provider.shutdown()
    assert not _sweeper_threads()


def test_configure_starts_the_sweeper(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    script = f"""
import time
from otel_sqlite_exporter import configure
provider = configure({str(path)!r}, instrument=False, retention_days=30, sweep_interval_seconds=0.2)
tracer = provider.get_tracer("app")
now = time.time_ns()
for name, age_days in (("old", 40), ("fresh", 1)):
    start = now - age_days * 86_400 * 10**9
    tracer.start_span(name, start_time=start, attributes={{"session.id": name}}).end(end_time=start + 10**6)
provider.force_flush()
time.sleep(1.5)
provider.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert _sessions(path) == ["fresh"]
