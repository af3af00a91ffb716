"""configure(): the two-line setup. A global TracerProvider writing to SQLite, plus the installed
GenAI instrumentations, one per client library so no call is traced twice, each activated when the
application imports its client library (importing them all at once took seconds)."""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import Distribution, EntryPoint, entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import get_logger_provider, set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from otel_sqlite_exporter._log_exporter import SQLiteLogExporter
from otel_sqlite_exporter._processor import SQLiteSpanProcessor

logger = logging.getLogger("otel_sqlite_exporter")

# Instrumentor entry-point names (the client library they instrument) that trace GenAI calls.
GENAI_LIBRARIES = frozenset(
    {
        "openai", "anthropic", "google_genai", "google_generativeai", "vertexai", "bedrock", "cohere",
        "mistralai", "groq", "ollama", "together", "replicate", "watsonx", "alephalpha", "writer",
        "langchain", "llama_index", "crewai", "openai_agents", "haystack", "dspy", "litellm", "agno",
        "smolagents", "autogen", "pydantic_ai", "mcp", "claude_agent_sdk", "google_adk", "strands",
    }
)  # fmt: skip
# When several distributions instrument the same client, the first match here wins: an exact
# distribution name, else a name prefix. OpenTelemetry's own GenAI instrumentation follows the
# current semantic conventions, so it comes first.
DEFAULT_PREFERENCE = (
    "opentelemetry-instrumentation-openai-v2",
    "opentelemetry-instrumentation-google-genai",
    "opentelemetry-instrumentation-",
    "openinference-instrumentation-",
)

CAPTURE_MESSAGES_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

_lock = threading.Lock()
_configured: tuple[TracerProvider, SQLiteSpanProcessor] | None = None


def configure(
    path: str | os.PathLike[str] = "traces.db",
    *,
    service_name: str | None = None,
    instrument: bool | Sequence[str] = True,
    logs: bool = True,
    **options: Any,
) -> TracerProvider:
    """Send every span of this process to the SQLite file at ``path``; returns the TracerProvider.

    ``instrument=True`` activates each installed GenAI instrumentation (one per client library,
    see ``DEFAULT_PREFERENCE``); a sequence of distribution names (or name prefixes) is preferred
    over the default order; ``False`` activates none. ``logs=True`` sends OpenTelemetry log
    records to the same file (:class:`SQLiteLogExporter`): GenAI content events onto their span,
    the others into the ``logs`` table. ``options`` go to :class:`SQLiteSpanProcessor`. Calling it
    again returns the same provider without adding a second processor.
    """
    global _configured
    with _lock:
        if _configured is not None:
            provider, processor = _configured
            if os.path.abspath(processor.options.path) != os.path.abspath(os.fspath(path)):
                logger.warning(
                    "configure() was already called for %s; spans keep going there, not to %s",
                    processor.options.path,
                    os.fspath(path),
                )
            return provider
        processor = SQLiteSpanProcessor(path, **options)
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            # Someone (e.g. opentelemetry-instrument) set an SDK provider already: add to it.
            provider = current
        else:
            attributes = {SERVICE_NAME: service_name} if service_name else {}
            provider = TracerProvider(resource=Resource.create(attributes))
            trace.set_tracer_provider(provider)
        provider.add_span_processor(processor)
        if logs:
            provider.add_span_processor(_send_logs(processor, provider.resource))
        _configured = (provider, processor)
    if instrument:
        if processor.options.capture_content:
            # OpenTelemetry's GenAI instrumentations record no prompts unless asked; the user's
            # own setting, if any, stands.
            os.environ.setdefault(CAPTURE_MESSAGES_ENV, "SPAN_ONLY")
        preference = tuple(instrument) if not isinstance(instrument, bool) else ()
        chosen = instrument_genai(provider, preference=(*preference, *DEFAULT_PREFERENCE))
        logger.info(
            "otel-sqlite-exporter: GenAI instrumentation by %s",
            ", ".join(chosen) or "none installed",
        )
    return provider


class _LogsAlongside(SpanProcessor):
    """Flushes and shuts down the log records' processor with the spans': whoever calls
    ``force_flush()`` or ``shutdown()`` on the TracerProvider finds the GenAI content in the file too."""

    def __init__(self, logs: BatchLogRecordProcessor) -> None:
        self._logs = logs

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._logs.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._logs.shutdown()


def _send_logs(processor: SQLiteSpanProcessor, resource: Resource) -> SpanProcessor:
    """Log records to the same file: added to an SDK LoggerProvider already set, else to a new one."""
    logs = BatchLogRecordProcessor(SQLiteLogExporter.from_options(processor.options))
    current = get_logger_provider()
    if isinstance(current, LoggerProvider):
        current.add_log_record_processor(logs)
    else:
        provider = LoggerProvider(resource=resource)
        provider.add_log_record_processor(logs)
        set_logger_provider(provider)
        if get_logger_provider() is not provider:  # another provider came first (one is allowed)
            logger.warning(
                "otel-sqlite-exporter: a logger provider is already set; GenAI content sent as log "
                "records will not reach %s",
                processor.options.path,
            )
    return _LogsAlongside(logs)


def genai_instrumentors(preference: Sequence[str] = DEFAULT_PREFERENCE) -> dict[str, EntryPoint]:
    """The installed GenAI instrumentor entry points, the preferred one per client library."""
    disabled = {
        name.strip()
        for name in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
        if name
    }
    chosen: dict[str, tuple[int, EntryPoint]] = {}
    for ep in entry_points(group="opentelemetry_instrumentor"):
        dist = (ep.dist.name if ep.dist is not None else "").lower().replace("_", "-")
        library = ep.name.lower().replace("-", "_").removesuffix("_v2")
        if ep.name in disabled or dist in disabled:
            continue
        if library not in GENAI_LIBRARIES and not dist.startswith("openinference-instrumentation-"):
            continue
        rank = _rank(dist, preference)
        if library not in chosen or rank < chosen[library][0]:
            chosen[library] = (rank, ep)
    return {library: ep for library, (_, ep) in sorted(chosen.items())}


def instrument_genai(
    provider: TracerProvider, *, preference: Sequence[str] = DEFAULT_PREFERENCE
) -> list[str]:
    """Activate the chosen instrumentors for ``provider``, each once the application imports the
    client library it instruments (at once if it has already); returns the distributions chosen.

    Loading an instrumentor imports its client library, and some take a second or more to import:
    an application would pay for every installed one at start, used or not. The library's
    modules come from the instrumentor's own requirements; without ``wrapt`` (which every
    OpenTelemetry instrumentation needs), or when the requirements name none, it is activated at once.
    """
    chosen = []
    for library, ep in genai_instrumentors(preference).items():
        dist = ep.dist.name if ep.dist is not None else ep.value
        try:
            if _missing_library(ep):
                continue
            modules = _client_modules(ep.dist) if ep.dist is not None else []
            when_imported = _post_import_hook() if modules else None
            activate = functools.partial(_activate, ep, dist, library, provider)
            if when_imported is None:
                activate()
            else:
                for module in modules:  # each activates it; the first one imported does
                    when_imported(lambda _module, activate=activate: activate(), module)
        except Exception as exc:  # noqa: BLE001 - unreadable metadata must not stop the app
            logger.warning("otel-sqlite-exporter: could not activate %s for %s: %s", dist, library, exc)
            continue
        chosen.append(dist)
    return chosen


def _activate(ep: EntryPoint, dist: str, library: str, provider: TracerProvider) -> None:
    try:
        instrumentor = ep.load()()
        if getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
            return
        instrumentor.instrument(tracer_provider=provider)
    except Exception as exc:  # noqa: BLE001 - a broken instrumentation must not stop the app
        logger.warning("otel-sqlite-exporter: could not activate %s for %s: %s", dist, library, exc)
        return
    logger.debug("otel-sqlite-exporter: %s instruments %s", dist, library)


def _post_import_hook() -> Callable[[Callable[[Any], None], str], None] | None:
    try:
        from wrapt import register_post_import_hook
    except ImportError:
        return None
    return register_post_import_hook  # type: ignore[no-any-return]


def _client_modules(dist: Distribution) -> list[str]:
    """The importable packages of the client libraries an instrumentation instruments: the
    distributions its ``instruments`` extra requires, each package the outermost one with an
    ``__init__.py`` (``google.genai``, not the namespace ``google``)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return []
    modules: list[str] = []
    for text in dist.requires or ():
        try:
            requirement = Requirement(text)
        except ValueError:  # InvalidRequirement: not one this instrumentation can be waiting for
            continue
        marker = requirement.marker
        if marker is None or not any(
            marker.evaluate({"extra": extra}) for extra in ("instruments", "instruments-any")
        ):
            continue
        try:
            files = Distribution.from_name(requirement.name).files or ()
        except Exception:  # noqa: BLE001 - not installed, or unreadable metadata: not watched
            continue
        packages = sorted(
            {".".join(f.parts[:-1]) for f in files if f.name == "__init__.py" and ".." not in f.parts},
            key=len,
        )
        for package in packages:
            if not any(package.startswith(outer + ".") for outer in modules):
                modules.append(package)
    return modules


def _rank(dist: str, preference: Sequence[str]) -> int:
    for index, wanted in enumerate(preference):
        wanted = wanted.lower().replace("_", "-")
        if dist == wanted or (wanted.endswith("-") and dist.startswith(wanted)):
            return index
    return len(preference)


def _missing_library(ep: EntryPoint) -> bool:
    """True when the client library an instrumentor needs is not installed (or the wrong version)."""
    if ep.dist is None:
        return False
    try:
        from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts
    except ImportError:
        return False
    return get_dist_dependency_conflicts(ep.dist) is not None
