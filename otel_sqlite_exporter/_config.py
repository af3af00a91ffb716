"""Options shared by the processor and the exporter, read from arguments, then environment."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import orjson

from otel_sqlite_exporter._exceptions import ConfigurationError
from otel_sqlite_exporter._pricing import ModelPrice, PriceTable

if TYPE_CHECKING:
    from otel_sqlite_exporter._budget import TokenBudget

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
ENV_SHUTDOWN_TIMEOUT = "OTEL_EXPORTER_SQLITE_SHUTDOWN_TIMEOUT_MILLIS"
ENV_MAX_DB_BYTES = "OTEL_EXPORTER_SQLITE_MAX_DB_BYTES"
ENV_SWEEP_INTERVAL = "OTEL_EXPORTER_SQLITE_SWEEP_INTERVAL_SECONDS"
ENV_STALE_AFTER = "OTEL_EXPORTER_SQLITE_STALE_AFTER_SECONDS"
ENV_REDACT = "OTEL_EXPORTER_SQLITE_REDACT"
ENV_REDACT_PATTERNS = "OTEL_EXPORTER_SQLITE_REDACT_PATTERNS"
ENV_BUDGET_MAX_TOKENS = "OTEL_EXPORTER_SQLITE_BUDGET_MAX_TOKENS"
ENV_BUDGET_MAX_COST = "OTEL_EXPORTER_SQLITE_BUDGET_MAX_COST_USD"

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
    #: The longest shutdown() waits for what is queued to be written; what is left then is counted
    #: as dropped, and the process may exit.
    shutdown_timeout_millis: int = 30_000
    #: Oldest sessions are swept until the file is under this size; None sets no cap.
    max_db_bytes: int | None = None
    #: How often the retention sweeper runs (it runs only when retention_days or max_db_bytes is set).
    sweep_interval_seconds: float = 3600.0
    #: A running session with no activity for this long is marked interrupted by the sweeper.
    stale_after_seconds: float = 3600.0
    #: True redacts API keys and tokens before anything is written, False stores text as it came,
    #: a callable ``(text) -> text`` replaces the default redaction.
    redact: bool | Callable[[str], str] = True
    #: Regular expressions redacted in addition to the built-in rules (with redact=False, only they).
    redact_patterns: tuple[re.Pattern[str], ...] = ()
    #: Per-session token and cost limits, tracked as LLM spans end (each processor or exporter
    #: counts the spans it sees).
    budget: TokenBudget | None = None

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
        values["redact"] = _redact(given, env)
        values["redact_patterns"] = _redact_patterns(given, env)
        values["budget"] = _budget(given, env)
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


def _number(minimum: float) -> Any:
    def parse(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"expected a number >= {minimum}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number >= {minimum}") from None
        if not number >= minimum or number == float("inf"):
            raise ValueError(f"must be a finite number >= {minimum}")
        return number

    return parse


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(value: object) -> int:
    """A size in bytes from a whole number or text like ``500MB``, ``1.5GB`` or ``200MiB``.

    KB, MB, GB and TB are powers of 1000; KiB, MiB, GiB and TiB powers of 1024.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("expected a size in bytes, or text like 500MB or 2GiB")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError("expected a size in bytes, or text like 500MB or 2GiB")
        unit = (match.group(2) or "").lower()
        scale = _UNITS[unit[:1]]
        if "i" in unit:
            scale = 1024 ** ("bkmgt".index(unit[0]))
        number = int(float(match.group(1)) * scale)
    if number < 1:
        raise ValueError("must be at least 1 byte")
    return number


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
    ("shutdown_timeout_millis", ENV_SHUTDOWN_TIMEOUT, _int(0)),
    ("max_db_bytes", ENV_MAX_DB_BYTES, parse_size),
    ("sweep_interval_seconds", ENV_SWEEP_INTERVAL, _number(0.01)),
    ("stale_after_seconds", ENV_STALE_AFTER, _number(0)),
)


def _path(value: object) -> str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigurationError(f"path must be a non-empty file path, got {value!r}")
    return os.fspath(value)  # type: ignore[return-value]


def _pick(
    given: Mapping[str, Any], env: Mapping[str, str], name: str, variable: str, parse: Any, default: Any
) -> Any:
    # None is "not given": the environment, then the default, decide.
    if given.get(name) is not None:
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


def _redact(given: Mapping[str, Any], env: Mapping[str, str]) -> bool | Callable[[str], str]:
    if "redact" in given:
        value = given["redact"]
        if isinstance(value, bool) or callable(value):
            return value
        raise ConfigurationError(
            f"option redact={value!r}: expected True, False or a callable (text) -> text"
        )
    return _pick({}, env, "redact", ENV_REDACT, _bool, True)  # type: ignore[no-any-return]


def _redact_patterns(given: Mapping[str, Any], env: Mapping[str, str]) -> tuple[re.Pattern[str], ...]:
    if "redact_patterns" in given:
        source, raw = "option redact_patterns", given["redact_patterns"]
        if raw is None:
            return ()
        if isinstance(raw, (str, re.Pattern)) or not isinstance(raw, (list, tuple, set, frozenset)):
            raise ConfigurationError(f"{source}={raw!r}: expected a list of regular expressions")
        items = list(raw)
    else:
        raw = env.get(ENV_REDACT_PATTERNS, "").strip()
        if not raw:
            return ()
        source = f"environment variable {ENV_REDACT_PATTERNS}"
        if raw.startswith("["):
            try:
                items = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ConfigurationError(f"{source}={raw!r}: not a JSON array of patterns ({exc})") from None
        else:
            items = [raw]  # a single pattern; several are given as a JSON array
    patterns = []
    for item in items:
        if isinstance(item, re.Pattern) and isinstance(item.pattern, str):
            patterns.append(item)
            continue
        if not isinstance(item, str) or not item:
            raise ConfigurationError(f"{source}: {item!r} is not a regular expression (a non-empty str)")
        try:
            patterns.append(re.compile(item))
        except re.error as exc:
            raise ConfigurationError(f"{source}: {item!r} is not a valid regular expression: {exc}") from None
    return tuple(patterns)


def _budget(given: Mapping[str, Any], env: Mapping[str, str]) -> TokenBudget | None:
    from otel_sqlite_exporter._budget import TokenBudget

    if "budget" in given:
        value = given["budget"]
        if value is None or isinstance(value, TokenBudget):
            return value
        raise ConfigurationError(f"option budget={value!r}: expected a TokenBudget or None")
    tokens = _pick({}, env, "budget", ENV_BUDGET_MAX_TOKENS, _int(1), None)
    cost = _pick({}, env, "budget", ENV_BUDGET_MAX_COST, _number(0), None)
    if tokens is None and cost is None:
        return None
    try:
        return TokenBudget(tokens, max_cost_usd=cost)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"environment variables {ENV_BUDGET_MAX_TOKENS} / {ENV_BUDGET_MAX_COST}: {exc}"
        ) from None


__all__ = ["ModelPrice", "Options", "parse_size"]
