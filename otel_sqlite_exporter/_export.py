"""Export: a session as JSON-ready data, in this package's own shape or as OTLP/JSON.

Both are flat lists of spans (with parent ids), never nested by depth: a JSON encoder recurses,
and a trace may be thousands of spans deep.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from otel_sqlite_exporter._records import TraceEntry
from otel_sqlite_exporter._tree import SessionTree

#: Version of the layout ``export_session`` returns.
EXPORT_FORMAT_VERSION = 1

# OTLP enum numbers (opentelemetry/proto/trace/v1/trace.proto).
_OTLP_KIND = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
_OTLP_STATUS = {"unset": 0, "ok": 1, "error": 2}


def session_document(tree: SessionTree) -> dict[str, Any]:
    """The session, then each trace with its rollups and its spans in tree order."""
    traces = []
    for trace in tree.traces:
        spans = []
        for depth, node in trace.walk():
            span = node.entry.to_dict()
            span["depth"] = depth
            span["orphan"] = node.orphan
            spans.append(span)
        traces.append(
            {
                "trace_id": trace.trace_id,
                "span_count": trace.span_count,
                "input_tokens": trace.input_tokens,
                "output_tokens": trace.output_tokens,
                "total_tokens": trace.total_tokens,
                "cost_usd": trace.cost_usd,
                "error_count": trace.error_count,
                "spans": spans,
            }
        )
    return {"format_version": EXPORT_FORMAT_VERSION, "session": tree.session.to_dict(), "traces": traces}


def otlp_document(spans: Iterable[tuple[str | None, str | None, TraceEntry]]) -> dict[str, Any]:
    """``{"resourceSpans": [...]}`` from (resource attributes JSON, schema URL, entry) triples.

    Ids are hex and 64-bit numbers are decimal strings, as the OTLP/JSON encoding requires. A span
    still open has no end time (and reads as unset status).
    """
    resources: dict[tuple[str | None, str | None], dict[tuple[str | None, str | None], list[Any]]] = {}
    for attributes, schema_url, entry in spans:
        scopes = resources.setdefault((attributes, schema_url), {})
        scopes.setdefault((entry.scope_name, entry.scope_version), []).append(_otlp_span(entry))
    out = []
    for (attributes, schema_url), scopes in resources.items():
        resource_attrs = orjson.loads(attributes) if attributes else {}
        out.append(
            {
                "resource": {"attributes": _key_values(resource_attrs)},
                "scopeSpans": [
                    {"scope": _scope(name, version), "spans": spans_}
                    for (name, version), spans_ in scopes.items()
                ],
                **({"schemaUrl": schema_url} if schema_url else {}),
            }
        )
    return {"resourceSpans": out}


def _scope(name: str | None, version: str | None) -> dict[str, str]:
    scope = {"name": name or ""}
    if version:
        scope["version"] = version
    return scope


def _otlp_span(entry: TraceEntry) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": entry.trace_id,
        "spanId": entry.id,
        "name": entry.name,
        "kind": _OTLP_KIND.get(entry.kind, 0),
        "startTimeUnixNano": str(entry.start_time_unix_nano),
        "attributes": _key_values(entry.attributes if isinstance(entry.attributes, dict) else {}),
        "events": [
            {
                "timeUnixNano": str(event.get("time_unix_nano") or 0),
                "name": event.get("name", ""),
                "attributes": _key_values(event.get("attributes") or {}),
            }
            for event in entry.events
            if isinstance(event, dict)
        ],
        "links": [
            {
                "traceId": link.get("trace_id", ""),
                "spanId": link.get("span_id", ""),
                "attributes": _key_values(link.get("attributes") or {}),
            }
            for link in entry.links
            if isinstance(link, dict)
        ],
        "status": {"code": _OTLP_STATUS.get(entry.status, 0)},
    }
    if entry.parent_id:
        span["parentSpanId"] = entry.parent_id
    if entry.end_time_unix_nano is not None:
        span["endTimeUnixNano"] = str(entry.end_time_unix_nano)
    if entry.status_message:
        span["status"]["message"] = entry.status_message
    return span


def _key_values(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": str(key), "value": _any_value(value)} for key, value in attributes.items()]


def _any_value(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:  # how the writer stores bytes values
            return {"bytesValue": value["$bytes"]}
        return {"kvlistValue": {"values": _key_values(value)}}
    return {"stringValue": str(value)}
