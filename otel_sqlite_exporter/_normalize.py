"""Normalise: the table that maps every instrumentation dialect onto the normalised columns,
and span -> staged row.

This runs on the writer's mapping thread, once per span per batch, holding the GIL: it does one
pass over the attributes and packs the result for SQLite, which does everything else. Secrets are
redacted here too, before anything is written (``encode_rows``, and ``_redact``).
"""

from __future__ import annotations

import base64
import logging
import operator
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from types import SimpleNamespace
from typing import Any

import orjson
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan, Span
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanKind, Status

from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._content import NO_TEXT, extract_text, is_content_key, without_content
from otel_sqlite_exporter._redact import REDACTION_FAILED, Redactor, Rule, secret_value, walk

logger = logging.getLogger("otel_sqlite_exporter")

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
    "embedding.model_name",
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
# The provider's id of the response: one model call recorded by two instrumentations (the
# anthropic client's own span beside OpenLLMetry's, say) shares it, and is counted once.
RESPONSE_ID_KEYS = ("gen_ai.response.id",)
# Scopes of client libraries' own spans. When an instrumentation records the same call, its span is
# the one whose usage counts (it usually has more: content, cache tokens).
CLIENT_LIBRARY_SCOPES = ("com.anthropic.sdk.python",)

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
    "response_id": RESPONSE_ID_KEYS,
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
OPTIONAL_ELEMENTS = (
    "status_message",
    "events",
    "links",
    "input_text",
    "output_text",
    "scope_version",
    "reasoning_text",
)
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
# HEAD_LAYOUT for a span with a parent, an end and a resource (see SpanMapper.row).
_HEAD = "%04d%032x%016x%016x%d%d%s%020d%020d%010d%06d%s%06d%s"
_TYPE_KEYS = frozenset(key for key, _ in TYPE_BY_KEY) | {"gen_ai.tool.name"}
_TYPE_CODE = {span_type: str(code) for code, span_type in enumerate(SPAN_TYPES)}
# Span classes whose fields row() may read directly (not subclasses: they may override properties).
_SDK_SPAN_TYPES = frozenset({ReadableSpan, Span})
# Longest span or scope name stored (longer ones are shortened, as long attribute values are).
_MAX_NAME = 64 * 1024
_FIELDS = (
    "context", "parent", "status", "instrumentation_scope",
    "name", "kind", "start_time", "end_time", "resource",
)  # fmt: skip
_SDK_FIELDS = operator.itemgetter(*(f"_{field}" for field in (*_FIELDS, "attributes", "events", "links")))
_PROPERTIES = operator.attrgetter(*_FIELDS)


class SpanMapper:
    """Turns spans into staged rows (``ROW_ELEMENTS``); the normalising itself happens in SQL.

    This runs on the processor's mapping thread holding the GIL, which the traced application
    needs too, so it does only what SQL cannot: read the span objects, tell the span type from its
    keys, render prompt/completion text for spans that carry any, and redact secrets (``encode``).
    """

    def __init__(self, options: Options, resource_id: Callable[[str, str | None, str | None], int]) -> None:
        self._limit = options.max_content_length
        self._capture = options.capture_content
        self._resource_id = resource_id
        # Keyed by id(); the Resource is kept in the value so the id cannot be reused while cached.
        self._resources: dict[int, tuple[Any, int | None]] = {}
        self._redactor = Redactor.from_options(options)
        self._failures = 0

    @property
    def redactor(self) -> Redactor | None:
        """The redaction this mapper applies (None with ``redact=False`` and no patterns)."""
        return self._redactor

    def row(self, span: ReadableSpan) -> list[Any]:
        # The hottest Python in the package: it shares the GIL with the traced application.
        # The SDK's own spans are read through their fields: each property costs a call.
        if type(span) in _SDK_SPAN_TYPES:
            ctx, parent, status, scope, name, kind, start, end, resource, raw, raw_events, raw_links = (
                _SDK_FIELDS(span.__dict__)
            )
            # Ended: its attributes are frozen, and read in place (never written to here).
            attrs = raw._dict if type(raw) is BoundedAttributes and raw._immutable else _attributes(span)
        else:
            ctx, parent, status, scope, name, kind, start, end, resource = _PROPERTIES(span)
            attrs = _attributes(span)
            raw_events, raw_links = getattr(span, "_events", None), getattr(span, "_links", None)
        # SpanContext is a tuple: (trace_id, span_id, is_remote, ...).
        if not self._capture:
            attrs = {k: v for k, v in attrs.items() if not is_content_key(k)}
        # The SDK's events/links properties copy even when empty; look first.
        span_events = span.events if _maybe_some(raw_events) else ()
        span_links = span.links if _maybe_some(raw_links) else ()
        events = _events(span_events, self._capture, self._redactor) if span_events else None
        links = _links(span_links, self._redactor) if span_links else None
        input_text, output_text, reasoning_text = (
            extract_text(attrs, span_events, self._limit) if self._capture else NO_TEXT
        )
        message = status._description if type(status) is Status else status.description
        version = None if scope is None else scope.version
        # Bits as OPTIONAL_FLAGS lists them (spelled out: this line runs for every span).
        flags = (
            (parent is None or parent[2])
            | (message is not None) << 1
            | (events is not None) << 2
            | (links is not None) << 3
            | (input_text is not None) << 4
            | (output_text is not None) << 5
            | (version is not None) << 6
            | (reasoning_text is not None) << 7
        )
        cached = self._resources.get(id(resource))
        rid = cached[1] if cached is not None and cached[0] is resource else self.resource_id(resource)
        scope_name = "" if scope is None else scope.name or ""
        if len(name) > _MAX_NAME or len(scope_name) > _MAX_NAME:  # their lengths travel in six digits
            name, scope_name = _shorten(name, _MAX_NAME), _shorten(scope_name, _MAX_NAME)
        # Enum members' _value_ is a plain attribute; .value goes through a descriptor.
        if parent is not None and end is not None and rid is not None:
            # The usual span: one %-format, a third cheaper than the f-string's format specs.
            head = _HEAD % (
                flags, ctx[0], ctx[1], parent[1], kind._value_, status.status_code._value_,
                _span_type(attrs), start, end, rid, len(name), name, len(scope_name), scope_name,
            )  # fmt: skip
        else:
            head = (
                f"{flags:04d}{ctx[0]:032x}{ctx[1]:016x}"
                f"{_BLANK[16] if parent is None else format(parent[1], '016x')}"
                f"{kind._value_}{status.status_code._value_}{_span_type(attrs)}{start:020d}"
                f"{_BLANK[20] if end is None else format(end, '020d')}"
                f"{_BLANK[10] if rid is None else format(rid, '010d')}"
                f"{len(name):06d}{name}{len(scope_name):06d}{scope_name}"
            )
        return [
            head,
            attrs or None,
            message,
            events,
            links,
            input_text,
            output_text,
            version,
            reasoning_text,
        ]

    def resource_id(self, resource: Any) -> int | None:
        """The resource's row id (its attributes redacted), stored through the callback once."""
        if resource is None:
            return None
        attrs = dict(resource.attributes)
        if self._redactor is not None:
            attrs = self._redactor.attributes(attrs)
        service = attrs.get("service.name")
        schema_url = getattr(resource, "schema_url", None) or None
        rid = self._resource_id(
            to_json(attrs),
            None if schema_url is None else _text(schema_url),
            None if service is None else _text(service),
        )
        if len(self._resources) > 256:
            self._resources.clear()
        self._resources[id(resource)] = (resource, rid)
        return rid

    # -- redaction ----------------------------------------------------------------------------------

    def redact_text(self, text: str | None) -> str | None:
        """A text written beside the spans (a session's task, say), redacted as theirs are."""
        if text is None or self._redactor is None:
            return text
        return self._redactor.text(text)

    def encode(self, rows: list[list[Any]]) -> str:
        """The batch document for these rows (see ``encode_rows``), redacted; never raises."""
        text = encode_rows(rows)
        if self._redactor is None:
            return text
        try:
            return self._redacted(rows, text)
        except Exception:  # a bug here must neither stop the writer nor leak text
            self._failures += 1
            if self._failures == 1:
                logger.exception(
                    "otel-sqlite-exporter could not redact a batch; its texts are stored as %s",
                    REDACTION_FAILED,
                )
            return encode_rows([row for row in map(_failed_row, rows) if row is not None])

    def _redacted(self, rows: list[list[Any]], text: str) -> str:
        """Cheap for the usual batch without secrets: one set union of the attribute keys and a
        scan of the document (see ``Redactor.scan``); only rows that may hold one are rebuilt."""
        redactor = self._redactor
        assert redactor is not None
        secret = (
            redactor.secret_keys(set().union(*filter(None, map(_ROW_ATTRIBUTES, rows))))
            if redactor.names
            else frozenset()
        )
        rules = redactor.scan(text)
        if not rules and not secret:
            return text
        # Rules that need no look at a row (a user callable, a pattern without literal) apply to all.
        everywhere = redactor.function(rules) if rules and all(rule.always for rule in rules) else None
        functions: dict[tuple[Rule, ...], Callable[[str], str]] = {}
        out = rows
        for index, row in enumerate(rows):
            attrs = row[1]
            keys = secret if secret and attrs and not secret.isdisjoint(attrs) else None
            redact = everywhere
            if redact is None and rules:
                row_rules = redactor.scan(to_json(row), rules)
                if row_rules:
                    redact = functions.get(row_rules)
                    if redact is None:
                        redact = functions[row_rules] = redactor.function(row_rules)
            if keys or redact is not None:
                if out is rows:
                    out = list(rows)
                out[index] = self._redact_row(row, redact, keys)
        return text if out is rows else encode_rows(out)

    def _redact_row(
        self, row: list[Any], redact: Callable[[str], str] | None, keys: frozenset[str] | None
    ) -> list[Any]:
        """A new row with its strings redacted; the span's own attribute dict is never changed."""
        new = list(row)
        attrs = row[1]
        if attrs:
            new[1] = _redacted_attributes(attrs, redact, keys or frozenset())
        if redact is None:  # secret-named keys only
            return new
        new[0] = _head_with_names(row[0], redact)
        for index in (2, 7):  # status_message, scope_version
            if isinstance(row[index], str):
                new[index] = redact(row[index])
        if row[3] is not None:
            new[3] = walk(row[3], redact)
        if row[4] is not None:
            new[4] = [{**link, "attributes": walk(link["attributes"], redact)} for link in row[4]]
        if row[5] is not None or row[6] is not None or row[8] is not None:
            new[5], new[6], new[8] = self._texts(row, redact)
        return new

    def _texts(self, row: list[Any], redact: Callable[[str], str]) -> list[str | None]:
        """input, output and reasoning text redacted. A text cut to max_content_length may have cut a
        secret short of what its rule recognises: such a text is taken again whole, redacted, then cut."""
        texts = [row[5], row[6], row[8]]
        limit = self._limit
        if limit and any(isinstance(t, str) and len(t) == limit for t in texts):
            events = [SimpleNamespace(name=e["name"], attributes=e["attributes"]) for e in row[3] or ()]
            whole = extract_text(row[1] or {}, events, sys.maxsize)
            texts = [
                w if isinstance(t, str) and len(t) == limit and w else t
                for t, w in zip(texts, whole, strict=True)
            ]
        out = [None if t is None else redact(t) for t in texts]
        return [None if t is None else t[:limit] if len(t) > limit else t for t in out]


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


def _maybe_some(raw: Any) -> bool:
    """False when the SDK's list of events or links is known to be empty."""
    if type(raw) is BoundedList:
        return bool(raw._dq)  # its __len__ is a Python call; the deque's is not
    return raw is None or bool(len(raw))


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


def _events(events: Sequence[Any], capture: bool, redactor: Redactor | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in _consolidated(events) if len(events) > 1 else events:
        attrs = dict(event.attributes or {})
        if not capture:
            attrs = without_content(attrs)
        if redactor is not None and attrs:
            attrs = dict(redactor.secret_attributes(attrs))
        out.append({"name": event.name, "time_unix_nano": event.timestamp, "attributes": attrs})
    return out


def _consolidated(events: Sequence[Any]) -> list[Any]:
    """The events with each run of consecutive stream-chunk events (a name ending in "chunk", one
    event per streamed chunk) made one: at the first chunk's time, with ``chunk_count``, the last
    chunk's time, and each attribute's texts joined in order (other values: the last one)."""
    out: list[Any] = []
    run: list[Any] = []
    for event in [*events, None]:
        if run and (event is None or event.name != run[0].name):
            out.extend(run if len(run) == 1 else [_chunk_run(run)])
            run = []
        if event is None:
            break
        if event.name.lower().endswith("chunk"):
            run.append(event)
        else:
            out.append(event)
    return out


def _chunk_run(run: list[Any]) -> SimpleNamespace:
    attrs: dict[str, Any] = {}
    for event in run:
        for key, value in (event.attributes or {}).items():
            previous = attrs.get(key)
            attrs[key] = previous + value if isinstance(previous, str) and isinstance(value, str) else value
    attrs["chunk_count"] = len(run)
    attrs["last_time_unix_nano"] = run[-1].timestamp
    return SimpleNamespace(name=run[0].name, timestamp=run[0].timestamp, attributes=attrs)


def _links(links: Sequence[Any], redactor: Redactor | None = None) -> list[dict[str, Any]]:
    out = []
    for link in links:
        attrs = dict(link.attributes or {})
        if redactor is not None and attrs:
            attrs = dict(redactor.secret_attributes(attrs))
        out.append(
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": attrs,
            }
        )
    return out


def _redacted_attributes(
    attrs: Mapping[str, Any], redact: Callable[[str], str] | None, secret: frozenset[str]
) -> dict[str, Any]:
    out = {}
    for key, item in attrs.items():
        if key in secret:
            out[key] = secret_value(item)
        elif redact is None:
            out[key] = item
        elif type(item) is str:  # most values: spare the call to walk()
            out[key] = redact(item)
        else:
            out[key] = walk(item, redact)
    return out


def _head_with_names(head: str, change: Callable[[str], str]) -> str:
    """The head with its span name and scope name (length-prefixed, see HEAD_NAME_AT) changed."""
    at = HEAD_NAME_AT - 1
    name_end = at + 6 + int(head[at : at + 6])
    name = head[at + 6 : name_end]
    scope = head[name_end + 6 : name_end + 6 + int(head[name_end : name_end + 6])]
    new_name, new_scope = change(name), change(scope)
    if new_name == name and new_scope == scope:
        return head
    return f"{head[:at]}{len(new_name):06d}{new_name}{len(new_scope):06d}{new_scope}"


def _failed_row(row: list[Any]) -> list[Any] | None:
    """The row with every string it carries replaced, or None (the span is then not stored)."""
    try:
        return [_head_with_names(row[0], _failed), *map(_failed_value, row[1:])]
    except Exception:  # noqa: BLE001
        return None


def _failed(_: str) -> str:
    return REDACTION_FAILED


def _failed_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str) or (depth > _MAX_NESTING and isinstance(value, (list, tuple, Mapping))):
        return REDACTION_FAILED
    if isinstance(value, (list, tuple)):
        return [_failed_value(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {k: _failed_value(v, depth + 1) for k, v in value.items()}
    return value


# Above this many characters a row is checked for oversized values (see MAX_JSON_CHARS).
_ROW_CHECK_CHARS = 64 * 1024
# Containers nested deeper than this, counted from the value encoded, are cut there (see _sanitize):
# orjson refuses deeper lists and dicts, and the careful path must not exhaust the stack.
_MAX_NESTING = 250
_CUT_NESTING = "...[deeper levels not stored]"
# The row elements the writer reads out of the document as text (``->>``): SQLite before 3.45 ends
# such a text at its first NUL character, so there a NUL becomes U+FFFD (one character for one: the
# head's length prefixes stay true). Attributes, events and links are read as JSON and keep theirs.
_READ_AS_TEXT = (
    0,
    *(ROW_ELEMENTS.index(name) for name in OPTIONAL_ELEMENTS if name not in ("events", "links")),
)
_READ_AS_TEXT_ELEMENTS = operator.itemgetter(*_READ_AS_TEXT)


_ROW_ATTRIBUTES = operator.itemgetter(1)


def encode_rows(rows: list[list[Any]]) -> str:
    """The batch as one JSON array of rows; never raises.

    The fast path is a single orjson call. Rows it cannot encode (lone surrogates, huge integers,
    deep nesting) or that are oversized are re-encoded one by one through the careful path; a row
    even that cannot encode is left out (its span is not stored).
    """
    text = _batch_json(rows)
    # A NUL anywhere shows as an escape in the document: one C-level scan, and the rare batch
    # with a NUL in an element read as text is encoded again without it.
    if "\\u0000" in text and _nul_in_texts(rows):
        text = _batch_json([_without_nul(row) for row in rows])
    return text


def _batch_json(rows: list[list[Any]]) -> str:
    try:
        text = orjson.dumps(rows, default=_default).decode()
    except TypeError:  # orjson.JSONEncodeError included
        return _one_by_one(rows)
    if len(text) > _ROW_CHECK_CHARS * max(1, len(rows)) // 8:
        return _one_by_one(rows)
    return text


def _one_by_one(rows: list[list[Any]]) -> str:
    return "[" + ",".join(filter(None, map(_row_json, rows))) + "]"


def _row_json(row: list[Any]) -> str | None:
    """One row through the careful path; an oversized row has its longest strings shortened, all
    but the head's (its names are length-prefixed, and SpanMapper keeps them short)."""
    try:
        text = _encoded(row)
        if len(text) > MAX_JSON_CHARS:
            limit = MAX_JSON_CHARS // 4
            text = _dumps([_sanitize(row[0]), *(_shorten(_sanitize(v), limit) for v in row[1:])])
        return text
    except Exception:  # noqa: BLE001 - one unencodable span must not cost the batch
        return None


def _nul_in_texts(rows: list[list[Any]]) -> bool:
    try:
        return "\x00" in "".join(filter(None, chain.from_iterable(map(_READ_AS_TEXT_ELEMENTS, rows))))
    except Exception:  # noqa: BLE001 - an element of an unexpected type: _without_nul looks closer
        return True


def _without_nul(row: list[Any]) -> list[Any]:
    out = list(row)
    for index in _READ_AS_TEXT:
        value = out[index] if index < len(out) else None
        if isinstance(value, str) and "\x00" in value:
            out[index] = value.replace("\x00", "\ufffd")
    return out


def to_json(value: Any) -> str:
    """JSON text for any attribute-shaped value; never raises.

    Tuples become arrays, NaN and infinities become null, bytes become ``{"$bytes": base64}``, and
    anything else JSON cannot hold (lone surrogates, huge integers, unknown objects) becomes text.
    Containers nested more than ``_MAX_NESTING`` deep are cut there; a text longer than
    ``MAX_JSON_CHARS`` has its longest strings shortened.
    """
    try:
        text = _encoded(value)
        if len(text) > MAX_JSON_CHARS:
            text = _dumps(_shorten(_sanitize(value), MAX_JSON_CHARS // 4))
        return text
    except Exception:  # noqa: BLE001 - a value whose own methods fail (its str(), its items())
        return "null"


def _encoded(value: Any) -> str:
    try:
        return _dumps(value)
    except TypeError:  # orjson.JSONEncodeError included
        pass
    try:
        clean = _sanitize(value)
    except RecursionError:  # called with the stack deep already: cut much sooner
        clean = _sanitize(value, 16)
    return _dumps(clean)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=_default).decode()


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, Mapping):  # read-only views, BoundedAttributes: as the dicts they are
        return dict(value)
    return str(value)


def _sanitize(value: Any, depth: int = _MAX_NESTING) -> Any:
    """The value as orjson encodes it whatever it holds: text without lone surrogates, integers
    within 64 bits, plain lists and dicts nested at most ``depth`` deep (deeper ones are cut)."""
    if isinstance(value, str):
        # One replacement character per lone surrogate: lengths (the head's prefixes) stay true.
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return value
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        if depth <= 0:
            return _CUT_NESTING
        # Loops, not comprehensions: one frame per level (3.11 gives a comprehension a frame too).
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                out[_text(key)] = _sanitize(item, depth - 1)
            return out
        items = []
        for item in value:
            items.append(_sanitize(item, depth - 1))
        return items
    return _text(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:  # noqa: BLE001 - its __str__ fails (or recurses without end)
            value = f"<{type(value).__name__}>"
    return _SURROGATE.sub("\ufffd", value)


def _shorten(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"...[{len(value) - limit} more characters not stored]"
    # Loops, not comprehensions, as in _sanitize (whose output this takes).
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out[key] = _shorten(item, limit)
        return out
    if isinstance(value, list):
        items = []
        for item in value:
            items.append(_shorten(item, limit))
        return items
    return value
