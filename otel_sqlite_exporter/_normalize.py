"""Normalise: the table that maps every instrumentation dialect onto the normalised columns,
and span -> staged row.

This runs on the writer's mapping thread, once per span per batch, holding the GIL: it does one
pass over the attributes and packs the result for SQLite, which does everything else.
"""

from __future__ import annotations

import base64
import re
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

# The normalised columns and their keys, best first. The writer loads this table into SQLite and
# picks each span's columns there, without the GIL (the traced application needs it more).
SLOT_KEYS: dict[str, tuple[str, ...]] = {
    "explicit_session": SESSION_KEYS,
    "user_id": USER_KEYS,
    "model": MODEL_KEYS,
    "provider": PROVIDER_KEYS,
    "operation": OPERATION_KEYS,
    "input_tokens": INPUT_TOKEN_KEYS,
    "output_tokens": OUTPUT_TOKEN_KEYS,
    "cache_read_tokens": CACHE_READ_KEYS,
    "cache_write_tokens": CACHE_WRITE_KEYS,
    "reasoning_tokens": REASONING_KEYS,
    "explicit_cost": COST_KEYS,
}
COUNT_SLOTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def attribute_key_rows() -> list[tuple[str, int, int, str]]:
    """The normalisation table as rows (key, slot, rank, kind) for the writer's SQL."""
    rows = []
    for slot, (name, keys) in enumerate(SLOT_KEYS.items()):
        kind = "count" if name in COUNT_SLOTS else "cost" if name == "explicit_cost" else "text"
        rows.extend((key, slot, rank, kind) for rank, key in enumerate(keys))
    return rows


# One staged row, in the order SpanMapper.row() produces it. SQLite 3.40 parses a row's JSON again
# for every element read (~1 us each), so the scalars travel packed in the head, at fixed offsets
# (HEAD_LAYOUT) or length-prefixed (name, then scope name), and the optional elements are read only
# when their flag bit is set.
OPTIONAL_ELEMENTS = ("status_message", "events", "links", "input_text", "output_text", "scope_version")
ROW_ELEMENTS = ("head", "attributes", *OPTIONAL_ELEMENTS)
FLAG_ROOT = 1  # no parent, or a parent in another process
OPTIONAL_FLAGS = {name: 2 << index for index, name in enumerate(OPTIONAL_ELEMENTS)}  # see SpanMapper.row
# (field, first character (1-based), width); blanks mean NULL.
HEAD_LAYOUT = (
    ("flags", 1, 4),
    ("trace_id", 5, 32),
    ("span_id", 37, 16),
    ("parent_span_id", 53, 16),
    ("kind_code", 69, 1),  # SpanKind value, see KIND_NAMES
    ("status_code", 70, 1),  # StatusCode value: 0 unset, 1 ok, 2 error
    ("type_code", 71, 1),  # index into SPAN_TYPES; blank when only SQL can tell (see _span_type)
    ("start_time_unix_nano", 72, 20),
    ("end_time_unix_nano", 92, 20),
    ("resource_id", 112, 10),
)
HEAD_NAME_AT = 122
KIND_NAMES = tuple(kind.name.lower() for kind in sorted(SpanKind, key=lambda k: k.value))
STATUS_NAMES = ("UNSET", "OK", "ERROR")
# A JSON column larger than this has its longest strings shortened so one span cannot exhaust the writer.
MAX_JSON_CHARS = 8 * 1024 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
_BLANK = {width: " " * width for width in (10, 16, 20)}
_TYPE_KEYS = frozenset(key for key, _ in TYPE_BY_KEY) | {"gen_ai.tool.name"}
_TYPE_CODE = {span_type: str(code) for code, span_type in enumerate(SPAN_TYPES)}


class SpanMapper:
    """Turns spans into staged rows (``ROW_ELEMENTS``); the normalising itself happens in SQL.

    This runs on the processor's mapping thread holding the GIL, which the traced application
    needs too, so it does only what SQL cannot: read the span objects, tell the span type from its
    keys, and render prompt/completion text for spans that carry any.
    """

    def __init__(self, options: Options, resource_id: Callable[[str, str | None, str | None], int]) -> None:
        self._limit = options.max_content_length
        self._capture = options.capture_content
        self._resource_id = resource_id
        # Keyed by id(); the Resource is kept in the value so the id cannot be reused while cached.
        self._resources: dict[int, tuple[Any, int | None]] = {}

    def row(self, span: ReadableSpan) -> list[Any]:
        # The hottest Python in the package: it shares the GIL with the traced application.
        ctx = span.context
        parent = span.parent
        status = span.status
        scope = span.instrumentation_scope
        attrs = _attributes(span)
        if not self._capture:
            attrs = {k: v for k, v in attrs.items() if not is_content_key(k)}
        # The SDK's events/links properties copy under a lock even when empty; look first.
        raw_events = getattr(span, "_events", None)
        span_events = span.events if raw_events is None or len(raw_events) else ()
        raw_links = getattr(span, "_links", None)
        span_links = span.links if raw_links is None or len(raw_links) else ()
        events = _events(span_events, self._capture) if span_events else None
        links = _links(span_links) if span_links else None
        if self._capture:
            input_text, output_text = extract_text(attrs, span_events, self._limit)
        else:
            input_text = output_text = None
        message = status.description
        version = None if scope is None else scope.version
        # Bits as OPTIONAL_FLAGS lists them (spelled out: this line runs for every span).
        flags = (
            (parent is None or parent.is_remote)
            | (message is not None) << 1
            | (events is not None) << 2
            | (links is not None) << 3
            | (input_text is not None) << 4
            | (output_text is not None) << 5
            | (version is not None) << 6
        )
        resource = span.resource
        cached = self._resources.get(id(resource))
        resource_id = cached[1] if cached is not None and cached[0] is resource else self._resource(resource)
        name = span.name
        scope_name = "" if scope is None else scope.name or ""
        end = span.end_time
        return [
            f"{flags:04d}{ctx.trace_id:032x}{ctx.span_id:016x}"
            f"{_BLANK[16] if parent is None else format(parent.span_id, '016x')}"
            # Enum members' _value_ is a plain attribute; .value goes through a descriptor.
            f"{span.kind._value_}{status.status_code._value_}{_span_type(attrs)}{span.start_time:020d}"
            f"{_BLANK[20] if end is None else format(end, '020d')}"
            f"{_BLANK[10] if resource_id is None else format(resource_id, '010d')}"
            f"{len(name):06d}{name}{len(scope_name):06d}{scope_name}",
            attrs or None,
            message,
            events,
            links,
            input_text,
            output_text,
            version,
        ]

    def _resource(self, resource: Any) -> int | None:
        if resource is None:
            return None
        attrs = dict(resource.attributes)
        service = attrs.get("service.name")
        rid = self._resource_id(
            to_json(attrs),
            getattr(resource, "schema_url", None) or None,
            None if service is None else str(service),
        )
        if len(self._resources) > 256:
            self._resources.clear()
        self._resources[id(resource)] = (resource, rid)
        return rid


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    """The span's attributes as a plain dict, never one the application thread may still change."""
    raw = getattr(span, "_attributes", None)
    if raw is None:
        return {}
    if getattr(raw, "_immutable", False) and type(getattr(raw, "_dict", None)) is dict:
        return raw._dict  # frozen when the span ended: read it in place (it is never written to here)
    # A running span: BoundedAttributes.copy() is a C-level dict copy, atomic under the GIL.
    copy = getattr(raw, "copy", None)
    copied = copy() if copy is not None else None
    if isinstance(copied, dict):
        return copied
    for _ in range(3):
        try:
            return dict(span.attributes or {})
        except (RuntimeError, KeyError):
            continue
    return {}


def _span_type(attrs: Mapping[str, Any]) -> str:
    """The span type's code in SPAN_TYPES when its keys tell; a blank leaves it to SQL, which also
    knows the model and usage (a model call of an unknown dialect is an llm span)."""
    if _TYPE_KEYS.isdisjoint(attrs):
        return " "
    get = attrs.get
    for key, types in TYPE_BY_KEY:
        value = get(key)
        if value is not None:
            found = types.get(str(value).lower())
            if found is not None:
                return _TYPE_CODE[found]
    if get("gen_ai.tool.name") is not None:
        return _TYPE_CODE["tool"]
    return " "


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
        return "[" + ",".join(to_json(row) for row in rows) + "]"
    if len(text) > _ROW_CHECK_CHARS * max(1, len(rows)) // 8:
        return "[" + ",".join(to_json(row) for row in rows) + "]"
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
        # One replacement character per lone surrogate: lengths (the head's prefixes) stay true.
        return _SURROGATE.sub("\ufffd", value)
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
