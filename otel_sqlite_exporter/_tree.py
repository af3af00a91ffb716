"""Tree: spans (already read) assembled into trace and session trees, with subtree rollups.

Everything here is iterative: a chain of spans tens of thousands deep builds, walks and prints
without coming near Python's recursion limit. Nodes compare by identity and print shallowly for
the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from otel_sqlite_exporter._records import TraceEntry, TraceSession, fast_constructor

_NodeKey = tuple[str, str]  # (trace_id, span_id)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class SpanNode:
    """A span in its tree: the entry, its children in start order and the rollups of its subtree.

    ``orphan`` is True when the span names a parent that is not in the file (not written yet,
    swept, or recorded by another process): it is then placed at its trace's top level.
    """

    entry: TraceEntry
    children: tuple[SpanNode, ...]
    orphan: bool
    span_count: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    error_count: int
    _index: dict[_NodeKey, SpanNode] = field(compare=False)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def linked(self) -> list[SpanNode]:
        """The spans this one links to (OpenTelemetry links) that are in the same tree."""
        found = (self._index.get((link.get("trace_id"), link.get("span_id"))) for link in self.entry.links)
        return [node for node in found if node is not None]

    def walk(self) -> Iterator[tuple[int, SpanNode]]:
        """(depth, node) for this node and everything beneath it, depth first, in start order."""
        stack: list[tuple[int, SpanNode]] = [(0, self)]
        while stack:
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, child) for child in reversed(node.children))

    def __repr__(self) -> str:
        e = self.entry
        return f"SpanNode({e.type} {e.name!r} span_id={e.id} children={len(self.children)})"


_new_node = fast_constructor(SpanNode)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class TraceNode:
    """One trace: its top-level spans (the root, then any orphans) and the trace's rollups."""

    trace_id: str
    roots: tuple[SpanNode, ...]
    span_count: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    error_count: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def walk(self) -> Iterator[tuple[int, SpanNode]]:
        """(depth, node) for every span of the trace, depth first, in start order."""
        for root in self.roots:
            yield from root.walk()

    def __repr__(self) -> str:
        return f"TraceNode(trace_id={self.trace_id} roots={len(self.roots)} spans={self.span_count})"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class SessionTree:
    """A session, and its traces in start order."""

    session: TraceSession
    traces: tuple[TraceNode, ...]
    _index: dict[_NodeKey, SpanNode] = field(compare=False)

    @property
    def input_tokens(self) -> int:
        return sum(t.input_tokens for t in self.traces)

    @property
    def output_tokens(self) -> int:
        return sum(t.output_tokens for t in self.traces)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_usd(self) -> float | None:
        return _sum_cost(t.cost_usd for t in self.traces)

    @property
    def error_count(self) -> int:
        return sum(t.error_count for t in self.traces)

    def walk(self) -> Iterator[tuple[TraceNode, int, SpanNode]]:
        """(trace, depth, node) for every span of the session."""
        for trace in self.traces:
            for depth, node in trace.walk():
                yield trace, depth, node

    def find(self, trace_id: str, span_id: str) -> SpanNode | None:
        """The node of one span, if it is in this session."""
        return self._index.get((trace_id, span_id))

    def __repr__(self) -> str:
        return f"SessionTree(session={self.session.id!r} traces={len(self.traces)})"


def _sum_cost(costs: Any) -> float | None:
    known = [c for c in costs if c is not None]
    return sum(known) if known else None


def build_traces(entries: Sequence[TraceEntry], index: dict[_NodeKey, SpanNode]) -> list[TraceNode]:
    """Trace trees from spans in start order (the order of the returned traces: first span first).

    ``index`` receives every node, so links can be followed across the traces built into it.
    """
    by_trace: dict[str, list[TraceEntry]] = {}
    for entry in entries:
        by_trace.setdefault(entry.trace_id, []).append(entry)
    return [_build_trace(trace_id, spans, index) for trace_id, spans in by_trace.items()]


def _build_trace(trace_id: str, spans: list[TraceEntry], index: dict[_NodeKey, SpanNode]) -> TraceNode:
    present = {entry.id: entry for entry in spans}
    children: dict[str, list[TraceEntry]] = {}
    tops: list[TraceEntry] = []
    orphans: set[str] = set()
    for entry in spans:
        parent = entry.parent_id
        if entry.is_root or parent is None:
            tops.append(entry)
        elif parent in present and parent != entry.id:
            children.setdefault(parent, []).append(entry)
        else:
            tops.append(entry)
            orphans.add(entry.id)
    # Parent ids that loop (a malformed trace) leave spans no top-level span reaches: each such
    # loop is cut at its earliest span, which becomes an orphan.
    order = _preorder(tops, children)
    if len(order) < len(spans):
        reached = {entry.id for entry in order}
        for entry in spans:
            if entry.id not in reached:
                siblings = children[entry.parent_id]  # type: ignore[index]
                siblings.remove(entry)
                tops.append(entry)
                orphans.add(entry.id)
                for found in _preorder([entry], children):
                    reached.add(found.id)
        tops.sort(key=lambda e: (e.start_time_unix_nano, e.id))
        order = _preorder(tops, children)
    # Children before parents: each node is built from nodes that already exist.
    for entry in reversed(order):
        own = entry.counted
        span_count, errors = 1, entry.status == "error"
        inp = (entry.input_tokens or 0) if own else 0
        out = (entry.output_tokens or 0) if own else 0
        cost = entry.cost_usd if own else None
        below = children.get(entry.id)
        if below:
            kids = tuple(index[(trace_id, child.id)] for child in below)
            for kid in kids:
                span_count += kid.span_count
                errors += kid.error_count
                inp += kid.input_tokens
                out += kid.output_tokens
                if kid.cost_usd is not None:
                    cost = kid.cost_usd if cost is None else cost + kid.cost_usd
        else:
            kids = ()
        index[(trace_id, entry.id)] = _new_node(
            entry=entry,
            children=kids,
            orphan=entry.id in orphans,
            span_count=span_count,
            input_tokens=inp,
            output_tokens=out,
            cost_usd=cost,
            error_count=int(errors),
            _index=index,
        )
    roots = tuple(index[(trace_id, entry.id)] for entry in tops)
    return TraceNode(
        trace_id=trace_id,
        roots=roots,
        span_count=len(spans),
        input_tokens=sum(r.input_tokens for r in roots),
        output_tokens=sum(r.output_tokens for r in roots),
        cost_usd=_sum_cost(r.cost_usd for r in roots),
        error_count=sum(r.error_count for r in roots),
    )


def _preorder(tops: list[TraceEntry], children: dict[str, list[TraceEntry]]) -> list[TraceEntry]:
    out: list[TraceEntry] = []
    stack = list(reversed(tops))
    while stack:
        entry = stack.pop()
        out.append(entry)
        stack.extend(reversed(children.get(entry.id, ())))
    return out
