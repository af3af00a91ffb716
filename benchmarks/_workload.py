"""The span shape every benchmark uses: agent -> 3 LLM calls -> 2 tool calls each (10 spans a
trace), every span carrying 10 GenAI attributes, made in a tight loop; and how the benchmarks
measure a process's memory."""

from __future__ import annotations

import random
import resource
import sys
import time
from collections.abc import Iterator

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, Tracer

SPANS_PER_TRACE = 10

ATTRIBUTES = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.output_tokens": 45,
    "gen_ai.request.temperature": 0.2,
    "gen_ai.request.max_tokens": 512,
    "gen_ai.response.id": "chatcmpl-0123456789",
    "gen_ai.response.finish_reasons": ("stop",),
}


class DiscardExporter(SpanExporter):
    """The floor: an exporter that only counts."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans):  # type: ignore[no-untyped-def]
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def burst(provider: TracerProvider, spans: int) -> tuple[int, float]:
    """Make ``spans`` nested spans as fast as possible; returns (count, seconds)."""
    tracer = provider.get_tracer("benchmark")
    made = 0
    start = time.perf_counter()
    while made < spans:
        with tracer.start_as_current_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"}):
            made += 1
            for _ in range(3):
                with tracer.start_as_current_span("chat gpt-4o", attributes=ATTRIBUTES):
                    made += 1
                    for _ in range(2):
                        with tracer.start_as_current_span("execute_tool lookup", attributes=ATTRIBUTES):
                            made += 1
    return made, time.perf_counter() - start


def trace(tracer: Tracer) -> int:
    """One trace of the burst's shape, made through ``tracer``; returns the spans made (10)."""
    with tracer.start_as_current_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"}):
        for _ in range(3):
            with tracer.start_as_current_span("chat gpt-4o", attributes=ATTRIBUTES):
                for _ in range(2):
                    with tracer.start_as_current_span("execute_tool lookup", attributes=ATTRIBUTES):
                        pass
    return SPANS_PER_TRACE


def finished_traces(spans: int, seed: int = 1) -> Iterator[list[ReadableSpan]]:
    """Ended spans of the burst's shape, a trace at a time, children first (the order they end),
    built directly rather than through a tracer: the same rows for a fraction of the SDK's cost,
    for filling a file before a measurement. The traces lie in the past, 1 ms apart."""
    rng = random.Random(seed)
    res = TracerProvider(shutdown_on_exit=False).resource  # the resource a burst's spans carry
    scope = InstrumentationScope("benchmark")
    agent = BoundedAttributes(attributes={"gen_ai.operation.name": "invoke_agent"}, immutable=True)
    attrs = BoundedAttributes(attributes=ATTRIBUTES, immutable=True)
    at = time.time_ns() - (spans // SPANS_PER_TRACE + 1) * 1_000_000

    def span(
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: BoundedAttributes,
        start: int,
        end: int,
    ) -> ReadableSpan:
        return ReadableSpan(
            name=name,
            context=context,
            parent=parent,
            resource=res,
            attributes=attributes,
            kind=SpanKind.INTERNAL,
            start_time=start,
            end_time=end,
            instrumentation_scope=scope,
        )

    for _ in range(0, spans, SPANS_PER_TRACE):
        trace_id = rng.getrandbits(128)
        root = SpanContext(trace_id, rng.getrandbits(64), False, TraceFlags(1))
        out = []
        for call in range(3):
            llm = SpanContext(trace_id, rng.getrandbits(64), False, TraceFlags(1))
            began = at + 1_000 + call * 200_000
            for tool in range(2):
                step = SpanContext(trace_id, rng.getrandbits(64), False, TraceFlags(1))
                ended = began + 50_000 + tool
                out.append(span("execute_tool lookup", step, llm, attrs, began + 10 + tool, ended))
            out.append(span("chat gpt-4o", llm, root, attrs, began, began + 150_000))
        out.append(span("agent", root, None, agent, at, at + 800_000))
        at += 1_000_000
        yield out


# -- memory -----------------------------------------------------------------------------------------
#
# Peak RSS growth over a stretch of a process's life: Linux keeps the peak (VmHWM) itself, and
# writing 5 to /proc/self/clear_refs resets it to the current RSS, so reset, run, read. This costs
# nothing while the stretch runs and sees every page the process touched (the interpreter's heap,
# SQLite's page cache, thread stacks), which tracemalloc, besides being slow, would not. Without
# clear_refs the lifetime peak (ru_maxrss) is the fallback: right when nothing before the stretch
# used more memory than it, as holds for a process that only imported its modules.


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """The process's resident memory now."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_rss_bytes()


def reset_peak_rss() -> str:
    """Start a fresh peak; returns how the peak is measured (for the report)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return "VmHWM reset through /proc/self/clear_refs"
    except OSError:
        return "ru_maxrss (lifetime peak: /proc/self/clear_refs is not available)"


def peak_rss_bytes() -> int:
    """The peak resident memory since reset_peak_rss() (or since the process started)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
