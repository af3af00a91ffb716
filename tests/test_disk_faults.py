"""A full disk, a read-only file system, and a trace file or folder removed while it is written.

In each the application goes on without an exception, the failure is logged once with the path and
the reason, counted in ``stats``, and writing resumes by itself once the cause is gone, with nothing
committed before lost. The full disk and the read-only file system are real: a small tmpfs, and a
read-only bind mount (skipped where this process may not mount).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import query
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

from otel_sqlite_exporter import SQLiteSpanExporter, SQLiteSpanProcessor

LOGGER = "otel_sqlite_exporter"
# Enough text per model call that a few bursts fill what the filler leaves.
PROMPT = "Summarise the quarterly report for the board, section by section. " * 24


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


def _require_mount(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["mount failed"])[0]
        pytest.skip(f"this process may not mount file systems (needs root with CAP_SYS_ADMIN): {reason}")


def _unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 2 MiB tmpfs of its own."""
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux mount(8)")
    folder = tmp_path / "disk"
    folder.mkdir()
    _require_mount(_mount("-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(folder)))
    try:
        yield folder
    finally:
        _unmount(folder)


def _fill(folder: Path, name: str = "filler") -> Path:
    """Take every free byte of the file system holding ``folder``; deleting the file gives it back."""
    filler = folder / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def _tracing(processor: SpanProcessor) -> tuple[TracerProvider, Tracer]:
    provider = TracerProvider(resource=Resource.create({"service.name": "disk-faults"}))
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("test_disk_faults")


def _burst(tracer: Tracer, tag: str, n: int = 10, text: str = "") -> list[str]:
    """``n`` agent steps, each a root span over one model call with usage; the names made."""
    names = []
    for i in range(n):
        with tracer.start_as_current_span(f"{tag}-{i}"):
            attributes = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 100 + i,
                "gen_ai.usage.output_tokens": 10 + i,
                "input.value": f"{tag}-{i} {text}",
            }
            with tracer.start_as_current_span(f"{tag}-{i}-llm", attributes=attributes):
                pass
        names += [f"{tag}-{i}", f"{tag}-{i}-llm"]
    return names


def _logged(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def _recoveries(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The paths of the "works again" messages: one per reason, however often a fault comes and goes."""
    prefix, suffix = "otel-sqlite-exporter: writing to ", " works again"
    return [
        m[len(prefix) : -len(suffix)]
        for m in _logged(caplog, logging.WARNING)
        if m.startswith(prefix) and m.endswith(suffix)
    ]


def _span_keys(path: Path) -> set[tuple[str, str]]:
    return set(query(path, "SELECT trace_id, span_id FROM spans"))


def _ended(path: Path) -> set[str]:
    return {name for (name,) in query(path, "SELECT name FROM spans WHERE end_time_unix_nano IS NOT NULL")}


def _assert_sound(path: Path) -> None:
    """The file is intact and every trace and session rollup equals the sum over its spans."""
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    for table, key in (("traces", "trace_id"), ("sessions", "session_id")):
        wrong = query(
            path,
            f"""SELECT r.{key} FROM {table} AS r WHERE
                r.span_count != (SELECT count(*) FROM spans AS s WHERE s.{key} = r.{key})
                OR (r.input_tokens, r.output_tokens) != (
                    SELECT coalesce(sum(s.input_tokens), 0), coalesce(sum(s.output_tokens), 0)
                    FROM spans AS s WHERE s.{key} = r.{key} AND s.has_usage = 1 AND s.usage_below = 0)""",
        )
        assert wrong == [], (table, wrong)


def _balanced(stats: dict[str, object]) -> bool:
    return stats["enqueued"] == stats["written"] + stats["failed"] + stats["dropped"] + stats["queued"]


def _until_writes_fail(
    tracer: Tracer, flush: Callable[[], object], failed: Callable[[], object]
) -> list[str]:
    """Bursts until writes fail, as an application would go on tracing (the write-ahead log reuses
    its space until a checkpoint cannot grow the file); the names made."""
    made: list[str] = []
    for round_ in range(40):
        made += _burst(tracer, f"full{round_}", text=PROMPT)
        flush()
        if failed():
            break
    return made


def _logged_once_and_recovered(caplog: pytest.LogCaptureFixture, path: Path, *reason: str) -> None:
    """One error naming the path and the reason, and one "works again" once the cause was gone."""
    errors = _logged(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert str(path) in errors[0] and all(part in errors[0] for part in reason), errors[0]
    assert _recoveries(caplog) == [str(path)]


# --- a full disk -------------------------------------------------------------------------------------


def test_processor_on_a_full_disk_goes_on_and_resumes_when_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = small_disk / "traces.db"
    processor = SQLiteSpanProcessor(path, schedule_delay_millis=10)
    provider, tracer = _tracing(processor)
    try:
        before = _burst(tracer, "before", text=PROMPT)
        assert processor.force_flush(10_000)
        filler = _fill(small_disk)
        _until_writes_fail(tracer, processor.force_flush, lambda: processor.stats["failed"])
        for round_ in range(3):  # failing on: still logged once
            _burst(tracer, f"still-full{round_}", text=PROMPT)
            processor.force_flush(10_000)
        stats = processor.stats
        assert stats["errors"] > 0 and stats["failed"] > 0, stats
        assert "full" in str(stats["last_error"])
        assert _balanced(stats), stats
        committed = _span_keys(path)  # read while the disk is full

        filler.unlink()
        after = _burst(tracer, "after", text=PROMPT)
        assert processor.force_flush(10_000)
        stats = processor.stats
        assert _balanced(stats), stats
        assert stats["queued"] == 0
    finally:
        provider.shutdown()

    _logged_once_and_recovered(caplog, path, "disk is full")
    ended = _ended(path)
    assert set(before) <= ended and set(after) <= ended
    assert committed <= _span_keys(path)
    _assert_sound(path)
    # The last connection checkpointed the log into the file and removed it: space was there again.
    assert not Path(f"{path}-wal").exists()


def test_a_new_resource_on_a_full_disk_is_counted_not_lost(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A span of a service not seen yet needs a resource row first: that write fails too, and the
    # span must be counted as failed like the rest of its batch, not skipped as unmappable.
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = small_disk / "traces.db"
    processor = SQLiteSpanProcessor(path, schedule_delay_millis=10)
    provider, tracer = _tracing(processor)
    other = TracerProvider(resource=Resource.create({"service.name": "second service"}))
    other.add_span_processor(processor)
    try:
        _burst(tracer, "before")
        assert processor.force_flush(10_000)
        # The log emptied into the file and cut to nothing, then the disk filled: any write now
        # needs space, the resource row's first.
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        conn.close()
        filler = _fill(small_disk)
        _burst(other.get_tracer("second"), "new resource", n=5)
        assert processor.force_flush(10_000)
        stats = processor.stats
        assert (stats["written"], stats["failed"]) == (40, 20), stats
        assert _balanced(stats), stats
        filler.unlink()
        _burst(other.get_tracer("second"), "new resource again", n=5)
        assert processor.force_flush(10_000)
    finally:
        provider.shutdown()
    assert not [m for m in _logged(caplog, logging.ERROR) if "could not map" in m]
    assert query(
        path,
        "SELECT count(*) FROM spans AS s JOIN resources AS r USING (resource_id) "
        "WHERE r.service_name = 'second service'",
    ) == [(10,)]  # the five traces written once space returned
    _assert_sound(path)


def test_exporter_behind_batch_processor_on_a_full_disk_resumes_when_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = small_disk / "traces.db"
    exporter = SQLiteSpanExporter(path)
    provider, tracer = _tracing(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    made = 0
    try:
        before = _burst(tracer, "before", text=PROMPT)
        made += len(before)
        assert provider.force_flush(10_000)
        filler = _fill(small_disk)
        made += len(_until_writes_fail(tracer, provider.force_flush, lambda: exporter.stats["failed"]))
        made += len(_burst(tracer, "still-full", text=PROMPT))
        provider.force_flush(10_000)
        assert exporter.stats["failed"] > 0, exporter.stats
        committed = _span_keys(path)

        filler.unlink()
        after = _burst(tracer, "after", text=PROMPT)
        made += len(after)
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()

    stats = exporter.stats
    assert stats["written"] + stats["failed"] == made, stats
    assert stats["errors"] > 0 and "full" in str(stats["last_error"])
    _logged_once_and_recovered(caplog, path, "disk is full")
    ended = _ended(path)
    assert set(before) <= ended and set(after) <= ended
    assert committed <= _span_keys(path)
    assert query(path, "SELECT count(*) FROM spans")[0][0] == stats["written"]
    _assert_sound(path)
    assert not Path(f"{path}-wal").exists()


# --- a read-only file system -------------------------------------------------------------------------


@pytest.fixture
def bound_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder bind-mounted on itself, so that it can be made read-only and writable again."""
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux mount(8)")
    folder = tmp_path / "bound"
    folder.mkdir()
    _require_mount(_mount("--bind", str(folder), str(folder)))
    try:
        yield folder
    finally:
        _unmount(folder)


def test_processor_on_a_read_only_file_system_goes_on_and_resumes_when_writable(
    bound_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel refuses to make a file system read-only while a file on it is open for writing, so
    here the file is read-only when the writer opens it: written by an earlier run, then mounted
    read-only (root writes through chmod), then made writable while the application traces."""
    path = bound_folder / "traces.db"
    processor = SQLiteSpanProcessor(path, schedule_delay_millis=10)
    provider, tracer = _tracing(processor)
    earlier = _burst(tracer, "earlier")
    provider.shutdown()
    committed = _span_keys(path)
    assert len(committed) == len(earlier)

    caplog.set_level(logging.WARNING, logger=LOGGER)
    remounted = _mount("-o", "remount,bind,ro", str(bound_folder))
    assert remounted.returncode == 0, remounted.stderr
    processor = SQLiteSpanProcessor(path, schedule_delay_millis=10)
    provider, tracer = _tracing(processor)
    try:
        lost = 0
        for round_ in range(3):
            lost += len(_burst(tracer, f"read-only{round_}"))
            processor.force_flush(10_000)
        stats = processor.stats
        # Each span start and end is one event, and none could be written.
        assert (stats["written"], stats["failed"]) == (0, 2 * lost), stats
        assert stats["errors"] >= 3 and "read-only" in str(stats["last_error"])

        remounted = _mount("-o", "remount,bind,rw", str(bound_folder))
        assert remounted.returncode == 0, remounted.stderr
        later = _burst(tracer, "writable")
        assert processor.force_flush(10_000)
        stats = processor.stats
        assert stats["written"] == 2 * len(later) and stats["failed"] == 2 * lost, stats
        assert _balanced(stats), stats
    finally:
        provider.shutdown()

    _logged_once_and_recovered(caplog, path, "the file system holding", "read-only")
    assert committed <= _span_keys(path)
    assert _ended(path) == set(earlier) | set(later)
    _assert_sound(path)


# --- the file or its folder removed ------------------------------------------------------------------


def test_processor_writes_into_a_new_file_when_its_folder_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    folder = tmp_path / "run"
    path = folder / "traces.db"
    processor = SQLiteSpanProcessor(path, schedule_delay_millis=10)
    provider, tracer = _tracing(processor)
    try:
        for round_ in range(3):
            _burst(tracer, f"old{round_}")
        processor.force_flush(10_000)
        # Removed while the writer may be in a transaction: spans made from here on must not go
        # into the removed file, where nobody could read them.
        _burst(tracer, "in-flight")
        shutil.rmtree(folder)
        new = _burst(tracer, "new")
        assert processor.force_flush(10_000)
        assert path.is_file()  # the writer made the folder and the file again
        assert set(new) <= _ended(path)
        more = _burst(tracer, "more")
        assert processor.force_flush(10_000)
        stats = processor.stats
        assert stats["written"] == stats["enqueued"] and stats["errors"] >= 1, stats
        assert set(new) | set(more) <= _ended(path)

        # Removed again, with a file where the folder was: the path cannot be opened. Spans are
        # counted as failed, and writing resumes once the path can be opened again.
        shutil.rmtree(folder)
        folder.write_text("not a folder")
        blocked = _burst(tracer, "blocked")
        processor.force_flush(10_000)
        stats = processor.stats
        assert stats["failed"] == 2 * len(blocked), stats
        assert "not a folder" in str(stats["last_error"])
        folder.unlink()
        resumed = _burst(tracer, "resumed")
        assert processor.force_flush(10_000)
        stats = processor.stats
        assert _balanced(stats) and stats["queued"] == 0, stats
    finally:
        provider.shutdown()

    assert _ended(path) == set(resumed)
    _assert_sound(path)
    errors = _logged(caplog, logging.ERROR)
    assert len(errors) == 2, errors
    assert str(path) in errors[0] and "the file or its folder was removed or replaced" in errors[0]
    assert str(path) in errors[1] and f"{folder} is not a folder" in errors[1]
    assert _recoveries(caplog) == [str(path)] * 2  # one for each reason


def test_exporter_writes_into_a_new_file_when_the_file_is_moved_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = tmp_path / "traces.db"
    exporter = SQLiteSpanExporter(path)
    provider, tracer = _tracing(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    try:
        old = _burst(tracer, "old")
        assert provider.force_flush(10_000)
        # Rotated, as a log file is: what was written stays in the moved file.
        path.rename(tmp_path / "traces-1.db")
        new = _burst(tracer, "new")
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
    assert exporter.stats["failed"] == 0 and exporter.stats["written"] == len(old) + len(new)
    assert _ended(path) == set(new)
    assert _ended(tmp_path / "traces-1.db") == set(old)
    _assert_sound(path)
    errors = _logged(caplog, logging.ERROR)
    assert len(errors) == 1 and "the file or its folder was removed or replaced" in errors[0], errors
