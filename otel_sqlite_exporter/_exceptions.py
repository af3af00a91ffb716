"""The exception hierarchy: every error this package raises is an ``OtelSQLiteError``."""

from __future__ import annotations


class OtelSQLiteError(Exception):
    """Base class for every error raised by otel-sqlite-exporter."""


class ConfigurationError(OtelSQLiteError, ValueError):
    """An option or environment variable has a value that cannot be used."""


class TraceFileError(OtelSQLiteError):
    """A trace file cannot be opened, created or written.

    ``path`` names the file and the message says what is wrong with it.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class SchemaVersionError(TraceFileError):
    """The trace file was written by a newer version of this package."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        super().__init__(
            path,
            f"schema version {found} is newer than this package supports ({supported}); "
            "upgrade otel-sqlite-exporter to read or write it. The file was not modified.",
        )
        self.found = found
        self.supported = supported


class ReadOnlyStoreError(TraceFileError):
    """A ``TraceStore`` opened read-only (the default) was asked to change the file."""


class NotATraceFileError(TraceFileError):
    """The file exists but is not an otel-sqlite-exporter trace database."""


class QueryError(OtelSQLiteError, ValueError):
    """A read-side argument cannot be used (an unknown status, a malformed time or search query)."""


class NotFoundError(OtelSQLiteError, LookupError):
    """The session, trace or span asked for is not in the trace file."""
