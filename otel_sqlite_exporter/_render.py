"""Render: sessions, trees, timelines, tables and details as the CLI prints them (ANSI colour optional)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from otel_sqlite_exporter._records import (
    LogEntry,
    ModelUsage,
    SearchHit,
    SessionSummary,
    TraceEntry,
    TraceSession,
)
from otel_sqlite_exporter._tree import SessionTree, SpanNode

if TYPE_CHECKING:
    from otel_sqlite_exporter._query import StoreStats
    from otel_sqlite_exporter._retention import SweepPlan, SweepResult

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Deeper than this, lines stop indenting further and show their depth instead.
_MAX_INDENT = 32

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
          "cyan": "36"}  # fmt: skip
_STATUS_COLORS = {
    "error": "red",
    "failed": "red",
    "running": "yellow",
    "interrupted": "magenta",
    "cancelled": "magenta",
    "completed": "green",
    "ok": "green",
}


class Style:
    """ANSI styling, or none at all."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, *styles: str) -> str:
        if not self.color or not styles:
            return text
        return f"\x1b[{';'.join(_CODES[s] for s in styles)}m{text}\x1b[0m"

    def status(self, status: str) -> str:
        color = _STATUS_COLORS.get(status)
        return self(status, color) if color else status


# C0 and C1 control characters: span names and texts come from the traced application, and a raw
# escape sequence or newline in them would restyle the terminal or break a line's layout.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\n``, ``\\x1b``), safe on one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide East Asian characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def truncate(text: str, columns: int) -> str:
    """``text`` cut to at most ``columns`` terminal columns, ending in an ellipsis when cut."""
    if width(text) <= columns:
        return text
    out, used = [], 0
    for ch in text:
        w = width(ch)
        if used + w > columns - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def size(n_bytes: int) -> str:
    """A byte count for people: ``512 B``, ``104.0 KiB``, ``3.2 MiB``."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    value = float(n_bytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)}m {seconds:04.1f}s"


def when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def cost(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}" if value < 1 else f"${value:,.2f}"


def tokens(inp: int | None, out: int | None) -> str:
    if not inp and not out:
        return ""
    return f"{inp or 0:,} in / {out or 0:,} out"


_BUDGET_PAINT = {"warning": ("yellow",), "exceeded": ("red", "bold")}


def session_header(session: TraceSession, style: Style) -> list[str]:
    title = f"Session {style(clean(session.id), 'bold')}"
    if session.task:
        title += f"  {session.task!r}"
    facts = [
        f"started {when(session.started_at)}",
        duration(session.duration_ms) if session.completed_at else "",
        plural(session.total_events, "span"),
        tokens(session.input_tokens, session.output_tokens),
        cost(session.cost_usd) if session.cost_usd is not None else "",
        style(plural(session.error_count, "error"), "red") if session.error_count else "",
        f"user {clean(session.user_id)}" if session.user_id else "",
        f"service {clean(session.service_name)}" if session.service_name else "",
        style(f"budget {session.budget_status}", *_BUDGET_PAINT.get(session.budget_status, ()))
        if session.budget_status
        else "",
    ]
    return [f"{title}  {style.status(session.status)}", "  " + " · ".join(f for f in facts if f)]


def span_line(
    entry: TraceEntry, style: Style, *, inp: int | None, out: int | None, cost_usd: float | None
) -> str:
    """One span: type, name, duration, model, tokens, cost, and its status when not plain success."""
    name = clean(entry.name)
    name = style(name, "red", "bold") if entry.status == "error" else style(name, "bold")
    parts = [f"{style(f'[{entry.type}]', 'cyan')} {name}"]
    if entry.end_time is None:
        parts.append(style.status(entry.status))
    else:
        parts.append(duration(entry.duration_ms))
    if entry.model:
        parts.append(style(clean(entry.model), "blue"))
    parts.append(tokens(inp, out))
    if cost_usd is not None:
        parts.append(cost(cost_usd))
    if entry.status == "error":
        message = f": {clean(entry.status_message)}" if entry.status_message else ""
        parts.append(style("ERROR" + message, "red"))
    return " · ".join(p for p in parts if p)


def tree(session_tree: SessionTree, logs: Iterable[LogEntry] = (), *, color: bool = False) -> str:
    style = Style(color)
    lines = session_header(session_tree.session, style)
    logs_of: dict[tuple[str | None, str | None], list[LogEntry]] = {}
    for log in logs:
        logs_of.setdefault((log.trace_id, log.span_id), []).append(log)
    for trace in session_tree.traces:
        facts = [plural(trace.span_count, "span"), tokens(trace.input_tokens, trace.output_tokens)]
        if trace.cost_usd is not None:
            facts.append(cost(trace.cost_usd))
        if trace.error_count:
            facts.append(style(plural(trace.error_count, "error"), "red"))
        lines.append(f"Trace {style(trace.trace_id, 'dim')} · " + " · ".join(f for f in facts if f))
        # (node, prefix for its line, prefix for its children); iterative, so any depth works.
        stack: list[tuple[SpanNode, str, str, int]] = []
        for i, root in reversed(list(enumerate(trace.roots))):
            last = i == len(trace.roots) - 1
            stack.append((root, "└─ " if last else "├─ ", "   " if last else "│  ", 0))
        while stack:
            node, head, rest, depth = stack.pop()
            line = head + span_line(
                node.entry, style, inp=node.input_tokens, out=node.output_tokens, cost_usd=node.cost_usd
            )
            if node.orphan:
                line += style(f" (parent {node.entry.parent_id} not in the file)", "dim")
            if _is_repeat(node):
                e = node.entry
                line += style(
                    f" ({tokens(e.input_tokens, e.output_tokens)} repeated: response "
                    f"{clean(e.response_id or '')} is counted once, in its other span)",
                    "dim",
                )
            if depth >= _MAX_INDENT:
                line = rest[:-3] + style(f"[depth {depth}] ", "dim") + line[len(rest) - 3 :]
            lines.append(line)
            for log in logs_of.pop((node.entry.trace_id, node.entry.id), ()):
                lines.append(rest + log_line(log, style))
            grow = depth < _MAX_INDENT
            for j in range(len(node.children) - 1, -1, -1):
                last = j == len(node.children) - 1
                child_head = (rest if grow else rest[:-3]) + ("└─ " if last else "├─ ")
                child_rest = (rest if grow else rest[:-3]) + ("   " if last else "│  ")
                stack.append((node.children[j], child_head, child_rest, depth + 1))
        # Records of this trace whose span is not in the file.
        for key in [key for key in logs_of if key[0] == trace.trace_id]:
            lines += ["   " + log_line(log, style) for log in logs_of.pop(key)]
    return "\n".join(lines)


def log_line(log: LogEntry, style: Style) -> str:
    """A log record under its span: a dot, severity, event name and body, on one line."""
    severity = log.severity or (f"SEV{log.severity_number}" if log.severity_number else "LOG")
    paint = (
        "red" if (log.severity_number or 0) >= 17 else "yellow" if (log.severity_number or 0) >= 13 else "dim"
    )
    parts = [style("·", "dim"), style(clean(severity), paint)]
    if log.event_name:
        parts.append(style(clean(log.event_name), "bold"))
    if log.body:
        parts.append(truncate(clean(log.body), 160))
    return " ".join(parts)


def _is_repeat(node: SpanNode) -> bool:
    """A model call recorded twice (same response id): this span's usage is counted in the other."""
    e = node.entry
    return (
        e.response_id is not None
        and not e.counted
        and (e.input_tokens is not None or e.output_tokens is not None)
        and not node.input_tokens
        and not node.output_tokens
    )


def timeline(session: TraceSession, entries: Iterable[TraceEntry], *, color: bool = False) -> str:
    style = Style(color)
    lines = session_header(session, style)
    entries = list(entries)
    origin = session.start_time_unix_nano
    if entries:
        first = entries[0].start_time_unix_nano
        origin = first if origin is None else min(origin, first)
    depth: dict[tuple[str, str], int] = {}
    for entry in entries:
        # Spans come in start order, so a parent (if present) already has its depth.
        level = depth.get((entry.trace_id, entry.parent_id or ""), -1) + 1
        depth[(entry.trace_id, entry.id)] = level
        offset = (entry.start_time_unix_nano - (origin or 0)) / 1e9
        line = span_line(
            entry, style, inp=entry.input_tokens, out=entry.output_tokens, cost_usd=entry.cost_usd
        )
        lines.append(f"+{offset:9.3f} s  {'  ' * min(level, _MAX_INDENT)}{line}")
    return "\n".join(lines)


# -- tables and details ----------------------------------------------------------------------------


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    style: Style,
    *,
    right: Collection[int] = (),
    paint: Mapping[int, Callable[[str], str]] | None = None,
) -> str:
    """Rows aligned under their headers; ``right`` columns align right, ``paint`` styles a column's
    cells (after padding is measured, so escape codes never skew the alignment)."""
    rows = [[clean(cell) for cell in row] for row in rows]
    widths = [width(h) for h in headers]
    for row in rows:
        widths = [max(w, width(cell)) for w, cell in zip(widths, row, strict=True)]
    paint = paint or {}
    last = len(headers) - 1

    def line(cells: Sequence[str], painters: Mapping[int, Callable[[str], str]]) -> str:
        out = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - width(cell))
            shown = painters[i](cell) if i in painters else cell
            if i in right:
                out.append(pad + shown)
            else:
                out.append(shown if i == last else shown + pad)
        return "  ".join(out).rstrip()

    bold = {i: (lambda text: style(text, "bold")) for i in range(len(headers))}
    return "\n".join([line(headers, bold), *(line(row, paint) for row in rows)])


# Longest task or span name a table shows; the full text is in the detail views and in --json.
_CELL_TEXT = 60


def sessions_table(sessions: Sequence[TraceSession], style: Style) -> str:
    rows = [
        [
            s.id,
            when(s.started_at),
            s.status,
            count(s.total_events),
            count(s.total_tokens),
            cost(s.cost_usd),
            truncate(clean(s.task or ""), _CELL_TEXT),
        ]
        for s in sessions
    ]
    headers = ["SESSION", "STARTED", "STATUS", "SPANS", "TOKENS", "COST", "TASK"]
    if any(s.budget_status for s in sessions):  # a column only when a budget tracks some session
        headers.insert(6, "BUDGET")
        for row, s in zip(rows, sessions, strict=True):
            row.insert(6, s.budget_status or "-")
    return table(headers, rows, style, right={3, 4, 5}, paint={2: style.status})


def spans_table(entries: Iterable[TraceEntry], style: Style, *, with_session: bool = True) -> str:
    headers = ["STARTED", "SPAN", "TYPE", "STATUS", "DURATION", "MODEL", "TOKENS", "COST", "NAME"]
    rows = []
    for e in entries:
        name = e.name
        if e.status == "error" and e.status_message:
            name += f" · {e.status_message}"
        row = [
            when(e.timestamp),
            e.id,
            e.type,
            e.status,
            duration(e.duration_ms) if e.end_time is not None else "-",
            e.model or "-",
            tokens(e.input_tokens, e.output_tokens) or "-",
            cost(e.cost_usd),
            truncate(clean(name), _CELL_TEXT),
        ]
        if with_session:
            row.insert(2, e.session_id)
        rows.append(row)
    if with_session:
        headers.insert(2, "SESSION")
    shift = 1 if with_session else 0
    paint: dict[int, Callable[[str], str]] = {3 + shift: style.status}
    return table(headers, rows, style, right={4 + shift, 7 + shift}, paint=paint)


def _field_lines(fields: Iterable[tuple[str, str | None]], style: Style) -> list[str]:
    """``label  value`` lines, labels padded to one width; values come cleaned (and maybe styled)."""
    shown = [(label, value) for label, value in fields if value]
    pad = max((len(label) for label, _ in shown), default=0)
    return [f"  {style(label.ljust(pad), 'dim')}  {value}" for label, value in shown]


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _iso_ns(ns: Any) -> str:
    if isinstance(ns, bool) or not isinstance(ns, int):
        return "-"
    try:
        return (_EPOCH + timedelta(microseconds=ns // 1000)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return str(ns)


def _opt(value: str | None) -> str | None:
    return None if value is None else clean(value)


def _num(value: int | None, show_zero: bool = True) -> str | None:
    return None if value is None or (not value and not show_zero) else count(value)


def span_detail(entry: TraceEntry, style: Style) -> str:
    """One span in full: its facts, every attribute, its events and links, and its input and output text."""
    e = entry
    status = style.status(e.status)
    if e.status_message:
        status += style(": " + clean(e.status_message), "red" if e.status == "error" else "dim")
    lines = [span_line(e, style, inp=e.input_tokens, out=e.output_tokens, cost_usd=e.cost_usd)]
    lines += _field_lines(
        [
            ("span", _opt(e.id)),
            ("trace", _opt(e.trace_id)),
            ("parent", _opt(e.parent_id)),
            ("session", _opt(e.session_id)),
            ("type", _opt(e.type)),
            ("kind", _opt(e.kind)),
            ("status", status),
            ("started", _iso_ns(e.start_time_unix_nano)),
            ("ended", _iso_ns(e.end_time_unix_nano) if e.end_time_unix_nano is not None else None),
            ("duration", duration(e.duration_ms) if e.end_time is not None else None),
            ("model", _opt(e.model)),
            ("provider", _opt(e.provider)),
            ("operation", _opt(e.operation)),
            ("response", _opt(e.response_id)),
            ("input tokens", _num(e.input_tokens)),
            ("output tokens", _num(e.output_tokens)),
            ("cache read", _num(e.cache_read_tokens, show_zero=False)),
            ("cache write", _num(e.cache_write_tokens, show_zero=False)),
            ("reasoning", _num(e.reasoning_tokens, show_zero=False)),
            ("cost", cost(e.cost_usd) if e.cost_usd is not None else None),
            ("service", _opt(e.service_name)),
            ("scope", clean(" ".join(p for p in (e.scope_name, e.scope_version) if p))),
        ],
        style,
    )
    if e.attributes:
        lines.append(style("Attributes", "bold"))
        attributes = e.attributes if isinstance(e.attributes, dict) else {"(raw)": e.attributes}
        for key in sorted(attributes):
            lines.append(f"  {clean(key)} = {clean(_value(attributes[key]))}")
    if e.events:
        lines.append(style("Events", "bold"))
        for event in e.events:
            if not isinstance(event, dict):
                lines.append(f"  {clean(_value(event))}")
                continue
            name = clean(str(event.get("name", "")))
            lines.append(f"  {_iso_ns(event.get('time_unix_nano'))}  {style(name, 'bold')}")
            attributes = event.get("attributes")
            for key, value in sorted(attributes.items() if isinstance(attributes, dict) else ()):
                lines.append(f"    {clean(key)} = {clean(_value(value))}")
    if e.links:
        lines.append(style("Links", "bold"))
        for link in e.links:
            if isinstance(link, dict):
                lines.append(clean(f"  trace {link.get('trace_id', '')} span {link.get('span_id', '')}"))
            else:
                lines.append(f"  {clean(_value(link))}")
    for label, text in (("Input", e.input_text), ("Reasoning", e.reasoning_text), ("Output", e.output_text)):
        if text:
            lines.append(style(label, "bold"))
            # Each line cleaned on its own: the text's newlines stay line breaks.
            lines += ["    " + clean(line) for line in text.splitlines()]
    return "\n".join(lines)


def summary(report: SessionSummary, style: Style) -> str:
    """A session at a glance: header, traces and spans by type, usage by model, errors, slowest spans."""
    lines = session_header(report.session, style)
    by_type = ", ".join(f"{clean(t)} {n}" for t, n in report.spans_by_type.items())
    lines.append(f"Traces  {report.trace_count}" + (f" · spans by type: {by_type}" if by_type else ""))
    if report.models:
        lines.append("")
        lines.append(models_table(report.models, style))
    for title, entries in (("Errors", report.errors), ("Slowest", report.slowest)):
        if not entries:
            continue
        lines.append("")
        lines.append(style(f"{title} ({len(entries)})", "red" if title == "Errors" else "bold"))
        for e in entries:
            line = span_line(e, style, inp=e.input_tokens, out=e.output_tokens, cost_usd=e.cost_usd)
            lines.append(f"  {line}  {style('span ' + clean(e.id), 'dim')}")
    return "\n".join(lines)


def models_table(models: Iterable[ModelUsage], style: Style) -> str:
    rows = [
        [m.model, count(m.calls), count(m.input_tokens), count(m.output_tokens), count(m.total_tokens),
         cost(m.cost_usd)]
        for m in models
    ]  # fmt: skip
    headers = ("MODEL", "CALLS", "INPUT", "OUTPUT", "TOTAL", "COST")
    return table(headers, rows, style, right={1, 2, 3, 4, 5}, paint={0: lambda m: style(m, "blue")})


def search_hits(hits: Iterable[SearchHit], style: Style) -> str:
    """Each match: when, span id, session, the span's line, and the matching text around the match."""
    lines = []
    for hit in hits:
        e = hit.entry
        line = span_line(e, style, inp=e.input_tokens, out=e.output_tokens, cost_usd=e.cost_usd)
        lines.append(f"{when(e.timestamp)}  {style(clean(e.id), 'dim')}  {line}")
        lines.append(f"    {style('session', 'dim')} {clean(e.session_id)}")
        snippet = " ".join(hit.snippet.split())
        if snippet:
            lines.append(f"    {clean(snippet)}")
    return "\n".join(lines)


def store_stats(stats: StoreStats, style: Style) -> str:
    lines = _field_lines(
        [
            ("file", clean(stats.path)),
            (
                "size",
                f"{size(stats.file_bytes)} ({stats.file_bytes:,} bytes), schema v{stats.schema_version}",
            ),
            ("sessions", f"{stats.sessions:,} ({stats.running_sessions:,} running)"),
            ("traces", f"{stats.traces:,}"),
            ("spans", f"{stats.spans:,}"),
            ("oldest", when(stats.oldest)),
            ("newest", when(stats.newest)),
            ("tokens", f"{stats.input_tokens:,} in / {stats.output_tokens:,} out"),
            ("cost", cost(stats.cost_usd)),
        ],
        style,
    )
    if stats.models:
        lines.append("")
        lines.append(models_table(stats.models, style))
    return "\n".join(lines)


def tail_line(entry: TraceEntry, style: Style, *, with_session: bool) -> str:
    """One event of a followed span: its time, whether it started or ended, and the span's line."""
    ended = entry.end_time is not None
    at = entry.end_time if ended else entry.timestamp
    stamp = at.strftime("%H:%M:%S.%f")[:-3] if at else "--:--:--.---"
    marker = (
        style("end  ", "red" if entry.status == "error" else "green") if ended else style("start", "yellow")
    )
    line = span_line(entry, style, inp=entry.input_tokens, out=entry.output_tokens, cost_usd=entry.cost_usd)
    where = f"{style(clean(entry.session_id), 'dim')}  " if with_session else ""
    return f"{style(stamp, 'dim')}  {marker}  {where}{line}"


# -- retention -------------------------------------------------------------------------------------


def sweep_result(result: SweepResult, style: Style) -> str:
    """What a sweep did: deleted, marked interrupted, space given back."""
    lines = [style("Swept", "bold")]
    lines += _field_lines(
        [
            (
                "deleted",
                f"{plural(result.deleted_sessions, 'session')}, {plural(result.deleted_traces, 'trace')}, "
                f"{plural(result.deleted_spans, 'span')}",
            ),
            (
                "interrupted",
                f"{plural(result.interrupted_sessions, 'stale running session')} marked interrupted"
                if result.interrupted_sessions
                else None,
            ),
            ("reclaimed", f"{size(result.bytes_reclaimed)} (the file is now {size(result.file_bytes)})"),
            ("took", f"{result.duration_s:.2f} s"),
            ("stopped", None if result.complete else "before the end; the next sweep carries on"),
        ],
        style,
    )
    return "\n".join(lines)


def sweep_plan(plan: SweepPlan, style: Style, *, limit: int) -> str:
    """A dry run: the sessions a sweep would delete (the first ``limit``), and why."""
    by_age = sum(1 for p in plan.sessions if p.reason == "age")
    by_size = len(plan.sessions) - by_age
    reasons = []
    if plan.cutoff is not None:
        reasons.append(
            f"{by_age:,} with no activity since {when(plan.cutoff)} "
            f"({plural(plan.retention_days, 'day')} of retention)"
        )
    else:
        reasons.append("none by age (retention_days is 0: kept forever)")
    if plan.max_db_bytes is not None:
        reasons.append(
            f"{by_size:,} of the oldest to bring {size(plan.live_bytes)} of data under "
            f"{size(plan.max_db_bytes)} (an estimate)"
        )
    lines = [
        style("Dry run: nothing was changed.", "bold"),
        f"Would delete {plural(plan.deleted_sessions, 'session')} ({plural(plan.deleted_traces, 'trace')}, "
        f"{plural(plan.deleted_spans, 'span')}): " + "; ".join(reasons) + ".",
    ]
    if plan.interrupted:
        lines.append(
            f"Would first mark {plural(len(plan.interrupted), 'stale running session')} interrupted: "
            + ", ".join(clean(s) for s in plan.interrupted[:limit])
            + (" ..." if len(plan.interrupted) > limit else "")
        )
    shown = plan.sessions[:limit]
    if shown:
        rows = [
            [
                p.session_id,
                when(p.last_activity),
                p.status,
                count(p.traces),
                count(p.spans),
                p.reason,
                truncate(clean(p.task or ""), _CELL_TEXT),
            ]
            for p in shown
        ]
        headers = ("SESSION", "LAST ACTIVITY", "STATUS", "TRACES", "SPANS", "REASON", "TASK")
        lines.append("")
        lines.append(table(headers, rows, style, right={3, 4}, paint={2: style.status}))
    if len(plan.sessions) > len(shown):
        lines.append(
            f"... and {len(plan.sessions) - len(shown):,} more (--limit N lists more, --json lists all)"
        )
    return "\n".join(lines)


def settings_table(settings: Mapping[str, str | None], style: Style) -> str:
    """The settings table; times (``*_unix_nano``) shown as UTC times."""
    rows = []
    for key, value in settings.items():
        shown = "" if value is None else value
        if key.endswith("_unix_nano") and shown.isascii() and shown.isdigit():
            shown = _iso_ns(int(shown))
        rows.append([key, shown])
    return table(("SETTING", "VALUE"), rows, style)
