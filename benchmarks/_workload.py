"""The span shape every benchmark uses: agent -> 3 LLM calls -> 2 tool calls each (10 spans a
trace), every span carrying 10 GenAI attributes, made in a tight loop."""

from __future__ import annotations

import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

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
