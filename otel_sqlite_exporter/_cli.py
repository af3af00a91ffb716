"""The ``otel-sqlite`` command: read a trace file from the shell, and sweep it.

Everything goes through ``TraceStore``, which binds every value as a parameter, so no argument is
ever read as SQL. The file is opened read-only and never changed, except by ``sweep`` (without
``--dry-run``) and ``settings retention-days N``.

Exit codes: 0 success, 1 not found (a session, span or the file itself) or an unreadable file,
2 a usage error (a bad option or value). Messages go to stderr as ``otel-sqlite: error: ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import signal
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import IO, Any, NoReturn

from otel_sqlite_exporter import _render
from otel_sqlite_exporter._config import parse_size
from otel_sqlite_exporter._exceptions import ConfigurationError, NotFoundError, OtelSQLiteError, QueryError
from otel_sqlite_exporter._normalize import SPAN_TYPES
from otel_sqlite_exporter._query import TraceStore
from otel_sqlite_exporter._records import BUDGET_STATUSES, SESSION_STATUSES, SPAN_STATUSES
from otel_sqlite_exporter._redact import scrub_file
from otel_sqlite_exporter._retention import RETENTION_SETTING, RetentionSweeper

PROG = "otel-sqlite"
EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2
# What a shell reports for a program ended by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
# Stands for the newest session wherever a SESSION_ID is asked for.
LATEST = "latest"
_SESSION_HELP = "a session id, or 'latest' for the newest session"

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# Sessions read per query when exporting them all.
_EXPORT_PAGE = 500
# The file keeps times as signed 64-bit nanoseconds and SQLite binds signed 64-bit integers: values
# beyond are refused here with a usage message (the store does not check them itself).
_INT64_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EARLIEST = _EPOCH + timedelta(microseconds=-_INT64_MAX // 1000 + 1)
_LATEST = _EPOCH + timedelta(microseconds=_INT64_MAX // 1000)


class _UsageError(Exception):
    """A usage error found after parsing (exit code 2)."""


class _WriteError(Exception):
    """The output file cannot be written (exit code 1)."""


# -- argument types ------------------------------------------------------------------------------


def _time(text: str) -> datetime:
    """ISO-8601 (naive means UTC) or a time ago (``30m``, ``2h``, ``7d``) as an aware UTC datetime."""
    value = text.strip()
    parsed: datetime | None
    ago = _AGO.fullmatch(value)
    if ago:
        try:
            seconds = float(ago.group(1)) * _UNIT_SECONDS[ago.group(2)]
            parsed = datetime.now(timezone.utc) - timedelta(seconds=seconds)
        except OverflowError:  # before year 1
            parsed = None
        return _in_range(text, parsed)
    try:
        # Python 3.10's fromisoformat does not read a trailing "Z".
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time (2026-01-31T14:00:00Z) or a time ago (30m, 2h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        parsed = parsed.astimezone(timezone.utc)
    except OverflowError:  # an offset moving it past year 1 or 9999
        parsed = None
    return _in_range(text, parsed)


def _in_range(text: str, value: datetime | None) -> datetime:
    if value is None or not _EARLIEST <= value <= _LATEST:
        raise argparse.ArgumentTypeError(
            f"{text!r} is outside the times a trace file holds ({_EARLIEST:%Y-%m-%d} to {_LATEST:%Y-%m-%d})"
        )
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= _INT64_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {_INT64_MAX}, got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds >= 0, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if value > _INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is larger than any SQLite file can be")
    return value


def _lower(text: str) -> str:
    return text.lower()


# -- output --------------------------------------------------------------------------------------


class _Output:
    """Where a command writes: stdout (or a file), styled or plain."""

    def __init__(self, stream: IO[str], color: bool) -> None:
        self.stream = stream
        self.style = _render.Style(color)

    def line(self, text: str = "", *, flush: bool = False) -> None:
        self.stream.write(text + "\n")
        if flush:
            self.stream.flush()

    def json(self, value: Any) -> None:
        self.line(json.dumps(value, indent=2, ensure_ascii=False))


def _use_color(choice: str, stream: IO[str]) -> bool:
    if choice == "always":
        return True
    if choice == "never":
        return False
    return _isatty(stream) and not os.environ.get("NO_COLOR")


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _utf8_stdout() -> None:
    # JSON and text are UTF-8 whatever the locale when piped or redirected; on a terminal that
    # cannot show a character, it is replaced rather than failing the command.
    stream = sys.stdout
    if not hasattr(stream, "reconfigure"):
        return
    if _isatty(stream):
        stream.reconfigure(errors="replace")
    else:
        stream.reconfigure(encoding="utf-8", errors="strict")


def _error(message: str) -> None:
    _warn(message, "error")


def _warn(message: str, kind: str = "warning") -> None:
    try:
        sys.stderr.write(f"{PROG}: {kind}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# -- commands ------------------------------------------------------------------------------------


def _cmd_sessions(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    sessions = store.get_sessions(
        args.limit,
        args.offset,
        status=args.status,
        since=args.since,
        until=args.until,
        user_id=args.user,
        budget_status=args.budget_status,
    )
    if args.json:
        out.json([s.to_dict() for s in sessions])
    elif sessions:
        out.line(_render.sessions_table(sessions, out.style))
    else:
        out.line("no sessions match")
    return EXIT_OK


def _cmd_show(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    if args.json:
        out.json(store.export_session(args.session_id))
    else:
        out.line(store.format_tree(args.session_id, color=out.style.color))
    return EXIT_OK


def _cmd_timeline(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    if args.json:
        out.json([e.to_dict() for e in store.session_timeline(args.session_id)])
    else:
        out.line(store.format_timeline(args.session_id, color=out.style.color))
    return EXIT_OK


def _cmd_summary(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    report = store.session_summary(args.session_id, slowest=args.slowest)
    if args.json:
        out.json(report.to_dict())
    else:
        out.line(_render.summary(report, out.style))
    return EXIT_OK


def _cmd_spans(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    entries = store.get_traces(
        args.session,
        args.type,
        args.since,
        args.until,
        args.search,
        trace_id=args.trace,
        name=args.name,
        status=args.status,
        model=args.model,
        min_duration_ms=args.min_duration,
        limit=args.limit,
        offset=args.offset,
    )
    if args.json:
        out.json([e.to_dict() for e in entries])
    elif entries:
        out.line(_render.spans_table(entries, out.style, with_session=args.session is None))
    else:
        out.line("no spans match")
    return EXIT_OK


def _cmd_span(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    entry = store.get_span(args.span_id, args.trace)
    if entry is None:
        where = f" of trace {args.trace!r}" if args.trace is not None else ""
        raise NotFoundError(f"no span {args.span_id!r}{where} in {store.path}")
    if args.json:
        out.json(entry.to_dict())
    else:
        out.line(_render.span_detail(entry, out.style))
    return EXIT_OK


def _cmd_search(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    hits = store.search(args.text, session_id=args.session, limit=args.limit, raw=args.raw)
    if args.json:
        out.json([h.to_dict() for h in hits])
    elif hits:
        out.line(_render.search_hits(hits, out.style))
    else:
        out.line("no spans match")
    return EXIT_OK


def _cmd_stats(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    stats = store.stats()
    if args.json:
        out.json(stats.to_dict())
    else:
        out.line(_render.store_stats(stats, out.style))
    return EXIT_OK


def _cmd_tail(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    # Ctrl-C (or a SIGINT from timeout(1)) ends the follow at its next look, whatever the command
    # is doing at that moment, instead of raising wherever it lands.
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        follow = store.follow(
            session_id=args.session, backlog=args.lines, interval_seconds=args.interval, stop=stop
        )
        for entry in follow:
            if args.json:
                event = "start" if entry.end_time is None else "end"
                line = json.dumps({"event": event, **entry.to_dict()}, ensure_ascii=False)
            else:
                line = _render.tail_line(entry, out.style, with_session=args.session is None)
            # Flushed line by line: whoever reads a pipe sees each span as it happens.
            out.line(line, flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    return EXIT_OK


def _cmd_export(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    if args.output is not None:
        target = os.path.realpath(args.output)
        if target in {os.path.realpath(store.path + suffix) for suffix in ("", "-wal", "-shm", "-journal")}:
            raise _UsageError(f"--output {args.output!r} is the trace file itself")
    if args.session_id is not None:
        ids = [args.session_id]
        # A missing session fails before anything (or any output file) is written.
        if store.get_session(args.session_id) is None:
            raise NotFoundError(f"no session {args.session_id!r} in {store.path}")
    else:
        ids = _all_session_ids(store)
    write = _EXPORTERS[args.format]
    if args.output is None:
        write(store, ids, args.session_id is None, out.stream)
        return EXIT_OK
    _write_atomically(args.output, lambda handle: write(store, ids, args.session_id is None, handle))
    return EXIT_OK


def _cmd_sweep(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    # The file's setting is read here, so that a bad one fails the command instead of being skipped.
    days = args.days if args.days is not None else store.get_retention_days()
    sweeper = RetentionSweeper(store.path, retention_days=days, max_db_bytes=args.max_size)
    if args.dry_run:
        plan = sweeper.plan()
        if args.json:
            out.json({"dry_run": True, **plan.to_dict()})
        else:
            out.line(_render.sweep_plan(plan, out.style, limit=args.limit))
        return EXIT_OK
    try:
        result = sweeper.sweep_once()
    finally:
        sweeper.close()
    if args.json:
        out.json({"dry_run": False, **result.to_dict()})
    else:
        out.line(_render.sweep_result(result, out.style))
    return EXIT_OK


def _cmd_redact(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    try:
        patterns = [re.compile(p) for p in args.pattern]
    except re.error as exc:
        raise ConfigurationError(f"--pattern: not a valid regular expression: {exc}") from None
    store.close()  # the rebuild at the end wants no other connection of ours open
    result = scrub_file(store.path, redact=not args.no_defaults, patterns=patterns, dry_run=args.dry_run)
    if args.json:
        out.json(dataclasses.asdict(result))
        return EXIT_OK
    verb = "would change" if result.dry_run else "changed"
    counts = (
        f"{_render.plural(result.spans_changed, 'span')} of {result.spans_scanned:,}",
        _render.plural(result.resources_changed, "resource"),
        _render.plural(result.traces_changed, "trace"),
        _render.plural(result.logs_changed, "log record"),
    )
    out.line(f"{verb} {', '.join(counts)}")
    if not result.dry_run and result.changed and not (result.checkpointed and result.vacuumed):
        _warn(
            "the old text may still sit in the file's free space or write-ahead log while another "
            "process has it open; run the command again once it is closed"
        )
    return EXIT_OK


def _cmd_settings(store: TraceStore, args: argparse.Namespace, out: _Output) -> int:
    if args.value is not None:
        store.set_retention_days(args.value)
    if args.name is not None:
        days = store.get_retention_days()
        if args.json:
            out.json({RETENTION_SETTING: days})
        else:
            out.line(str(days))
        return EXIT_OK
    settings = store.get_settings()
    if args.json:
        out.json({key: _number_or_text(value) for key, value in settings.items()})
    else:
        out.line(_render.settings_table(settings, out.style))
    return EXIT_OK


def _number_or_text(value: str | None) -> int | str | None:
    if value is not None and value.isascii() and value.isdigit():
        return int(value)
    return value


def _all_session_ids(store: TraceStore) -> list[str]:
    """Every session, oldest first."""
    ids: list[str] = []
    while True:
        page = store.get_sessions(_EXPORT_PAGE, len(ids))
        ids.extend(s.id for s in page)
        if len(page) < _EXPORT_PAGE:
            return ids[::-1]


def _present(ids: Iterable[str], read: Callable[[str], Any]) -> Iterator[Any]:
    for session_id in ids:
        try:
            yield read(session_id)
        except NotFoundError:
            # Listed a moment ago and gone now (the file was pruned meanwhile): nothing to export.
            continue


def _json_array(items: Iterable[Any], handle: IO[str], indent: str = "") -> None:
    """A JSON array written item by item, so a whole file never has to fit in memory."""
    handle.write("[")
    first = True
    for item in items:
        text = json.dumps(item, indent=2, ensure_ascii=False).replace("\n", "\n  " + indent)
        handle.write(("\n  " if first else ",\n  ") + indent + text)
        first = False
    handle.write("]" if first else "\n" + indent + "]")


def _export_json(store: TraceStore, ids: list[str], many: bool, handle: IO[str]) -> None:
    if many:
        _json_array(_present(ids, store.export_session), handle)
    else:
        handle.write(json.dumps(store.export_session(ids[0]), indent=2, ensure_ascii=False))
    handle.write("\n")


def _export_jsonl(store: TraceStore, ids: list[str], many: bool, handle: IO[str]) -> None:
    for timeline in _present(ids, store.session_timeline) if many else [store.session_timeline(ids[0])]:
        for entry in timeline:
            # Each span's dict already names its session, so the lines stand on their own.
            handle.write(json.dumps(entry.to_dict(), ensure_ascii=False) + "\n")


def _export_otlp(store: TraceStore, ids: list[str], many: bool, handle: IO[str]) -> None:
    docs = _present(ids, store.export_otlp_json) if many else [store.export_otlp_json(ids[0])]
    handle.write('{\n  "resourceSpans": ')
    _json_array((rs for doc in docs for rs in doc["resourceSpans"]), handle, indent="  ")
    handle.write("\n}\n")


_EXPORTERS: dict[str, Callable[[TraceStore, list[str], bool, IO[str]], None]] = {
    "json": _export_json,
    "jsonl": _export_jsonl,
    "otlp": _export_otlp,
}


def _write_atomically(path: str, write: Callable[[IO[str]], None]) -> None:
    """Write to a new file beside ``path``, then rename it over ``path``: a failed or interrupted
    export leaves any earlier file as it was, never half written."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".otel-sqlite-", suffix=".tmp")
    except OSError as exc:
        raise _WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise _WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


# -- the parser ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with every usage error reported as ``otel-sqlite: error: ...`` (a subcommand's
    parser would otherwise name itself ``otel-sqlite COMMAND``)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _common(json_output: bool = True) -> argparse.ArgumentParser:
    """Options every command takes: the global ones again (so they may follow the command)."""
    parent = _Parser(add_help=False)
    parent.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parent.add_argument(
        "--color", choices=("auto", "always", "never"), default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    if json_output:
        parent.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parent


def _time_window(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--since", type=_time, metavar="TIME", help=f"{what} at or after TIME (ISO-8601 or 30m, 2h, 7d ago)"
    )
    parser.add_argument("--until", type=_time, metavar="TIME", help=f"{what} before TIME")


def _paging(parser: argparse.ArgumentParser, limit: int) -> None:
    parser.add_argument(
        "--limit", type=_count, default=limit, metavar="N", help=f"at most N (default {limit})"
    )
    parser.add_argument("--offset", type=_count, default=0, metavar="N", help="skip the first N")


def build_parser() -> argparse.ArgumentParser:
    from otel_sqlite_exporter import __version__

    parser = _Parser(
        prog=PROG,
        description="Read an otel-sqlite-exporter trace file (sessions, span trees, search, export) "
        "and sweep it (retention).",
        epilog="Exit codes: 0 success, 1 not found or unreadable file, 2 usage error.",
    )
    parser.add_argument(
        "--db",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the trace file (default: $OTEL_EXPORTER_SQLITE_PATH, else ./traces.db)",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default=argparse.SUPPRESS,
        help="colour the output: auto (default) colours a terminal unless NO_COLOR is set",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[..., int], help_text: str, **kw: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[_common(**kw)])
        sub.set_defaults(run=run)
        return sub

    sessions = command("sessions", _cmd_sessions, "list sessions, newest first")
    _paging(sessions, 50)
    sessions.add_argument(
        "--status", type=_lower, choices=SESSION_STATUSES, help="only sessions in this state"
    )
    _time_window(sessions, "sessions started")
    sessions.add_argument("--user", metavar="USER_ID", help="only this user's sessions")
    sessions.add_argument(
        "--budget-status",
        type=_lower,
        choices=BUDGET_STATUSES,
        help="only sessions at this point of their token budget",
    )

    show = command("show", _cmd_show, "a session as a tree of spans, errors highlighted")
    show.add_argument("session_id", metavar="SESSION_ID", help=_SESSION_HELP)

    timeline = command("timeline", _cmd_timeline, "a session's spans in start order, with offsets")
    timeline.add_argument("session_id", metavar="SESSION_ID", help=_SESSION_HELP)

    summary = command("summary", _cmd_summary, "a session at a glance: usage by model, errors, slowest spans")
    summary.add_argument("session_id", metavar="SESSION_ID", help=_SESSION_HELP)
    summary.add_argument("--slowest", type=_count, default=5, metavar="N", help="list the N slowest spans")

    spans = command("spans", _cmd_spans, "spans matching every filter given, in start order")
    spans.add_argument("--session", metavar="SESSION_ID", help="spans of this session")
    spans.add_argument("--type", type=_lower, choices=SPAN_TYPES, help="spans of this type")
    spans.add_argument("--name", help="spans of exactly this name")
    spans.add_argument("--status", type=_lower, choices=SPAN_STATUSES, help="spans in this state")
    spans.add_argument("--model", help="spans of this model")
    _time_window(spans, "spans started")
    spans.add_argument("--search", metavar="TEXT", help="spans whose name or text contain every word")
    spans.add_argument("--trace", metavar="TRACE_ID", help="spans of this trace")
    spans.add_argument("--min-duration", type=_milliseconds, metavar="MS", help="spans lasting at least MS")
    _paging(spans, 100)

    span = command("span", _cmd_span, "one span in full: attributes, events, links, input and output text")
    span.add_argument("span_id", metavar="SPAN_ID")
    span.add_argument("--trace", metavar="TRACE_ID", help="the span's trace, when span ids repeat")

    search = command("search", _cmd_search, "full-text search of span names and input/output text")
    search.add_argument("text", metavar="TEXT")
    search.add_argument("--session", metavar="SESSION_ID", help="only this session's spans")
    search.add_argument("--limit", type=_count, default=50, metavar="N", help="at most N (default 50)")
    search.add_argument("--raw", action="store_true", help='TEXT is an FTS5 query ("phrase", OR, NOT, pre*)')

    export = command(
        "export",
        _cmd_export,
        "a session (or every session) as JSON, JSON lines or OTLP/JSON",
        json_output=False,
    )
    export.add_argument(
        "session_id", metavar="SESSION_ID", nargs="?", help="the session, or 'latest' (default: all)"
    )
    export.add_argument(
        "--format",
        choices=tuple(_EXPORTERS),
        default="json",
        help="json: one document; jsonl: one object per span; otlp: OTLP/JSON (default json)",
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    command("stats", _cmd_stats, "the file at a glance: size, counts, time range, usage by model")

    sweep = command(
        "sweep",
        _cmd_sweep,
        "delete sessions past the retention period (or over a size cap) and give the space back",
    )
    sweep.add_argument(
        "--days",
        type=_count,
        metavar="N",
        help="delete sessions with no activity for N days (default: the file's retention_days; 0 keeps all)",
    )
    sweep.add_argument(
        "--max-size",
        type=_size,
        metavar="SIZE",
        help="then delete the oldest sessions until the data is under SIZE (bytes, or 500MB, 2GiB)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="print what would go and change nothing")
    sweep.add_argument(
        "--limit",
        type=_count,
        default=50,
        metavar="N",
        help="a dry run lists at most N sessions (default 50)",
    )
    sweep.set_defaults(writes=lambda args: not args.dry_run)

    redact = command(
        "redact",
        _cmd_redact,
        "replace API keys and tokens already stored in the file with [REDACTED], and wipe the old bytes",
    )
    redact.add_argument("--dry-run", action="store_true", help="count what would change and change nothing")
    redact.add_argument(
        "--pattern",
        action="append",
        default=[],
        metavar="REGEX",
        help="also redact what this regular expression matches (repeatable)",
    )
    redact.add_argument(
        "--no-defaults", action="store_true", help="only the --pattern expressions, not the built-in rules"
    )

    settings = command(
        "settings", _cmd_settings, "print the file's settings; 'settings retention-days N' sets the retention"
    )
    settings.add_argument(
        "name", nargs="?", choices=("retention-days",), metavar="retention-days", help="the setting"
    )
    settings.add_argument(
        "value", nargs="?", type=_count, metavar="N", help="keep sessions N days after their last activity"
    )
    settings.set_defaults(writes=lambda args: args.value is not None)

    tail = command("tail", _cmd_tail, "follow new spans as they start and end, until Ctrl-C")
    tail.add_argument("--session", metavar="SESSION_ID", help="only this session's spans")
    tail.add_argument(
        "-n", "--lines", type=_count, default=10, metavar="N", help="first show the last N spans (default 10)"
    )
    tail.add_argument(
        "--interval", type=_seconds, default=0.5, metavar="SECONDS", help="how often to look (default 0.5)"
    )
    return parser


# -- main ----------------------------------------------------------------------------------------


def run() -> NoReturn:
    """The ``otel-sqlite`` command: :func:`main`, then exit with its code."""
    code = main()
    # timeout(1) signals the command and then its whole process group, so a second SIGINT may
    # come once ``tail`` has stopped on the first: it must not turn a clean exit into 130.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage message or the help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    _utf8_stdout()
    path = getattr(args, "db", None) or os.environ.get("OTEL_EXPORTER_SQLITE_PATH") or "traces.db"
    out = _Output(sys.stdout, _use_color(getattr(args, "color", "auto"), sys.stdout))
    writes = getattr(args, "writes", None)
    try:
        with TraceStore(path, readonly=not (writes is not None and writes(args))) as store:
            if getattr(args, "session_id", None) == LATEST:
                args.session_id = _latest_session(store)
            code = args.run(store, args, out)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        _flush_quietly()
        return EXIT_OK if args.command == "tail" else EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep the interpreter's own final
        # flush from failing again on the closed pipe.
        _silence_stdout()
        return EXIT_OK
    except (_UsageError, QueryError, ConfigurationError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except (OtelSQLiteError, _WriteError) as exc:  # not found, or a missing or unusable file
        _error(str(exc))
        return EXIT_NOT_FOUND
    except sqlite3.Error as exc:
        # Damage found while reading (a corrupt page, a file locked for too long).
        _error(f"{os.path.abspath(path)}: {exc}")
        return EXIT_NOT_FOUND
    except OSError as exc:  # stdout itself failing (a full disk behind a redirect)
        _error(f"cannot write the output: {exc.strerror or exc}")
        _silence_stdout()
        return EXIT_NOT_FOUND


def _latest_session(store: TraceStore) -> str:
    """The newest session's id: what ``latest`` stands for, unless a session has that very id."""
    if store.get_session(LATEST) is not None:
        return LATEST
    newest = store.get_sessions(1)
    if not newest:
        raise NotFoundError(f"no sessions in {store.path}")
    return newest[0].id


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """Point stdout at the null device: what is still buffered for it can no longer be delivered,
    and the interpreter's final flush would otherwise fail on it again, with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
