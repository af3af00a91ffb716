"""Span -> row: one table maps every instrumentation dialect onto the normalised columns.

Runs on the writer thread (never on the application thread), once per span per batch.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._content import extract_text, is_content_key

# The normalisation table. For each column the first key present on the span wins.
SESSION_KEYS = (
    "session.id",
    "gen_ai.conversation.id",
    "traceloop.association.properties.session_id",
    "langfuse.session.id",
)
USER_KEYS = ("user.id", "enduser.id", "traceloop.association.properties.user_id", "langfuse.user.id")
MODEL_KEYS = (
    "gen_ai.response.model",
    "gen_ai.request.model",
    "llm.response.model_name",
    "llm.model_name",
    "llm.request.model_name",
)
PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
INPUT_TOKEN_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
OUTPUT_TOKEN_KEYS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
)
CACHE_READ_KEYS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
)
CACHE_WRITE_KEYS = (
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
REASONING_KEYS = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
)
COST_KEYS = ("llm.cost.total", "gen_ai.usage.cost")

# Span type, from the first of these keys present; values are matched case-insensitively.
TYPE_BY_KEY: tuple[tuple[str, Mapping[str, str]], ...] = (
    (
        "gen_ai.operation.name",
        {
            "chat": "llm",
            "text_completion": "llm",
            "generate_content": "llm",
            "completion": "llm",
            "execute_tool": "tool",
            "invoke_agent": "agent",
            "create_agent": "agent",
            "embeddings": "embedding",
            "embedding": "embedding",
            "retrieval": "retrieval",
            "invoke_workflow": "workflow",
        },
    ),
    (
        "openinference.span.kind",
        {
            "llm": "llm",
            "tool": "tool",
            "agent": "agent",
            "chain": "chain",
            "retriever": "retrieval",
            "reranker": "retrieval",
            "embedding": "embedding",
        },
    ),
    (
        "llm.request.type",
        {"chat": "llm", "completion": "llm", "embedding": "embedding", "rerank": "retrieval"},
    ),
    (
        "traceloop.span.kind",
        {"workflow": "workflow", "task": "chain", "agent": "agent", "tool": "tool"},
    ),
)
OPERATION_KEYS = ("gen_ai.operation.name", "llm.request.type")
SPAN_TYPES = ("llm", "tool", "agent", "chain", "retrieval", "embedding", "workflow", "span")

# Columns of one staged row, in the order SpanMapper.row() produces them.
ROW_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "is_root",
    "explicit_session",
    "user_id",
    "service_name",
    "name",
    "kind",
    "type",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "status_code",
    "status_message",
    "model",
    "provider",
    "operation",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "input_text",
    "output_text",
    "attributes",
    "events",
    "links",
    "resource_id",
    "scope_name",
    "scope_version",
)
# A JSON column larger than this has its longest strings shortened so one span cannot exhaust the writer.
MAX_JSON_CHARS = 8 * 1024 * 1024


# Column slots filled by the single pass over a span's attributes.
_SESSION, _USER, _MODEL, _PROVIDER, _OPERATION, _IN, _OUT, _CACHE_READ, _CACHE_WRITE, _REASONING, _COST = (
    range(11)
)
_SLOT_KEYS: tuple[tuple[str, ...], ...] = (
    SESSION_KEYS,
    USER_KEYS,
    MODEL_KEYS,
    PROVIDER_KEYS,
    OPERATION_KEYS,
    INPUT_TOKEN_KEYS,
    OUTPUT_TOKEN_KEYS,
    CACHE_READ_KEYS,
    CACHE_WRITE_KEYS,
    REASONING_KEYS,
    COST_KEYS,
)
# key -> (slot, rank): one dict lookup per attribute instead of one per table key.
_KEY_SLOTS: dict[str, tuple[int, int]] = {
    key: (slot, rank) for slot, keys in enumerate(_SLOT_KEYS) for rank, key in enumerate(keys)
}
_KIND = {kind: kind.name.lower() for kind in SpanKind}


class SpanMapper:
    """Turns spans into rows of ``ROW_COLUMNS``; holds the per-file resource id cache."""

    def __init__(self, options: Options, resource_id: Callable[[str, str | None], int]) -> None:
        self._limit = options.max_content_length
        self._capture = options.capture_content
        self._prices = options.prices
        self._resource_id = resource_id
        # Keyed by id(); the Resource is kept in the value so the id cannot be reused while cached.
        self._resources: dict[int, tuple[Any, int, str | None]] = {}

    def row(self, span: ReadableSpan) -> list[Any]:
        attrs = _snapshot(span.attributes)
        if not self._capture:
            attrs = {k: v for k, v in attrs.items() if not is_content_key(k)}
        found: list[Any] = [None] * 11
        ranks = [99] * 11
        slots = _KEY_SLOTS
        for key, value in attrs.items():
            hit = slots.get(key)
            if hit is not None and value is not None and value != "":
                slot, rank = hit
                if rank < ranks[slot]:
                    ranks[slot] = rank
                    found[slot] = value
        model = _text(found[_MODEL])
        input_tokens = _count(found[_IN])
        output_tokens = _count(found[_OUT])
        cache_read = _count(found[_CACHE_READ])
        cache_write = _count(found[_CACHE_WRITE])
        reasoning = _count(found[_REASONING])
        cost = _cost(found[_COST])
        has_tokens = not (
            input_tokens is None
            and output_tokens is None
            and cache_read is None
            and cache_write is None
            and reasoning is None
        )
        if cost is None and has_tokens:
            cost = self._prices.cost(
                model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read,
                cache_write_tokens=cache_write,
                reasoning_tokens=reasoning,
            )
        events = span.events
        if self._capture:
            input_text, output_text = extract_text(attrs, events, self._limit)
        else:
            input_text = output_text = None

        resource_id, service_name = self._resource(span.resource)
        scope = span.instrumentation_scope
        status = span.status
        ctx = span.context
        parent = span.parent
        links = span.links
        return [
            f"{ctx.trace_id:032x}",
            f"{ctx.span_id:016x}",
            None if parent is None else f"{parent.span_id:016x}",
            1 if parent is None or parent.is_remote else 0,
            _text(found[_SESSION]),
            _text(found[_USER]),
            service_name,
            span.name,
            _KIND[span.kind],
            _span_type(attrs, model, has_tokens),
            span.start_time,
            span.end_time,
            status.status_code.name,
            status.description,
            model,
            _text(found[_PROVIDER]),
            _text(found[_OPERATION]),
            input_tokens,
            output_tokens,
            cache_read,
            cache_write,
            reasoning,
            cost,
            input_text,
            output_text,
            attrs or None,
            _events(events, self._capture) if events else None,
            _links(links) if links else None,
            resource_id,
            None if scope is None else scope.name,
            None if scope is None else scope.version,
        ]

    def _resource(self, resource: Any) -> tuple[int | None, str | None]:
        if resource is None:
            return None, None
        cached = self._resources.get(id(resource))
        if cached is not None and cached[0] is resource:
            return cached[1], cached[2]
        attrs = dict(resource.attributes)
        service = attrs.get("service.name")
        service_name = str(service) if service is not None else None
        rid = self._resource_id(to_json(attrs), getattr(resource, "schema_url", None) or None)
        if len(self._resources) > 256:
            self._resources.clear()
        self._resources[id(resource)] = (resource, rid, service_name)
        return rid, service_name

    def forget_resources(self) -> None:
        """Drop cached resource ids (after a rolled-back transaction they may not exist)."""
        self._resources.clear()


def _snapshot(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain dict copy, safe while the application thread still sets attributes on a live span."""
    if not attributes:
        return {}
    try:
        # mappingproxy.copy() delegates to BoundedAttributes.copy(), a C-level dict copy under the GIL.
        copied = attributes.copy()  # type: ignore[attr-defined]
        if isinstance(copied, dict):
            return copied
    except (AttributeError, TypeError):
        pass
    for _ in range(3):
        try:
            return dict(attributes)
        except (RuntimeError, KeyError):
            continue
    return {}


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _count(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value >= 0 else None
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            return None
        return number if number >= 0 else None
    return None


def _cost(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        cost = float(value)
    except (TypeError, ValueError):
        return None
    return cost if math.isfinite(cost) and cost >= 0 else None


def _span_type(attrs: Mapping[str, Any], model: str | None, has_tokens: bool) -> str:
    get = attrs.get
    for key, types in TYPE_BY_KEY:
        value = get(key)
        if value is not None:
            found = types.get(str(value).lower())
            if found is not None:
                return found
    if get("gen_ai.tool.name") is not None:
        return "tool"
    # An unknown dialect's model call: a model name plus usage is an LLM call by any reading.
    if model is not None and has_tokens:
        return "llm"
    return "span"


def _events(events: Sequence[Any], capture: bool) -> list[dict[str, Any]]:
    out = []
    for event in events:
        attrs = dict(event.attributes or {})
        if not capture:
            attrs = {
                k: v for k, v in attrs.items() if not is_content_key(k) and k not in ("content", "message")
            }
        out.append({"name": event.name, "time_unix_nano": event.timestamp, "attributes": attrs})
    return out


def _links(links: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "trace_id": f"{link.context.trace_id:032x}",
            "span_id": f"{link.context.span_id:016x}",
            "attributes": dict(link.attributes or {}),
        }
        for link in links
    ]


# Columns that travel as JSON documents inside the batch (read back with ``->``, not ``->>``).
JSON_COLUMNS = frozenset({"attributes", "events", "links"})
# Above this many characters a row is checked for oversized values (see MAX_JSON_CHARS).
_ROW_CHECK_CHARS = 64 * 1024


def encode_rows(rows: list[list[Any]]) -> str:
    """The batch as one JSON array of rows; never raises.

    The fast path is a single orjson call. Rows it cannot encode (lone surrogates, huge integers)
    or that are oversized are re-encoded one by one through the safe path.
    """
    try:
        text = orjson.dumps(rows, default=_default).decode()
    except (TypeError, orjson.JSONEncodeError):
        return "[" + ",".join(_encode_row(row) for row in rows) + "]"
    if len(text) > _ROW_CHECK_CHARS * max(1, len(rows)) // 8:
        return "[" + ",".join(_encode_row(row) for row in rows) + "]"
    return text


def _encode_row(row: list[Any]) -> str:
    try:
        text = orjson.dumps(row, default=_default).decode()
    except (TypeError, orjson.JSONEncodeError):
        row = _sanitize(row)
        text = orjson.dumps(row, default=_default).decode()
    if len(text) > MAX_JSON_CHARS:
        text = orjson.dumps(_shorten(_sanitize(row), MAX_JSON_CHARS // 4), default=_default).decode()
    return text


def to_json(value: Any) -> str:
    """JSON text for any attribute-shaped value; never raises.

    Tuples become arrays, NaN and infinities become null, bytes become ``{"$bytes": base64}``, and
    anything else JSON cannot hold (lone surrogates, huge integers, unknown objects) becomes text.
    """
    try:
        text = orjson.dumps(value, default=_default).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = orjson.dumps(_sanitize(value), default=_default).decode()
    if len(text) > MAX_JSON_CHARS:
        text = orjson.dumps(_shorten(_sanitize(value), MAX_JSON_CHARS // 4), default=_default).decode()
    return text


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def _sanitize(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, Mapping):
        return {str(_sanitize(k)): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return value
    return _sanitize(str(value))


def _shorten(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"...[{len(value) - limit} more characters not stored]"
    if isinstance(value, dict):
        return {k: _shorten(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, limit) for v in value]
    return value
