"""Helpers shared by the test modules."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel_sqlite_exporter import SQLiteSpanProcessor


def query(path: Path, sql: str, params: Sequence[object] = ()) -> list[tuple]:
    """Rows of one query, on a connection of its own (as any other reader of the file would)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()


def write_foreign_database(path: Path, user_version: int) -> None:
    """A SQLite database of another application, with ``user_version`` set as it sets it."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.commit()
    conn.close()


def sha256(path: Path) -> str:
    # Reading a trace file through a descriptor of its own drops this process's SQLite locks on it
    # when the descriptor closes: only for files no connection in this process has open.
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Tracing:
    """The real SDK writing into a trace file through SQLiteSpanProcessor."""

    path: Path
    processor: SQLiteSpanProcessor
    provider: TracerProvider
    tracer: trace.Tracer

    def flush(self) -> None:
        assert self.processor.force_flush(10_000)

    def close(self) -> None:
        self.provider.shutdown()

    def q(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        return query(self.path, sql, params)


def start_tracing(
    path: Path,
    *,
    scope: tuple[str, str | None] = ("tests", None),
    resource: dict[str, Any] | None = None,
    **options: Any,
) -> Tracing:
    processor = SQLiteSpanProcessor(path, **options)
    provider = TracerProvider(resource=Resource.create(resource or {}))
    provider.add_span_processor(processor)
    return Tracing(path, processor, provider, provider.get_tracer(*scope))
