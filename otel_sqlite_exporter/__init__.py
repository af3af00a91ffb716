"""otel-sqlite-exporter: every OpenTelemetry span of an LLM or agent application in one SQLite file.

>>> from otel_sqlite_exporter import configure, session
>>> configure("traces.db")                     # doctest: +SKIP
>>> with session(task="answer a question"):    # doctest: +SKIP
...     ...                                    # every span started here lands in traces.db
"""

from otel_sqlite_exporter._budget import BudgetAlert, TokenBudget
from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._configure import configure
from otel_sqlite_exporter._exceptions import (
    ConfigurationError,
    NotATraceFileError,
    NotFoundError,
    OtelSQLiteError,
    QueryError,
    ReadOnlyStoreError,
    SchemaVersionError,
    TraceFileError,
)
from otel_sqlite_exporter._exporter import SQLiteSpanExporter
from otel_sqlite_exporter._log_exporter import SQLiteLogExporter
from otel_sqlite_exporter._pricing import ModelPrice, PriceTable
from otel_sqlite_exporter._processor import SQLiteSpanProcessor
from otel_sqlite_exporter._query import StoreStats, TraceStore
from otel_sqlite_exporter._records import (
    LogEntry,
    ModelUsage,
    SearchHit,
    SessionSummary,
    TraceEntry,
    TraceSession,
)
from otel_sqlite_exporter._redact import ScrubResult, redact_text, scrub_file
from otel_sqlite_exporter._retention import PlannedDeletion, RetentionSweeper, SweepPlan, SweepResult
from otel_sqlite_exporter._schema import SCHEMA_VERSION
from otel_sqlite_exporter._session import session
from otel_sqlite_exporter._tree import SessionTree, SpanNode, TraceNode

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "BudgetAlert",
    "ConfigurationError",
    "LogEntry",
    "ModelPrice",
    "ModelUsage",
    "NotATraceFileError",
    "NotFoundError",
    "Options",
    "OtelSQLiteError",
    "PlannedDeletion",
    "PriceTable",
    "QueryError",
    "ReadOnlyStoreError",
    "RetentionSweeper",
    "SQLiteLogExporter",
    "SQLiteSpanExporter",
    "SQLiteSpanProcessor",
    "SchemaVersionError",
    "ScrubResult",
    "SearchHit",
    "SessionSummary",
    "SessionTree",
    "SpanNode",
    "StoreStats",
    "SweepPlan",
    "SweepResult",
    "TokenBudget",
    "TraceEntry",
    "TraceFileError",
    "TraceNode",
    "TraceSession",
    "TraceStore",
    "configure",
    "redact_text",
    "scrub_file",
    "session",
]
