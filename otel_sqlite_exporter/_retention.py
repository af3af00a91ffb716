"""Retention: sweep old sessions out of the trace file (skeleton; see RetentionSweeper)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SweepResult:
    deleted_sessions: int
    deleted_traces: int
    deleted_spans: int
    bytes_reclaimed: int
    duration_s: float


class RetentionSweeper:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_days: int | None = None,
        max_db_bytes: int | None = None,
        interval_seconds: float = 3600,
        batch_size: int = 500,
        stale_after_seconds: float = 3600,
    ) -> None:
        self.path = os.fspath(path)
