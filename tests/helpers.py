"""Helpers shared by the test modules."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path


def query(path: Path, sql: str, params: Sequence[object] = ()) -> list[tuple]:
    """Rows of one query, on a connection of its own (as any other reader of the file would)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()
