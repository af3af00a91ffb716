"""Options shared by the processor and the exporter, read from arguments, then environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from otel_sqlite_exporter._exceptions import ConfigurationError
from otel_sqlite_exporter._pricing import ModelPrice, PriceTable

DEFAULT_PATH = "traces.db"

ENV_PATH = "OTEL_EXPORTER_SQLITE_PATH"
ENV_RETENTION_DAYS = "OTEL_EXPORTER_SQLITE_RETENTION_DAYS"
ENV_MAX_CONTENT_LENGTH = "OTEL_EXPORTER_SQLITE_MAX_CONTENT_LENGTH"
ENV_CAPTURE_CONTENT = "OTEL_EXPORTER_SQLITE_CAPTURE_CONTENT"
ENV_PRICES = "OTEL_EXPORTER_SQLITE_PRICES"
ENV_MAX_QUEUE_SIZE = "OTEL_EXPORTER_SQLITE_MAX_QUEUE_SIZE"
ENV_MAX_BATCH_SIZE = "OTEL_EXPORTER_SQLITE_MAX_BATCH_SIZE"
ENV_SCHEDULE_DELAY = "OTEL_EXPORTER_SQLITE_SCHEDULE_DELAY_MILLIS"
ENV_BUSY_TIMEOUT = "OTEL_EXPORTER_SQLITE_BUSY_TIMEOUT_MILLIS"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Options:
    """Every write-side option, validated. Build it with :meth:`Options.resolve`."""

    path: str = DEFAULT_PATH
    #: Sessions older than this many days are swept; 0 keeps everything; None leaves the file's setting.
    retention_days: int | None = None
    #: input_text / output_text are cut to this many characters (the attributes keep everything).
    max_content_length: int = 4096
    #: False stores no prompts or completions at all: no text columns and no content attributes.
    capture_content: bool = True
    prices: PriceTable = field(default_factory=PriceTable)
    #: Spans waiting for the writer (start and end each take one place); beyond it spans are dropped.
    max_queue_size: int = 131_072
    #: The most spans written in one transaction.
    max_batch_size: int = 16_384
    #: How long the writer waits for more spans before committing what it has.
    schedule_delay_millis: int = 200
    #: How long a write waits for another process's transaction before it counts as failed.
    busy_timeout_millis: int = 10_000

    @classmethod
    def resolve(
        cls, path: str | os.PathLike[str] | None = None, options: Mapping[str, Any] | None = None
    ) -> Options:
        """Explicit arguments win; the rest comes from ``OTEL_EXPORTER_SQLITE_*``, then defaults."""
        given = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(sorted(known))}"
            )
        if path is not None:
            given["path"] = path
        env = os.environ
        defaults = {f.name: f.default for f in fields(cls)}
        values: dict[str, Any] = {
            name: _pick(given, env, name, variable, parse, defaults[name])
            for name, variable, parse in _SCALARS
        }
        values["path"] = _path(given["path"]) if "path" in given else env.get(ENV_PATH) or DEFAULT_PATH
        values["prices"] = _prices(given.get("prices"), env.get(ENV_PRICES))
        return cls(**values)


def _int(minimum: int) -> Any:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected a whole number >= {minimum}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number >= {minimum}") from None
        if number < minimum:
            raise ValueError(f"must be >= {minimum}")
        return number

    return parse


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ValueError("expected true or false")


# option, environment variable, parser (the defaults are the Options fields').
_SCALARS = (
    ("retention_days", ENV_RETENTION_DAYS, _int(0)),
    ("max_content_length", ENV_MAX_CONTENT_LENGTH, _int(0)),
    ("capture_content", ENV_CAPTURE_CONTENT, _bool),
    ("max_queue_size", ENV_MAX_QUEUE_SIZE, _int(2)),
    ("max_batch_size", ENV_MAX_BATCH_SIZE, _int(1)),
    ("schedule_delay_millis", ENV_SCHEDULE_DELAY, _int(1)),
    ("busy_timeout_millis", ENV_BUSY_TIMEOUT, _int(0)),
)


def _path(value: object) -> str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigurationError(f"path must be a non-empty file path, got {value!r}")
    return os.fspath(value)  # type: ignore[return-value]


def _pick(
    given: Mapping[str, Any], env: Mapping[str, str], name: str, variable: str, parse: Any, default: Any
) -> Any:
    if name in given:
        try:
            return parse(given[name])
        except ValueError as exc:
            raise ConfigurationError(f"option {name}={given[name]!r}: {exc}") from None
    raw = env.get(variable)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise ConfigurationError(f"environment variable {variable}={raw!r}: {exc}") from None


def _prices(given: object, env_file: str | None) -> PriceTable:
    if isinstance(given, PriceTable):
        return given
    if given is not None:
        if not isinstance(given, Mapping):
            raise ConfigurationError(
                f"option prices must be a PriceTable or a mapping, got {type(given).__name__}"
            )
        try:
            return PriceTable(given)
        except ValueError as exc:
            raise ConfigurationError(f"option prices: {exc}") from None
    if env_file:
        try:
            return PriceTable.from_json_file(env_file)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"environment variable {ENV_PRICES}={env_file!r}: {exc}") from None
    return PriceTable()


__all__ = ["ModelPrice", "Options"]
