"""Bad input, fuzzed: whatever spans carry, the writer stores them and never stops.

Spans with every attribute type OpenTelemetry allows (and the SDK's structured values), lone
surrogates, NUL characters, NaN and infinities, 64-bit edges, deep nesting, parents that never
arrive, duplicate span ids, ends before starts and clocks far apart go through
``SQLiteSpanExporter.export()`` and ``SQLiteSpanProcessor`` into real files, and are read back
through ``TraceStore`` and SQL. What they must read back as is the documented stored form
(docs/normalization.md, "Attribute values"), spelled out here on its own, not taken from the code
under test.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from helpers import query
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otel_sqlite_exporter import SQLiteSpanExporter, SQLiteSpanProcessor, TraceStore

FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


RESOURCE = Resource.create({"service.name": "fuzz"})
CONTENT_LIMIT = 4096  # the default max_content_length
# Keys the fuzzed attributes stay away from: they name sessions, span types, content or usage, each
# fuzzed on purpose below rather than by chance.
RESERVED_PREFIXES = (
    "gen_ai.",
    "llm.",
    "session.",
    "user.",
    "enduser.",
    "traceloop.",
    "langfuse.",
    "openinference.",
    "input.",
    "output.",
    "embedding.",
)
INPUT_TOKEN_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
OUTPUT_TOKEN_KEYS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
)
TOKEN_KEYS = {
    "input_tokens": INPUT_TOKEN_KEYS,
    "output_tokens": OUTPUT_TOKEN_KEYS,
    "cache_read_tokens": ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"),
    "reasoning_tokens": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens"),
}
COST_KEY = "llm.cost.total"
MODEL_KEY = "gen_ai.request.model"
UNPRICED_MODEL = "fuzz-model"  # no price: a span's cost is its explicit one only
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens")

_trace_numbers = itertools.count(1)


# -- the documented stored form ----------------------------------------------------------------------

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def stored_text(text: str) -> str:
    """A string as attributes, events and links keep it: lone surrogates become U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def stored_column_text(text: str) -> str:
    """A string read into its own column (span name, status message, scope, texts): NUL too."""
    return stored_text(text).replace("\x00", "\ufffd")


# A row's nesting is cut 250 levels deep: an attribute value (inside the row and its attributes)
# keeps 248 levels, an event's or a link's (row, list, event or link, attributes) 246.
KEPT_LEVELS = 248
KEPT_LEVELS_INSIDE = 246
CUT = "...[deeper levels not stored]"


def stored_form(value: Any, levels: int = KEPT_LEVELS) -> Any:
    """An attribute value as it reads back: sequences as lists, NaN and infinities as null, bytes as
    ``{"$bytes": base64}``, integers beyond 64 bits as text, lone surrogates as U+FFFD, nesting
    beyond ``levels`` cut."""
    if isinstance(value, str):
        return stored_text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple, Mapping)) and levels == 0:
        return CUT
    if isinstance(value, (list, tuple)):
        items = []
        for item in value:
            items.append(stored_form(item, levels - 1))
        return items
    if isinstance(value, Mapping):
        return stored_attributes(value, levels - 1)
    raise AssertionError(f"not an attribute value: {value!r}")


def stored_attributes(attributes: Mapping[str, Any], levels: int = KEPT_LEVELS) -> dict[str, Any]:
    """Attributes as they read back, each value as ``stored_form`` has it. Keys that become equal
    (two lone surrogates) are one key: the later value."""
    out: dict[str, Any] = {}
    for key, item in attributes.items():
        out[stored_text(key)] = stored_form(item, levels)
    return out


def stored_count(value: Any) -> int | None:
    """A token count as its column holds it: a non-negative whole number (an integer, an integral
    float, digits with spaces around them) below 10**18, else NULL."""
    stored = stored_form(value)
    if isinstance(stored, bool) or stored is None:
        return None
    if isinstance(stored, int):
        return stored if 0 <= stored < 10**18 else None
    if isinstance(stored, float):
        return int(stored) if 0 <= stored < 1e18 and stored == int(stored) else None
    if isinstance(stored, str):
        digits = stored.strip(" ")
        return int(digits) if re.fullmatch("[0-9]{1,18}", digits) else None
    return None


def stored_cost(value: Any) -> float | None:
    """An explicit cost as ``cost_usd`` holds it: a number >= 0 (or such a number as text), else NULL."""
    stored = stored_form(value)
    if isinstance(stored, bool) or stored is None:
        return None
    if isinstance(stored, (int, float)):
        return float(stored) if stored >= 0 else None
    if isinstance(stored, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", stored.strip(" ")):
        return float(stored.strip(" "))
    return None


def looked_at(value: Any) -> bool:
    """Whether the normalisation sees a key at all: null, arrays, objects and empty text count as
    absent, and the next key in the table's order is taken."""
    stored = stored_form(value)
    return not (stored is None or stored == "" or isinstance(stored, (list, dict)))


def normalised(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The normalised usage columns of a span with these attributes."""
    out: dict[str, Any] = {}
    for column, keys in TOKEN_KEYS.items():
        first = next((key for key in keys if key in attributes and looked_at(attributes[key])), None)
        out[column] = None if first is None else stored_count(attributes[first])
    explicit = (
        stored_cost(attributes[COST_KEY])
        if COST_KEY in attributes and looked_at(attributes[COST_KEY])
        else None
    )
    out["explicit_cost"] = explicit
    out["model"] = UNPRICED_MODEL if attributes.get(MODEL_KEY) == UNPRICED_MODEL else None
    out["has_usage"] = explicit is not None or any(out[c] is not None for c in TOKEN_COLUMNS)
    return out


# -- span shapes ---------------------------------------------------------------------------------------

ROOT, REMOTE, LOCAL = "root", "remote", "local"


@dataclass(frozen=True)
class Version:
    """One state of a span, as one export (or one on_start/on_end) hands it over."""

    name: str
    kind: SpanKind
    start: int
    end: int | None
    status: StatusCode
    description: str | None
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any], int], ...]
    links: tuple[tuple[int, int, dict[str, Any]], ...]
    scope: tuple[str, str | None] | None


@dataclass(frozen=True)
class Shape:
    """Spans of a few traces: ``versions`` in the order they are handed over, several of them for
    a span id used twice; ``parents`` and ``usage`` per (trace index, span id)."""

    versions: tuple[tuple[tuple[int, int], Version], ...]
    parents: dict[tuple[int, int], tuple[str, int]]
    usage: dict[tuple[int, int], dict[str, Any]]
    cuts: tuple[int, ...]  # where the versions are split into export() calls


_surrogates = st.characters(categories=["Cs"])
_characters = st.one_of(
    st.characters(), _surrogates, st.sampled_from(["\x00", "\\", '"', "\n", "\u2028", "\U0001f600", "é"])
)
texts = st.text(_characters, max_size=10)
keys = st.one_of(st.sampled_from(["", "a", "app.value", "http.status_code", "k" * 300]), texts).filter(
    lambda key: not key.startswith(RESERVED_PREFIXES)
)
EDGE_INTS = (
    0,
    1,
    -1,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**63,
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**30,
    -(10**40),
)
ints = st.one_of(st.integers(), st.sampled_from(EDGE_INTS))
EDGE_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 1e18, 0.1)
floats = st.one_of(st.floats(), st.sampled_from(EDGE_FLOATS))
scalars = st.one_of(texts, st.booleans(), ints, floats)
homogeneous = st.one_of(
    *(st.lists(kind, max_size=4).map(tuple) for kind in (texts, st.booleans(), ints, floats))
)
leaves = st.one_of(scalars, st.binary(max_size=8), st.none())


def structured(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3).map(tuple) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=8,
    )


def _nest(depth: int, as_dict: bool) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value} if as_dict else (value, 1)
    return value


# Deep, within what the writer keeps whole; and mappings past the cut (orjson refuses them, so the
# careful path always takes them: tuple chains of such depth would be cut only there, not always).
deep = st.builds(_nest, st.integers(1, 120), st.booleans())
too_deep = st.builds(_nest, st.integers(260, 480), st.just(True))
values = st.one_of(scalars, homogeneous, structured(texts), deep, too_deep)
attribute_dicts = st.dictionaries(keys, values, max_size=5)
INT64 = st.integers(-(2**63), 2**63 - 1)
times = st.one_of(
    st.integers(0, 2**63 - 1), st.sampled_from([0, 1, -1, -(2**63), 2**63 - 1, 1_795_342_153_997_205_636])
)
token_values = st.one_of(
    st.integers(-5, 10**6),
    st.sampled_from([0, 10**18 - 1, 10**18, 2**63, 2**64, 10**30, -(2**63), True, False]),
    st.integers(0, 2**53).map(float),
    st.sampled_from([math.nan, math.inf, -1.0, -0.0, 1e18, 1e300, 2.5, 0.1, 1e17 + 0.5]),
    st.floats(0, 1e6),
    st.from_regex(r"\A ?[0-9]{1,20} ?\Z"),
    st.sampled_from(["", " ", "12a", "1e3", "+5", "-5", "3.0", "\u0663", "lots"]),
    st.lists(st.integers(0, 9), max_size=2).map(tuple),
    st.binary(max_size=2),
)
cost_values = st.one_of(
    st.floats(0, 1000), st.sampled_from([-1.0, math.nan, 7, -3, "0.25", " 3 ", "abc", "-1", "1,5", ""])
)


@st.composite
def usage_dicts(draw: st.DrawFn) -> dict[str, Any]:
    usage: dict[str, Any] = {}
    for column_keys in TOKEN_KEYS.values():
        for key in draw(st.lists(st.sampled_from(column_keys), max_size=2, unique=True)):
            usage[key] = draw(token_values)
    if draw(st.booleans()):
        usage[MODEL_KEY] = UNPRICED_MODEL
    if draw(st.integers(0, 3)) == 0:
        usage[COST_KEY] = draw(cost_values)
    return usage


@st.composite
def versions(draw: st.DrawFn) -> Version:
    start = draw(times)
    end = draw(
        st.one_of(
            # Ends before starts and clocks far apart, within the 64-bit range.
            st.integers(-(10**12), 10**12).map(lambda d: max(-(2**63), min(2**63 - 1, start + d))),
            INT64,
            st.none(),  # a start row, or a span exported before it ended
        )
    )
    status = draw(st.sampled_from(list(StatusCode)))
    description = draw(st.one_of(st.none(), texts))
    return Version(
        name=draw(texts),
        kind=draw(st.sampled_from(list(SpanKind))),
        start=start,
        end=end,
        status=status,
        # The SDK keeps a description for ERROR only (and an empty one for any status).
        description=description if status is StatusCode.ERROR or description == "" else None,
        attributes=draw(attribute_dicts),
        events=tuple(
            draw(
                st.lists(
                    st.tuples(
                        # A name ending in "chunk" is a stream chunk, which is stored merged (tested
                        # in test_normalization); GenAI event names are content.
                        texts.filter(
                            lambda n: not n.lower().endswith("chunk") and not n.startswith("gen_ai.")
                        ),
                        attribute_dicts,
                        INT64,
                    ),
                    max_size=2,
                )
            )
        ),
        links=tuple(
            draw(
                st.lists(
                    st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), attribute_dicts),
                    max_size=2,
                )
            )
        ),
        scope=draw(st.none() | st.tuples(texts, st.none() | texts)),
    )


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    traces = draw(st.integers(1, 3))
    span_ids = draw(st.lists(st.integers(1, 2**64 - 1), min_size=1, max_size=6, unique=True))
    order = draw(
        st.lists(st.tuples(st.integers(0, traces - 1), st.sampled_from(span_ids)), min_size=1, max_size=9)
    )
    parents: dict[tuple[int, int], tuple[str, int]] = {}
    usage: dict[tuple[int, int], dict[str, Any]] = {}
    handed: list[tuple[tuple[int, int], Version]] = []
    for key in order:
        if key not in parents:
            # A parent among the example's ids (itself, a sibling, one that never arrives in this
            # trace) or any other id, remote or not; one set per span, its usage too, so that every
            # version of a span agrees on where its usage counts.
            kind = draw(st.sampled_from([ROOT, REMOTE, LOCAL, LOCAL]))
            parent_id = draw(st.sampled_from(span_ids) | st.integers(1, 2**64 - 1))
            parents[key] = (kind, parent_id)
            usage[key] = draw(usage_dicts())
        handed.append((key, draw(versions())))
    cuts = tuple(sorted(draw(st.lists(st.integers(1, max(1, len(handed) - 1)), max_size=2, unique=True))))
    # One string past the writer's per-row check (64 KiB, a batch's share of it) in some examples:
    # the batch then goes through the careful path, row by row.
    big = draw(st.sampled_from([None, None, None, None, 300_000]))
    if big is not None:
        index = draw(st.integers(0, len(handed) - 1))
        key, version = handed[index]
        handed[index] = (
            key,
            replace(version, attributes={**version.attributes, "big": "x\x00\ud800y" * (big // 4)}),
        )
    return Shape(tuple(handed), parents, usage, cuts)


# -- building the spans and what they must read back as ----------------------------------------------


def trace_ids(shape: Shape) -> list[int]:
    """Trace ids no other example uses (the file is shared by all examples of a test)."""
    number = next(_trace_numbers)
    return [
        (number << 72 | index << 64) + 0x5EED for index in range(1 + max(k[0] for k, _ in shape.versions))
    ]


def readable_span(
    trace_id: int, span_id: int, parent: tuple[str, int], usage: dict[str, Any], v: Version
) -> ReadableSpan:
    kind, parent_id = parent
    return ReadableSpan(
        name=v.name,
        context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)),
        parent=None if kind == ROOT else SpanContext(trace_id, parent_id, is_remote=kind == REMOTE),
        resource=RESOURCE,
        attributes={**v.attributes, **usage},
        events=[Event(name, attrs, timestamp=at) for name, attrs, at in v.events],
        links=[Link(SpanContext(t, s, is_remote=False), attrs) for t, s, attrs in v.links],
        kind=v.kind,
        status=Status(v.status, v.description),
        start_time=v.start,
        end_time=v.end,
        instrumentation_scope=None if v.scope is None else InstrumentationScope(*v.scope),
    )


@dataclass(frozen=True)
class Expected:
    trace_id: str
    span_id: str
    parent: tuple[str, int]
    version: Version
    usage: dict[str, Any]

    @property
    def attributes(self) -> dict[str, Any]:
        return {**self.version.attributes, **self.usage}


def winners(
    shape: Shape, ids: list[int], stored_order: Sequence[tuple[tuple[int, int], Version]]
) -> dict[tuple[str, str], Expected]:
    """The version of each span the file holds: the last one handed over that ended, else the last
    (a later start row never overwrites a completed span)."""
    out: dict[tuple[str, str], Expected] = {}
    for key, version in stored_order:
        trace_index, span_id = key
        ident = (f"{ids[trace_index]:032x}", f"{span_id:016x}")
        held = out.get(ident)
        if held is None or version.end is not None or held.version.end is None:
            out[ident] = Expected(*ident, shape.parents[key], version, shape.usage[key])
    return out


def counted(spans: dict[tuple[str, str], Expected]) -> set[tuple[str, str]]:
    """The spans whose usage enters the rollups: those with usage and none beneath them. Every
    ancestor of a span with usage is passed over, following local parents up (and round a loop of
    parent ids once: a span its own ancestor is passed over too)."""
    with_usage = {key for key, span in spans.items() if normalised(span.attributes)["has_usage"]}
    below: set[tuple[str, str]] = set()
    for trace_id, span_id in with_usage:
        current = spans[(trace_id, span_id)]
        seen: set[tuple[str, str]] = set()
        while current.parent[0] == LOCAL:
            ancestor = (trace_id, f"{current.parent[1]:016x}")
            if ancestor in seen:
                break
            seen.add(ancestor)
            below.add(ancestor)
            if ancestor not in spans:
                break  # never arrived: nothing known above it
            current = spans[ancestor]
    return with_usage - below


def expected_events(v: Version) -> list[dict[str, Any]]:
    return [
        {
            "name": stored_text(name),
            "time_unix_nano": stored_form(at),
            "attributes": stored_attributes(attrs, KEPT_LEVELS_INSIDE),
        }
        for name, attrs, at in v.events
    ]


def expected_links(v: Version) -> list[dict[str, Any]]:
    return [
        {
            "trace_id": f"{t:032x}",
            "span_id": f"{s:016x}",
            "attributes": stored_attributes(attrs, KEPT_LEVELS_INSIDE),
        }
        for t, s, attrs in v.links
    ]


def check_stored(path: Path, store: TraceStore, spans: dict[tuple[str, str], Expected]) -> None:
    """Every span once, each field as documented; rollups equal the sums of the counted spans."""
    traces = sorted({trace_id for trace_id, _ in spans})
    marks = ",".join("?" * len(traces))
    rows = query(
        path,
        f"SELECT trace_id, span_id, count(*) FROM spans WHERE trace_id IN ({marks}) GROUP BY 1, 2",
        traces,
    )
    assert {(t, s): n for t, s, n in rows} == dict.fromkeys(spans, 1)
    in_rollups = counted(spans)
    for (trace_id, span_id), want in spans.items():
        entry = store.get_span(span_id, trace_id)
        assert entry is not None
        v = want.version
        usage = normalised(want.attributes)
        kind, parent_id = want.parent
        assert (entry.trace_id, entry.id) == (trace_id, span_id)
        assert entry.parent_id == (None if kind == ROOT else f"{parent_id:016x}")
        assert entry.is_root is (kind != LOCAL)
        assert entry.session_id == trace_id  # no session key: each trace is its own session
        assert entry.name == stored_column_text(v.name)
        assert entry.kind == v.kind.name.lower()
        assert (entry.start_time_unix_nano, entry.end_time_unix_nano) == (v.start, v.end)
        # Stored as given, even an end before the start: the duration is then negative.
        assert entry.duration_ms == (
            None if v.end is None else pytest.approx((v.end - v.start) / 1e6, rel=1e-12)
        )
        assert entry.status == ("running" if v.end is None else v.status.name.lower())
        assert entry.status_message == (None if v.description is None else stored_column_text(v.description))
        assert entry.attributes == stored_attributes(want.attributes)
        assert entry.events == expected_events(v)
        assert entry.links == expected_links(v)
        assert entry.scope_name == (stored_column_text(v.scope[0]) or None if v.scope else None)
        assert entry.scope_version == (
            None if v.scope is None or v.scope[1] is None else stored_column_text(v.scope[1])
        )
        assert entry.model == usage["model"]
        assert [getattr(entry, c) for c in TOKEN_COLUMNS] == [usage[c] for c in TOKEN_COLUMNS]
        assert entry.cost_usd == usage["explicit_cost"]
        has_tokens = any(usage[c] is not None for c in TOKEN_COLUMNS)
        assert entry.type == ("llm" if usage["model"] and has_tokens else "span")
        assert entry.counted is ((trace_id, span_id) in in_rollups)
    for trace_id in traces:
        mine = {key: span for key, span in spans.items() if key[0] == trace_id}
        counts = [normalised(mine[key].attributes) for key in mine if key in in_rollups]
        sums = [sum(c[column] or 0 for c in counts) for column in TOKEN_COLUMNS]
        costs = [c["explicit_cost"] for c in counts if c["explicit_cost"] is not None]
        errors = sum(span.version.status is StatusCode.ERROR for span in mine.values())
        columns = f"span_count, error_count, {', '.join(TOKEN_COLUMNS)}, cost_usd"
        for table, key in (("traces", "trace_id"), ("sessions", "session_id")):
            ((*got, cost),) = query(path, f"SELECT {columns} FROM {table} WHERE {key} = ?", [trace_id])
            assert got == [len(mine), errors, *sums]
            assert cost == (pytest.approx(sum(costs)) if costs else None)
        tree = store.session_tree(trace_id)
        assert {(t.trace_id, node.entry.id) for t, _, node in tree.walk()} == set(mine)
        assert (tree.input_tokens, tree.output_tokens) == (sums[0], sums[1])


@pytest.fixture
def store_for(tmp_path: Path) -> Iterator[Callable[[Path], TraceStore]]:
    opened: list[TraceStore] = []

    def open_(path: Path) -> TraceStore:
        opened.append(TraceStore(path))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


def ordinary(trace_id: int, name: str = "ordinary") -> ReadableSpan:
    return ReadableSpan(
        name=name,
        context=SpanContext(trace_id, 1, is_remote=False),
        resource=RESOURCE,
        attributes={"ok": True},
        start_time=1,
        end_time=2,
    )


# -- the properties ------------------------------------------------------------------------------------


def test_export_stores_every_span_as_documented(
    tmp_path: Path, store_for: Callable[[Path], TraceStore]
) -> None:
    path = tmp_path / "export.db"
    exporter = SQLiteSpanExporter(path, redact=False)
    assert exporter.export([ordinary(1)]) is SpanExportResult.SUCCESS
    store = store_for(path)

    @fuzz(120)
    @given(shapes())
    def export(shape: Shape) -> None:
        ids = trace_ids(shape)
        spans = [
            readable_span(ids[k[0]], k[1], shape.parents[k], shape.usage[k], v) for k, v in shape.versions
        ]
        for batch in (spans[a:b] for a, b in itertools.pairwise((0, *shape.cuts, len(spans)))):
            assert exporter.export(batch) is SpanExportResult.SUCCESS
        check_stored(path, store, winners(shape, ids, shape.versions))

    try:
        export()
        stats = exporter.stats
        assert (stats["errors"], stats["failed"], stats["last_error"]) == (0, 0, None)
        # Never stops: an ordinary span after all that is written.
        assert exporter.export([ordinary(2, "after")]) is SpanExportResult.SUCCESS
        assert query(path, "SELECT name FROM spans WHERE trace_id = ?", [f"{2:032x}"]) == [("after",)]
    finally:
        exporter.shutdown()


def test_processor_stores_every_span_as_documented(
    tmp_path: Path, store_for: Callable[[Path], TraceStore]
) -> None:
    path = tmp_path / "processor.db"
    processor = SQLiteSpanProcessor(path, redact=False)
    processor.on_end(ordinary(1))
    assert processor.force_flush(10_000)
    store = store_for(path)

    @fuzz(80)
    @given(shapes())
    def write(shape: Shape) -> None:
        ids = trace_ids(shape)
        handed = []
        for key, version in shape.versions:
            if version.end is None and any(k == key and v.end is not None for k, v in handed):
                continue  # a span starts before it ends: no start row after an end
            handed.append((key, version))
            span = readable_span(ids[key[0]], key[1], shape.parents[key], shape.usage[key], version)
            if version.end is None:
                processor.on_start(span)  # type: ignore[arg-type]  # the queue takes any span
            else:
                processor.on_end(span)
        assert processor.force_flush(10_000)
        check_stored(path, store, winners(shape, ids, handed))

    try:
        write()
        stats = processor.stats
        assert (stats["errors"], stats["failed"], stats["dropped"], stats["last_error"]) == (0, 0, 0, None)
        # Never stops: both threads still run, and an ordinary span after all that is written.
        assert processor._thread.is_alive() and processor._committer.is_alive()
        processor.on_end(ordinary(3, "after"))
        assert processor.force_flush(10_000)
        assert query(path, "SELECT name FROM spans WHERE trace_id = ?", [f"{3:032x}"]) == [("after",)]
    finally:
        processor.shutdown()


# Attribute values as an application hands them to the SDK: lists too (the SDK keeps tuples), and
# mixed sequences, None, bytes and mappings, which this SDK keeps rather than drops.
sdk_keys = keys.filter(bool)  # the SDK drops an empty key, in nested mappings too
sdk_values = st.one_of(
    scalars,
    homogeneous,
    structured(sdk_keys),
    deep,
    too_deep,
    st.lists(leaves, max_size=4),
    st.lists(structured(sdk_keys), max_size=2),
)


@st.composite
def sdk_traces(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Spans made with a real tracer: each a root, the child of an earlier one, or the child of a
    parent that never arrives (remote or not)."""
    spans = []
    for index in range(draw(st.integers(1, 5))):
        spans.append(
            {
                "parent": draw(st.sampled_from(["root", "lost", "remote", *(["earlier"] if index else [])])),
                "name": draw(texts),
                "attributes": draw(st.dictionaries(sdk_keys, sdk_values, max_size=5)),
                "event": draw(st.dictionaries(sdk_keys, sdk_values, max_size=3)),
                "link": draw(st.dictionaries(sdk_keys, sdk_values, max_size=2)),
                "start": draw(times),
                "end": draw(times),
                "error": draw(st.none() | texts),
            }
        )
    return spans


class SequentialIds(IdGenerator):
    """Hypothesis seeds ``random`` the same way for each example, and with it the SDK's ids: these
    never repeat."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._numbers)

    def generate_trace_id(self) -> int:
        return next(self._numbers) << 64 | 0x1D


def test_spans_made_by_the_sdk_store_what_it_keeps(
    tmp_path: Path, store_for: Callable[[Path], TraceStore]
) -> None:
    path = tmp_path / "sdk.db"
    processor = SQLiteSpanProcessor(path, redact=False)
    provider = TracerProvider(resource=RESOURCE, id_generator=SequentialIds())
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("fuzz", "1.0")
    processor.on_end(ordinary(1))
    assert processor.force_flush(10_000)
    store = store_for(path)

    @fuzz(60)
    @given(sdk_traces())
    def write(specs: list[dict[str, Any]]) -> None:
        lost_trace = next(_trace_numbers) << 64 | 0xFEED
        made: list[tuple[Any, dict[str, Any], int | None]] = []
        for spec in specs:
            if spec["parent"] == "earlier":
                parent_id = made[-1][0].get_span_context().span_id
                context = trace.set_span_in_context(made[-1][0])
            elif spec["parent"] == "root":
                parent_id, context = None, Context()
            else:
                parent_id = 0xC0FFEE
                # Sampled: the SDK's default sampler follows the parent.
                remote = spec["parent"] == "remote"
                lost = SpanContext(lost_trace, parent_id, is_remote=remote, trace_flags=TraceFlags(1))
                context = trace.set_span_in_context(NonRecordingSpan(lost))
            link = Link(SpanContext(lost_trace, 0x1F, is_remote=False), spec["link"])
            span = tracer.start_span(
                spec["name"],
                context=context,
                attributes=spec["attributes"],
                links=[link],
                start_time=spec["start"],
            )
            span.add_event("event", spec["event"], timestamp=spec["start"])
            if spec["error"] is not None:
                span.set_status(Status(StatusCode.ERROR, spec["error"]))
            made.append((span, spec, parent_id))
        for span, spec, _ in reversed(made):  # children end before their parents
            span.end(end_time=spec["end"])
        assert processor.force_flush(10_000)
        for span, spec, parent_id in made:
            context = span.get_span_context()
            entry = store.get_span(f"{context.span_id:016x}", f"{context.trace_id:032x}")
            assert entry is not None
            assert entry.parent_id == (None if parent_id is None else f"{parent_id:016x}")
            assert entry.name == stored_column_text(spec["name"])
            assert entry.attributes == stored_attributes(spec["attributes"])
            assert entry.events == [
                {
                    "name": "event",
                    "time_unix_nano": spec["start"],
                    "attributes": stored_attributes(spec["event"], KEPT_LEVELS_INSIDE),
                }
            ]
            assert entry.links == [
                {
                    "trace_id": f"{lost_trace:032x}",
                    "span_id": f"{0x1F:016x}",
                    "attributes": stored_attributes(spec["link"], KEPT_LEVELS_INSIDE),
                }
            ]
            assert (entry.start_time_unix_nano, entry.end_time_unix_nano) == (spec["start"], spec["end"])
            assert entry.status == ("error" if spec["error"] is not None else "unset")
            assert entry.status_message == (
                None if spec["error"] is None else stored_column_text(spec["error"])
            )
        traces = sorted({f"{span.get_span_context().trace_id:032x}" for span, _, _ in made})
        marks = ",".join("?" * len(traces))
        assert query(path, f"SELECT count(*) FROM spans WHERE trace_id IN ({marks})", traces) == [
            (len(specs),)
        ]

    try:
        write()
        stats = processor.stats
        assert (stats["errors"], stats["failed"], stats["dropped"]) == (0, 0, 0)
    finally:
        provider.shutdown()


def _deep_json(depth: int, as_object: bool) -> str:
    return ('{"a":' * depth + "1" + "}" * depth) if as_object else ("[" * depth + "]" * depth)


MESSAGE_KEYS = (
    "role",
    "type",
    "content",
    "parts",
    "tool_calls",
    "text",
    "name",
    "arguments",
    "function",
    "message",
)
message_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | texts
    | st.sampled_from(["reasoning", "thinking", "tool_call"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(MESSAGE_KEYS), inner, max_size=4)
    ),
    max_leaves=8,
)
json_depths = st.one_of(
    st.sampled_from([0, 1, 2, 64, 65, 255, 256, 999, 1000, 1023, 1024, 1025, 3000]), st.integers(0, 1500)
)
json_strings = st.one_of(
    texts,
    st.builds(_deep_json, json_depths, st.booleans()),
    # Valid JSON cut anywhere, and messages of any shape.
    st.builds(
        lambda s, n: s[:n],
        st.just('[{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]'),
        st.integers(0, 70),
    ),
    st.lists(
        st.dictionaries(st.sampled_from(MESSAGE_KEYS), message_values, max_size=4) | message_values,
        max_size=3,
    ).map(json.dumps),
)
CONTENT_KEYS = (
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "input.value",
    "output.value",
)
# Flattened messages (OpenInference, OpenLLMetry) carry any attribute value in any field.
FLAT_KEYS = (
    "llm.input_messages.0.message.role",
    "llm.input_messages.0.message.content",
    "llm.output_messages.0.message.role",
    "llm.output_messages.0.message.content",
    "llm.output_messages.0.message.contents.0.message_content.type",
    "llm.output_messages.0.message.contents.0.message_content.text",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.name",
    "gen_ai.completion.0.role",
    "gen_ai.completion.0.content",
)


def test_json_text_attributes_never_break_text_extraction(
    tmp_path: Path, store_for: Callable[[Path], TraceStore]
) -> None:
    """Deeply nested or invalid JSON in the attributes that carry messages: the span is stored,
    the attribute verbatim, and its texts are text within the limit."""
    path = tmp_path / "content.db"
    exporter = SQLiteSpanExporter(path, redact=False)
    assert exporter.export([ordinary(1)]) is SpanExportResult.SUCCESS
    store = store_for(path)

    @fuzz(120)
    @given(
        st.dictionaries(st.sampled_from(CONTENT_KEYS), json_strings, min_size=1),
        st.dictionaries(st.sampled_from(FLAT_KEYS), sdk_values, max_size=3),
        st.sampled_from(["gen_ai.choice", "gen_ai.client.inference.operation.details", "x"]),
        json_strings,
    )
    def write(content: dict[str, str], flat: dict[str, Any], event_name: str, event_value: str) -> None:
        attributes = {**flat, **content}
        trace_id = next(_trace_numbers) << 64 | 0xC0
        event = Event(
            event_name, {"message": event_value, "gen_ai.output.messages": event_value}, timestamp=5
        )
        span = ReadableSpan(
            "content",
            SpanContext(trace_id, 7, False),
            resource=RESOURCE,
            attributes=attributes,
            events=[event],
            start_time=1,
            end_time=2,
        )
        assert exporter.export([span]) is SpanExportResult.SUCCESS
        entry = store.get_span(f"{7:016x}", f"{trace_id:032x}")
        assert entry is not None
        assert entry.attributes == stored_attributes(attributes)
        for text in (entry.input_text, entry.output_text, entry.reasoning_text):
            assert text is None or (isinstance(text, str) and 0 < len(text) <= CONTENT_LIMIT)
        if "input.value" in attributes and not any(
            key in attributes
            for key in ("gen_ai.input.messages", "gen_ai.system_instructions", *FLAT_KEYS[:2])
        ):
            # Plain text: taken as it is (then cut), whatever it looks like.
            assert entry.input_text == (stored_column_text(attributes["input.value"][:CONTENT_LIMIT]) or None)

    try:
        write()
        assert exporter.stats["errors"] == 0
    finally:
        exporter.shutdown()


def test_default_redaction_keeps_every_span_of_odd_batches(tmp_path: Path) -> None:
    """With redaction on (the default), odd values beside secrets: every span is stored, no secret is."""
    path = tmp_path / "redacted.db"
    exporter = SQLiteSpanExporter(path)
    secret = "sk-" + "A1b2C3d4" * 4
    salted = st.one_of(
        texts, texts.map(lambda t: t + " " + secret), st.just(f'{{"api_key": "{secret}", "x": "\ud800"}}')
    )
    odd = st.dictionaries(st.one_of(keys, st.just("db.password")), st.one_of(values, salted), max_size=5)

    @fuzz(60)
    @given(st.lists(st.tuples(st.one_of(texts, salted), odd), min_size=1, max_size=5))
    def write(spans: list[tuple[str, dict[str, Any]]]) -> None:
        trace_id = next(_trace_numbers) << 64 | 0x5EC
        batch = [
            ReadableSpan(
                name,
                SpanContext(trace_id, index + 1, False),
                resource=RESOURCE,
                attributes=attrs,
                start_time=1,
                end_time=2,
            )
            for index, (name, attrs) in enumerate(spans)
        ]
        assert exporter.export(batch) is SpanExportResult.SUCCESS
        rows = query(
            path,
            "SELECT span_id, name, attributes FROM spans WHERE trace_id = ? ORDER BY span_id",
            [f"{trace_id:032x}"],
        )
        assert [r[0] for r in rows] == [f"{i + 1:016x}" for i in range(len(spans))]
        assert not any(secret in (name + (attrs or "")) for _, name, attrs in rows)

    try:
        write()
        assert exporter.stats["errors"] == 0
    finally:
        exporter.shutdown()


# -- regressions: what the properties found, one plain example each ------------------------------------


def export_one(path: Path, span: ReadableSpan) -> Any:
    """Export one span into a file of its own and read it back."""
    exporter = SQLiteSpanExporter(path, redact=False)
    try:
        assert exporter.export([span]) is SpanExportResult.SUCCESS
        assert exporter.stats["errors"] == 0
    finally:
        exporter.shutdown()
    with TraceStore(path) as store:
        context = span.get_span_context()
        return store.get_span(f"{context.span_id:016x}", f"{context.trace_id:032x}")


def plain_span(name: str = "span", attributes: dict[str, Any] | None = None, **fields: Any) -> ReadableSpan:
    return ReadableSpan(
        name,
        SpanContext(0xABC, 0xDEF, is_remote=False),
        resource=fields.pop("resource", RESOURCE),
        attributes=attributes or {},
        start_time=1,
        end_time=2,
        **fields,
    )


def test_json_messages_a_thousand_levels_deep_keep_their_span(tmp_path: Path) -> None:
    # Rendering them went through repr(), which ran out of stack: the span was not stored.
    deep = "[" * 1000 + "]" * 1000
    attributes = {
        "gen_ai.input.messages": deep,
        "gen_ai.output.messages": deep,
        "gen_ai.system_instructions": deep,
    }
    entry = export_one(tmp_path / "t.db", plain_span("deep", attributes))
    assert entry is not None
    assert entry.attributes == attributes
    rendered = "[" * 64 + '"..."' + "]" * 64  # rendered 64 levels deep
    assert (entry.input_text, entry.output_text) == (f"system: {rendered}\n{rendered}", rendered)


def test_message_fields_of_any_type_keep_their_span(tmp_path: Path) -> None:
    # A role or part type that is not text (a list, a mapping) raised TypeError (unhashable), as did
    # tool_calls that are no list: the span was not stored.
    messages = [
        {"role": ["assistant"], "parts": [{"type": {"k": 1}}], "tool_calls": 5},
        {"role": "thinking", "content": "hmm"},
        {"role": "user", "content": "hi"},
    ]
    entry = export_one(tmp_path / "a.db", plain_span("odd", {"gen_ai.output.messages": json.dumps(messages)}))
    assert entry is not None
    assert (entry.output_text, entry.reasoning_text) == ('["assistant"]: [{"k":1}]\nuser: hi', "hmm")
    flattened = {
        "llm.output_messages.0.message.role": ({"a": 1},),
        "llm.output_messages.0.message.content": "hello",
        "llm.output_messages.0.message.contents.0.message_content.type": ("x",),
    }
    entry = export_one(tmp_path / "b.db", plain_span("flat", flattened))
    assert entry is not None
    assert entry.output_text == '[{"a":1}]: hello'


def test_a_value_nested_past_the_cut_costs_no_other_span(tmp_path: Path) -> None:
    # Nested deeper than orjson goes, it failed the careful path too: the whole batch was lost.
    path = tmp_path / "t.db"
    processor = SQLiteSpanProcessor(path, redact=False)
    deep = _nest(600, as_dict=True)
    try:
        processor.on_end(plain_span("deep", {"d": deep, "ok": 1}))
        processor.on_end(ordinary(0x1234, "beside"))
        assert processor.force_flush(10_000)
        assert processor.stats["failed"] == 0
    finally:
        processor.shutdown()
    with TraceStore(path) as store:
        entry = store.get_span(f"{0xDEF:016x}")
        assert entry is not None
        assert entry.attributes == {"d": stored_form(deep), "ok": 1}
        value = entry.attributes["d"]
        for _ in range(KEPT_LEVELS):
            value = value["d"]
        assert value == CUT
        assert store.get_span(f"{1:016x}", f"{0x1234:032x}") is not None


def test_nul_characters_in_names_status_scope_and_texts(tmp_path: Path) -> None:
    # SQLite (before 3.45) ends a text it reads out of JSON at a NUL: the name was stored as "a".
    span = plain_span(
        "a\x00b",
        {"input.value": "in\x00put", "k": "v\x00w"},
        status=Status(StatusCode.ERROR, "m\x00sg"),
        events=[Event("e\x00v", {"x": "y\x00z"}, timestamp=3)],
        instrumentation_scope=InstrumentationScope("lib\x00", "1\x002"),
    )
    entry = export_one(tmp_path / "t.db", span)
    assert entry is not None
    assert (entry.name, entry.status_message, entry.input_text) == ("a\ufffdb", "m\ufffdsg", "in\ufffdput")
    assert (entry.scope_name, entry.scope_version) == ("lib\ufffd", "1\ufffd2")
    # Read as JSON, attributes and events keep it.
    assert entry.attributes == {"input.value": "in\x00put", "k": "v\x00w"}
    assert entry.events == [{"name": "e\x00v", "time_unix_nano": 3, "attributes": {"x": "y\x00z"}}]


def test_values_past_max_json_chars_are_shortened(tmp_path: Path) -> None:
    big = "y" * (9 * 2**20)
    entry = export_one(tmp_path / "t.db", plain_span("big", {"big": big, "small": "ok"}))
    assert entry is not None
    kept = 2**21  # a quarter of the 8 MiB limit
    assert entry.attributes == {
        "big": "y" * kept + f"...[{len(big) - kept} more characters not stored]",
        "small": "ok",
    }


def test_a_fractional_token_count_is_no_count(tmp_path: Path) -> None:
    entry = export_one(tmp_path / "t.db", plain_span("usage", {"gen_ai.usage.input_tokens": 2.5}))
    assert entry is not None
    assert entry.input_tokens is None


def test_a_span_name_of_a_million_characters(tmp_path: Path) -> None:
    span = plain_span("n" * 1_000_000, instrumentation_scope=InstrumentationScope("lib", "1"))
    entry = export_one(tmp_path / "t.db", span)
    assert entry is not None
    assert entry.name.startswith("n" * 1000)
    assert (entry.scope_name, entry.scope_version) == ("lib", "1")


def test_a_service_name_with_a_lone_surrogate_keeps_its_spans(tmp_path: Path) -> None:
    resource = Resource.create({"service.name": "svc\ud800"})
    entry = export_one(tmp_path / "t.db", plain_span("span", resource=resource))
    assert entry is not None
    assert entry.service_name == "svc\ufffd"
