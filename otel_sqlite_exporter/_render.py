"""Render: sessions, trees and timelines as the text the CLI prints (ANSI colour optional)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from otel_sqlite_exporter._records import TraceEntry, TraceSession
from otel_sqlite_exporter._tree import SessionTree, SpanNode

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


def session_header(session: TraceSession, style: Style) -> list[str]:
    title = f"Session {style(session.id, 'bold')}"
    if session.task:
        title += f"  {session.task!r}"
    facts = [
        f"started {when(session.started_at)}",
        duration(session.duration_ms) if session.completed_at else "",
        f"{session.total_events} spans",
        tokens(session.input_tokens, session.output_tokens),
        cost(session.cost_usd) if session.cost_usd is not None else "",
        style(f"{session.error_count} errors", "red") if session.error_count else "",
        f"user {session.user_id}" if session.user_id else "",
        f"service {session.service_name}" if session.service_name else "",
    ]
    return [f"{title}  {style.status(session.status)}", "  " + " · ".join(f for f in facts if f)]


def span_line(
    entry: TraceEntry, style: Style, *, inp: int | None, out: int | None, cost_usd: float | None
) -> str:
    """One span: type, name, duration, model, tokens, cost, and its status when not plain success."""
    name = style(entry.name, "red", "bold") if entry.status == "error" else style(entry.name, "bold")
    parts = [f"{style(f'[{entry.type}]', 'cyan')} {name}"]
    if entry.end_time is None:
        parts.append(style.status(entry.status))
    else:
        parts.append(duration(entry.duration_ms))
    if entry.model:
        parts.append(style(entry.model, "blue"))
    parts.append(tokens(inp, out))
    if cost_usd is not None:
        parts.append(cost(cost_usd))
    if entry.status == "error":
        parts.append(style("ERROR" + (f": {entry.status_message}" if entry.status_message else ""), "red"))
    return " · ".join(p for p in parts if p)


def tree(session_tree: SessionTree, *, color: bool = False) -> str:
    style = Style(color)
    lines = session_header(session_tree.session, style)
    for trace in session_tree.traces:
        facts = [f"{trace.span_count} spans", tokens(trace.input_tokens, trace.output_tokens)]
        if trace.cost_usd is not None:
            facts.append(cost(trace.cost_usd))
        if trace.error_count:
            facts.append(style(f"{trace.error_count} errors", "red"))
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
            if depth >= _MAX_INDENT:
                line = rest[:-3] + style(f"[depth {depth}] ", "dim") + line[len(rest) - 3 :]
            lines.append(line)
            grow = depth < _MAX_INDENT
            for j in range(len(node.children) - 1, -1, -1):
                last = j == len(node.children) - 1
                child_head = (rest if grow else rest[:-3]) + ("└─ " if last else "├─ ")
                child_rest = (rest if grow else rest[:-3]) + ("   " if last else "│  ")
                stack.append((node.children[j], child_head, child_rest, depth + 1))
    return "\n".join(lines)


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
