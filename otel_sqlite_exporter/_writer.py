"""Write: one batch of spans (and session lifecycle events) into the trace file, in one transaction.

The batch reaches SQLite as JSON documents, the parameters of a single statement, and everything
else happens inside SQLite: staging, picking the normalised columns from each span's attributes
(the table from ``_normalize``), pricing, sessions, the upsert, the innermost-usage marks and the
rollups.

Why this shape: the sqlite3 module releases the GIL while SQLite works and must take it back
after every statement step (every row of an ``executemany``). While the traced application keeps
the interpreter busy, each take-back can wait a whole switch interval (5 ms). So the steps run as
one statement, through a temp trigger (``_WRITE_TRIGGER``), which is its own transaction: the
writer takes the GIL back once per batch, and SQLite does the per-row work on the other core.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from otel_sqlite_exporter._budget import BUDGET_STATUSES, BudgetMark
from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._content import CONTENT_EVENTS
from otel_sqlite_exporter._exceptions import TraceFileError
from otel_sqlite_exporter._health import WriteHealth
from otel_sqlite_exporter._normalize import (
    CLIENT_LIBRARY_SCOPES,
    COUNT_SLOTS,
    FLAG_ROOT,
    HEAD_LAYOUT,
    HEAD_NAME_AT,
    KIND_NAMES,
    OPTIONAL_FLAGS,
    ROW_ELEMENTS,
    SLOT_KEYS,
    SPAN_TYPES,
    STATUS_NAMES,
    SpanMapper,
    attribute_key_rows,
    to_json,
)
from otel_sqlite_exporter._owners import interrupt_dead_sessions
from otel_sqlite_exporter._pricing import PriceTable
from otel_sqlite_exporter._schema import WRITER_CACHE_KIB, connect

logger = logging.getLogger("otel_sqlite_exporter")

_TOKENS = COUNT_SLOTS
# Rows built and encoded together (see TraceWriter.prepare).
_ENCODE_CHUNK = 64
_SLOTS = tuple(SLOT_KEYS)
_ELEMENT = {name: index for index, name in enumerate(ROW_ELEMENTS)}

# -- step 1: stage the batch and normalise it ----------------------------------------------------


def _head_field(field: str, at: int, width: int) -> str:
    # Numbers are zero-padded and an absent field is all blanks: no trimming needed.
    text = f"substr(head, {at}, {width})"
    if field == "flags":
        return "flags"  # parsed once per row, below
    if field in ("trace_id", "span_id"):
        return text
    blank = " " * width
    if field == "parent_span_id":
        return f"nullif({text}, '{blank}')"
    if field in ("type_code", "end_time_unix_nano", "resource_id"):
        return f"CAST(nullif({text}, '{blank}') AS INTEGER)"
    return f"CAST({text} AS INTEGER)"


_name_length = f"CAST(substr(head, {HEAD_NAME_AT}, 6) AS INTEGER)"
_scope_at = f"{HEAD_NAME_AT + 6} + {_name_length}"
_STAGED_FROM_ROW = {
    **{field: _head_field(field, at, width) for field, at, width in HEAD_LAYOUT},
    "name": f"substr(head, {HEAD_NAME_AT + 6}, {_name_length})",
    "scope_name": f"nullif(substr(head, {_scope_at} + 6, CAST(substr(head, {_scope_at}, 6) AS INTEGER)), '')",
    "attributes": "nullif(value -> 1, 'null')",
    **{
        name: f"CASE WHEN flags & {bit} THEN value {'->' if name in ('events', 'links') else '->>'} "
        f"{_ELEMENT[name]} END"
        for name, bit in OPTIONAL_FLAGS.items()
    },
}

# -- per-connection scratch space -----------------------------------------------------------------

# Scratch tables holding one batch; emptied when it commits (or rolls back).
_BATCH_TABLES = (
    "staged_spans",
    "staged_traces",
    "moved_traces",
    "touched_sessions",
    "ancestors",
    "recounted_traces",
    "repeated_spans",
)

_SCRATCH = (
    # path: the key as a JSON path, for the rank check in _STAGE.
    """CREATE TEMP TABLE attribute_keys (
        key TEXT, slot INTEGER, rank INTEGER, kind TEXT, path TEXT, PRIMARY KEY (key, slot)) WITHOUT ROWID""",
    "CREATE INDEX temp.attribute_keys_by_rank ON attribute_keys (slot, rank)",
    """CREATE TEMP TABLE prices (
        model TEXT PRIMARY KEY,
        input REAL, output REAL, cache_read REAL, cache_write REAL, reasoning REAL)""",
    f"""CREATE TEMP TABLE staged_spans (
        {", ".join((*_STAGED_FROM_ROW, *_SLOTS))})""",
    "CREATE INDEX temp.staged_spans_by_key ON staged_spans (trace_id, span_id)",
    """CREATE TEMP TABLE staged_traces (
        trace_id TEXT PRIMARY KEY, explicit_session TEXT, session_rank INTEGER,
        service_name TEXT, user_id TEXT)""",
    "CREATE TEMP TABLE moved_traces (trace_id TEXT PRIMARY KEY, old_session_id TEXT)",
    "CREATE TEMP TABLE touched_sessions (session_id TEXT PRIMARY KEY)",
    # level: how many steps above a span with usage (see _CLIMB); 0 for the first step.
    "CREATE TEMP TABLE ancestors (trace_id, span_id, level INTEGER NOT NULL DEFAULT 0, "
    "PRIMARY KEY (trace_id, span_id))",
    "CREATE INDEX temp.ancestors_by_level ON ancestors (level)",
    # Stored traces outside the batch whose rollups change with it (a repeat of a model call found).
    "CREATE TEMP TABLE recounted_traces (trace_id TEXT PRIMARY KEY)",
    "CREATE TEMP TABLE repeated_spans (id INTEGER PRIMARY KEY, trace_id TEXT)",
    # The process writing: sessions it touches record it, so a sweep can tell a dead process's
    # running session from a live one's.
    "CREATE TEMP TABLE writer_identity (pid INTEGER, host TEXT)",
)

_count = """CASE
        WHEN a.type = 'integer' AND a.atom >= 0 AND a.atom < 1000000000000000000 THEN a.atom
        WHEN a.type = 'real' AND a.atom >= 0 AND a.atom < 1e18 AND a.atom = CAST(a.atom AS INTEGER)
             THEN CAST(a.atom AS INTEGER)
        WHEN a.type = 'text' AND trim(a.atom) != '' AND trim(a.atom) NOT GLOB '*[^0-9]*'
             AND length(trim(a.atom)) < 19 THEN CAST(trim(a.atom) AS INTEGER) END"""
_cost = """CASE
        WHEN a.type IN ('integer', 'real') AND a.atom >= 0 THEN CAST(a.atom AS REAL)
        WHEN a.type = 'text' AND trim(a.atom) GLOB '[0-9]*' AND trim(a.atom) NOT GLOB '*[^0-9.eE+-]*'
             THEN CAST(trim(a.atom) AS REAL) END"""
# An attribute value that counts as present (the same test for the key and its betters).
_present = "{type} NOT IN ('null', 'array', 'object') AND {atom} != ''"
_better_present = _present.format(
    type="json_type(staged_spans.attributes, b.path)", atom="json_extract(staged_spans.attributes, b.path)"
)
_PRICE_OF = "model_price"
_STAGE = f"""
    -- LIMIT -1 OFFSET 0 keeps SQLite from inlining the subqueries, which would read the head
    -- element (and parse the flags) again for every column taken from it.
    INSERT INTO staged_spans ({", ".join(_STAGED_FROM_ROW)})
    SELECT {", ".join(_STAGED_FROM_ROW.values())}
    FROM (
        SELECT value, head, CAST(substr(head, 1, 4) AS INTEGER) AS flags
        FROM (SELECT value, value ->> 0 AS head FROM json_each(NEW.payload) LIMIT -1 OFFSET 0)
        LIMIT -1 OFFSET 0);
    -- The normalisation table: for each column, the best-ranked key present on the span wins. A
    -- key wins when no better-ranked key of its column is present (usually there is none to
    -- check: spans carry one dialect), cheaper than grouping by column (a sort for every span).
    UPDATE staged_spans SET ({", ".join(_SLOTS)}) = (
        SELECT {", ".join(f"max(v) FILTER (WHERE slot = {i})" for i in range(len(_SLOTS)))}
        FROM (
            SELECT k.slot AS slot,
                   CASE k.kind WHEN 'count' THEN {_count} WHEN 'cost' THEN {_cost}
                       ELSE CAST(a.atom AS TEXT) END AS v
            FROM json_each(staged_spans.attributes) AS a JOIN attribute_keys AS k ON k.key = a.key
            WHERE {_present.format(type="a.type", atom="a.atom")}
              AND (k.rank = 0 OR NOT EXISTS (
                  SELECT 1 FROM attribute_keys AS b WHERE b.slot = k.slot AND b.rank < k.rank
                  AND {_better_present}))))
    WHERE attributes IS NOT NULL;
    -- Each model name is priced once per connection, by a Python function (the GIL is taken only
    -- then); the subquery is kept whole so that it is called once per name, not once per column.
    INSERT OR IGNORE INTO prices (model, input, output, cache_read, cache_write, reasoning)
    SELECT model, p ->> 0, p ->> 1, p ->> 2, p ->> 3, p ->> 4
    FROM (SELECT model, {_PRICE_OF}(model) AS p FROM (
        SELECT DISTINCT model FROM staged_spans
        WHERE model IS NOT NULL AND model NOT IN (SELECT model FROM prices)) LIMIT -1 OFFSET 0);"""

# -- step 2: traces, sessions, the span upsert ----------------------------------------------------

_has_tokens = " OR ".join(f"s.{c} IS NOT NULL" for c in _TOKENS)
_z = {c: f"coalesce(s.{c}, 0)" for c in _TOKENS}
# The same formula as PriceTable.cost(): input includes cache reads/writes, output includes reasoning.
_priced = f"""(SELECT round((
        max(0, {_z["input_tokens"]} - {_z["cache_read_tokens"]} - {_z["cache_write_tokens"]}) * p.input
        + {_z["cache_read_tokens"]} * coalesce(p.cache_read, p.input)
        + {_z["cache_write_tokens"]} * coalesce(p.cache_write, p.input)
        + max(0, {_z["output_tokens"]} - {_z["reasoning_tokens"]}) * p.output
        + {_z["reasoning_tokens"]} * coalesce(p.reasoning, p.output)) / 1000000.0, 10)
    FROM prices AS p WHERE p.model = s.model)"""
_span_type = f"""coalesce(
        CASE s.type_code {" ".join(f"WHEN {i} THEN '{t}'" for i, t in enumerate(SPAN_TYPES))} END,
        -- An unknown dialect's model call: a model name plus usage is an LLM call by any reading.
        CASE WHEN s.model IS NOT NULL AND ({_has_tokens}) THEN 'llm' END,
        'span')"""
_kind = "CASE s.kind_code " + " ".join(f"WHEN {i} THEN '{n}'" for i, n in enumerate(KIND_NAMES)) + " END"
_status = (
    "CASE s.status_code " + " ".join(f"WHEN {i} THEN '{n}'" for i, n in enumerate(STATUS_NAMES)) + " END"
)
# Columns an end row overwrites in its start row (everything but the keys and the usage marks).
_SPAN_DATA = {
    "parent_span_id": "s.parent_span_id",
    "session_id": "t.session_id",
    "name": "s.name",
    "kind": _kind,
    "type": _span_type,
    "start_time_unix_nano": "s.start_time_unix_nano",
    "end_time_unix_nano": "s.end_time_unix_nano",
    "duration_ms": "(s.end_time_unix_nano - s.start_time_unix_nano) / 1000000.0",
    "status_code": _status,
    "status_message": "s.status_message",
    "model": "s.model",
    "provider": "s.provider",
    "operation": "s.operation",
    **{c: f"s.{c}" for c in _TOKENS},
    "cost_usd": f"coalesce(s.explicit_cost, CASE WHEN {_has_tokens} THEN {_priced} END)",
    "input_text": "s.input_text",
    "output_text": "s.output_text",
    "reasoning_text": "s.reasoning_text",
    "response_id": "s.response_id",
    "attributes": "s.attributes",
    "events": "s.events",
    "links": "s.links",
    "resource_id": "s.resource_id",
    "scope_name": "s.scope_name",
    "scope_version": "s.scope_version",
    "is_root": f"s.flags & {FLAG_ROOT}",
    "has_usage": f"({_has_tokens} OR s.explicit_cost IS NOT NULL)",
}
# Budget events, and GenAI content from log records, are added to a stored span after the batch that
# holds it (see _ADD_BUDGET_EVENT, MERGE_PENDING_CONTENT); the span written again (a re-export, or its
# end row over its start row) keeps them, and keeps texts it had when the new row has none. The test
# on the old text is all a span without them costs, so the common rewrite stays cheap.
_KEPT_EVENT_NAMES = (*(f"budget.{status}" for status in BUDGET_STATUSES[1:]), *sorted(CONTENT_EVENTS))
_kept_events = "value ->> 'name' IN (" + ", ".join(f"'{name}'" for name in _KEPT_EVENT_NAMES) + ")"
_TEXTS = ("input_text", "output_text", "reasoning_text")
_UPDATED = {
    **{text: f"coalesce(excluded.{text}, spans.{text})" for text in _TEXTS},
    "events": f"""CASE
        WHEN spans.events IS NULL OR NOT json_valid(spans.events)
            OR (instr(spans.events, '"budget.') = 0 AND instr(spans.events, '"gen_ai.') = 0)
            THEN excluded.events
        ELSE (SELECT json_group_array(json(e.value)) FROM (
            SELECT 0 AS part, key, value FROM json_each(coalesce(excluded.events, '[]'))
            UNION ALL
            SELECT 1, key, value FROM json_each(spans.events)
            WHERE ({_kept_events})
              AND value NOT IN (SELECT value FROM json_each(coalesce(excluded.events, '[]')))
            ORDER BY 1, 2) AS e) END""",
}
# A span whose usage is a repeat of the same model call recorded by another instrumentation: a span
# of another scope, same response id, ranks before it (an instrumentation's span before a client
# library's own, else the first stored). Spans of one scope sharing an id are distinct calls (a
# local server that repeats its ids), never repeats. See store_batch.
_client = "(coalesce({span}.scope_name, '') IN (" + ", ".join(f"'{c}'" for c in CLIENT_LIBRARY_SCOPES) + "))"
_RANKS_BEFORE = f"""SELECT 1 FROM spans AS k
    WHERE k.response_id = {{d}}.response_id AND k.has_usage = 1 AND k.id != {{d}}.id
      AND coalesce(k.scope_name, '') != coalesce({{d}}.scope_name, '')
      AND ({_client.format(span="k")} < {_client.format(span="{d}")}
           OR ({_client.format(span="k")} = {_client.format(span="{d}")} AND k.id < {{d}}.id))"""

# More spans than this with one response id are not one call recorded by several instrumentations.
MAX_RECORDINGS = 8
_filled_counts = ", ".join(f"{c} = coalesce(spans.{c}, r.{c})" for c in _TOKENS)
_scope_of_response = """SELECT scope_name FROM spans
        WHERE response_id = r.response_id ORDER BY scope_name {order} LIMIT 1"""

# GenAI content from log records (pending_content, see _logs) is merged into its span once both are
# stored, in whichever order they came, each record once (its event not in the span's events yet).
# Its texts fill what the span lacks, or follow text that earlier records gave; a span's own text
# (from attributes) is never repeated. {pending} selects the rows to look at: the batch's spans' here,
# the log batch's own in _logs.
_content_names = ", ".join(f"'{name}'" for name in sorted(CONTENT_EVENTS))
_had_content = (
    f"""EXISTS (SELECT 1 FROM json_each(spans.events) WHERE value ->> 'name' IN ({_content_names}))"""
)
_merged_texts = ", ".join(
    f"""{t} = CASE WHEN spans.{t} IS NULL THEN c.{t} WHEN c.{t} IS NULL THEN spans.{t}
        WHEN json_valid(spans.events) AND {_had_content} THEN spans.{t} || char(10) || c.{t}
        ELSE spans.{t} END"""
    for t in _TEXTS
)
MERGE_PENDING_CONTENT = f"""UPDATE spans SET {_merged_texts},
    events = CASE WHEN spans.events IS NULL OR NOT json_valid(spans.events) THEN c.events
        ELSE (SELECT json_group_array(json(e.value)) FROM (
            SELECT value FROM json_each(spans.events) UNION ALL SELECT value FROM json_each(c.events)) AS e)
        END
    FROM (
        SELECT trace_id, span_id, {", ".join(f"group_concat({t}, char(10)) AS {t}" for t in _TEXTS)},
               json_group_array(json(event)) AS events
        FROM (
            SELECT p.* FROM pending_content AS p
            CROSS JOIN spans AS s ON s.trace_id = p.trace_id AND s.span_id = p.span_id
            WHERE p.id IN ({{pending}}) AND (s.events IS NULL OR NOT json_valid(s.events)
                OR json(p.event) NOT IN (SELECT value FROM json_each(s.events)))
            ORDER BY p.id)
        GROUP BY trace_id, span_id
    ) AS c
    WHERE spans.trace_id = c.trace_id AND spans.span_id = c.span_id;"""
# Content stays pending until its span has ended: the span's end row merges it again (once).
DELETE_MERGED_CONTENT = """DELETE FROM pending_content WHERE id IN (
        SELECT p.id FROM pending_content AS p CROSS JOIN spans AS s
            ON s.trace_id = p.trace_id AND s.span_id = p.span_id
        WHERE p.id IN ({pending}) AND s.end_time_unix_nano IS NOT NULL);"""
_STAGED_PENDING = """SELECT p.id FROM staged_spans AS st
        CROSS JOIN pending_content AS p ON p.trace_id = st.trace_id AND p.span_id = st.span_id"""

_REWRITTEN = ", ".join(f"{c} = {_UPDATED.get(c, f'excluded.{c}')}" for c in _SPAN_DATA)
_STORE = f"""
    -- A trace's session: its root's explicit session, else the earliest-starting span's, else its
    -- own id. The rank of the span that named it is kept, so the choice holds in any arrival order.
    INSERT INTO staged_traces (trace_id, explicit_session, session_rank, service_name, user_id)
    SELECT s.trace_id, b.explicit_session, b.session_rank, max(r.service_name), max(s.user_id)
    FROM staged_spans AS s
    LEFT JOIN resources AS r ON r.resource_id = s.resource_id
    LEFT JOIN (
        SELECT trace_id, explicit_session,
               min(CASE WHEN flags & {FLAG_ROOT} THEN 0 ELSE start_time_unix_nano END) AS session_rank
        FROM staged_spans WHERE explicit_session IS NOT NULL GROUP BY trace_id
    ) AS b ON b.trace_id = s.trace_id
    GROUP BY s.trace_id;
    INSERT INTO moved_traces (trace_id, old_session_id)
    -- CROSS JOIN keeps the batch's few traces on the outside: the planner, knowing no sizes, would
    -- otherwise walk every stored trace (here and below).
    SELECT t.trace_id, t.session_id
    FROM staged_traces AS st CROSS JOIN traces AS t ON t.trace_id = st.trace_id
    WHERE st.explicit_session IS NOT NULL AND st.explicit_session != t.session_id
      AND (t.session_rank IS NULL OR st.session_rank < t.session_rank);
    INSERT INTO traces (trace_id, session_id, session_rank, service_name)
    SELECT trace_id, coalesce(explicit_session, trace_id), session_rank, service_name
    FROM staged_traces WHERE true
    ON CONFLICT (trace_id) DO UPDATE SET
        session_id = excluded.session_id, session_rank = excluded.session_rank
    WHERE excluded.session_rank IS NOT NULL
      AND (traces.session_rank IS NULL OR excluded.session_rank < traces.session_rank);
    UPDATE spans SET session_id = (SELECT t.session_id FROM traces AS t WHERE t.trace_id = spans.trace_id)
    WHERE trace_id IN (SELECT trace_id FROM moved_traces);
    -- A session a trace moved out of is removed when nothing else is in it and no block opened it.
    DELETE FROM sessions
    WHERE session_id IN (SELECT old_session_id FROM moved_traces) AND managed = 0
      AND NOT EXISTS (SELECT 1 FROM traces AS t WHERE t.session_id = sessions.session_id);
    INSERT INTO sessions (session_id, user_id, service_name)
    SELECT t.session_id, max(st.user_id), max(st.service_name)
    FROM staged_traces AS st CROSS JOIN traces AS t ON t.trace_id = st.trace_id
    WHERE true GROUP BY t.session_id
    ON CONFLICT (session_id) DO UPDATE SET
        user_id = coalesce(sessions.user_id, excluded.user_id),
        service_name = coalesce(sessions.service_name, excluded.service_name);
    INSERT INTO spans (trace_id, span_id, {", ".join(_SPAN_DATA)})
    SELECT s.trace_id, s.span_id, {", ".join(_SPAN_DATA.values())}
    FROM staged_spans AS s JOIN traces AS t ON t.trace_id = s.trace_id
    -- Several prepared batches may hold the same span (its start, then its end): in order.
    ORDER BY s.rowid
    ON CONFLICT (trace_id, span_id) DO UPDATE SET {_REWRITTEN}
    -- A late start row never overwrites the completed row.
    WHERE excluded.end_time_unix_nano IS NOT NULL OR spans.end_time_unix_nano IS NULL;
    -- Children often arrive before their parents: an ancestor that was not stored yet when a span
    -- beneath it carried usage waits in pending_ancestors, and is marked when it arrives.
    UPDATE spans SET usage_below = 1
    WHERE usage_below = 0 AND (trace_id, span_id) IN (
        SELECT p.trace_id, p.span_id FROM pending_ancestors AS p
        JOIN staged_spans AS s ON s.trace_id = p.trace_id AND s.span_id = p.span_id);
    -- A claimed span's ancestors are walked too: step 3 starts from the rows put here.
    INSERT OR IGNORE INTO ancestors (trace_id, span_id)
    SELECT s.trace_id, s.parent_span_id FROM pending_ancestors AS p
    JOIN staged_spans AS s ON s.trace_id = p.trace_id AND s.span_id = p.span_id
    WHERE s.parent_span_id IS NOT NULL AND NOT s.flags & {FLAG_ROOT};
    DELETE FROM pending_ancestors WHERE (trace_id, span_id) IN (SELECT trace_id, span_id FROM staged_spans);
    -- A model call recorded twice (the anthropic client's own span beside an instrumentation's)
    -- shares its response id: the repeat (see _RANKS_BEFORE) is marked and its trace recounted.
    -- Only ids recorded under two scopes or more, on a few spans, are looked at (a few index
    -- probes each): an id that many spans carry names no single call (a server that gives every
    -- response the same id), and costs nothing here however many spans carry it.
    INSERT INTO repeated_spans (id, trace_id)
    SELECT d.id, d.trace_id FROM (
        SELECT DISTINCT response_id FROM staged_spans WHERE response_id IS NOT NULL
    ) AS r CROSS JOIN spans AS d ON d.response_id = r.response_id
    WHERE ({_scope_of_response.format(order="")}) IS NOT ({_scope_of_response.format(order="DESC")})
      AND (SELECT count(*) FROM (SELECT 1 FROM spans WHERE response_id = r.response_id
                                 LIMIT {MAX_RECORDINGS + 1})) <= {MAX_RECORDINGS}
      AND d.has_usage = 1 AND d.usage_below = 0 AND EXISTS ({_RANKS_BEFORE.format(d="d")});
    UPDATE spans SET usage_below = 1 WHERE id IN (SELECT id FROM repeated_spans);
    INSERT OR IGNORE INTO recounted_traces (trace_id) SELECT trace_id FROM repeated_spans;
    -- A count the span kept lacks (OpenLLMetry records no Anthropic thinking tokens, the client
    -- does) is taken from its repeats; its trace is recounted too.
    INSERT OR IGNORE INTO recounted_traces (trace_id)
    SELECT k.trace_id FROM repeated_spans AS rs CROSS JOIN spans AS d ON d.id = rs.id
    CROSS JOIN spans AS k ON k.response_id = d.response_id
    WHERE k.has_usage = 1 AND k.usage_below = 0;
    UPDATE spans SET {_filled_counts}
    FROM (
        SELECT d.response_id, {", ".join(f"max(d.{c}) AS {c}" for c in _TOKENS)}
        FROM repeated_spans AS rs CROSS JOIN spans AS d ON d.id = rs.id GROUP BY d.response_id
    ) AS r
    WHERE spans.response_id = r.response_id AND spans.has_usage = 1 AND spans.usage_below = 0
      AND ({" OR ".join(f"spans.{c} IS NULL" for c in _TOKENS)});
    {MERGE_PENDING_CONTENT.format(pending=_STAGED_PENDING)}
    {DELETE_MERGED_CONTENT.format(pending=_STAGED_PENDING)}"""

# -- step 3: every ancestor of a span with usage is marked usage_below ------------------------------

_staged_usage = " OR ".join(f"{c} IS NOT NULL" for c in (*_TOKENS, "explicit_cost"))
_climbs = "sp.parent_span_id IS NOT NULL AND sp.is_root = 0 AND sp.usage_below = 0"
# A recursive query cannot run inside a trigger: write_batch climbs a level a statement, up to
# _CLIMB_LEVELS (agents nest a few levels deep), and leaves a deeper climb to _WALK_UP.
_CLIMB_LEVELS = 16
_CLIMB = f"""
    INSERT OR IGNORE INTO ancestors (trace_id, span_id)
    SELECT trace_id, parent_span_id FROM staged_spans
    WHERE parent_span_id IS NOT NULL AND NOT flags & {FLAG_ROOT} AND ({_staged_usage});""" + "".join(
    f"""
    INSERT OR IGNORE INTO ancestors (trace_id, span_id, level)
    SELECT sp.trace_id, sp.parent_span_id, {level + 1}
    FROM ancestors AS a CROSS JOIN spans AS sp ON sp.trace_id = a.trace_id AND sp.span_id = a.span_id
    WHERE a.level = {level} AND {_climbs};"""
    for level in range(_CLIMB_LEVELS)
)
_WALK_UP = f"""
WITH RECURSIVE up (trace_id, span_id) AS (
    -- The parents of staged spans with usage, and the ancestors seeded by claimed pending marks.
    SELECT trace_id, parent_span_id FROM temp.staged_spans
    WHERE parent_span_id IS NOT NULL AND NOT flags & {FLAG_ROOT} AND ({_staged_usage})
    UNION SELECT trace_id, span_id FROM temp.ancestors
    UNION
    SELECT sp.trace_id, sp.parent_span_id
    FROM up JOIN spans AS sp ON sp.trace_id = up.trace_id AND sp.span_id = up.span_id
    -- An ancestor already marked has had its own ancestors marked: stop there.
    WHERE {_climbs}
)
INSERT OR IGNORE INTO temp.ancestors (trace_id, span_id) SELECT trace_id, span_id FROM up
"""

# -- step 4: marks, rollups, clean-up ---------------------------------------------------------------

_counted = "FILTER (WHERE s.has_usage = 1 AND s.usage_below = 0)"
_FINISH = f"""
    UPDATE spans SET usage_below = 1
    WHERE usage_below = 0 AND (trace_id, span_id) IN (SELECT trace_id, span_id FROM ancestors);
    INSERT OR IGNORE INTO pending_ancestors (trace_id, span_id)
    SELECT a.trace_id, a.span_id FROM ancestors AS a
    WHERE NOT EXISTS (SELECT 1 FROM spans AS s WHERE s.trace_id = a.trace_id AND s.span_id = a.span_id);
    -- Rollups count every token once: only spans with usage and none beneath them.
    UPDATE traces SET
        span_count = a.n, error_count = a.errors,
        {", ".join(f"{c} = a.{c}" for c in _TOKENS)}, cost_usd = a.cost_usd,
        start_time_unix_nano = a.start_time,
        end_time_unix_nano = CASE WHEN a.status = 'running' THEN NULL ELSE a.end_time END,
        last_activity_unix_nano = max(a.last_start, coalesce(a.end_time, 0)),
        root_span_id = a.root_span_id, root_span_name = a.root_span_name, status = a.status
    FROM (
        SELECT s.trace_id, count(*) AS n, count(*) FILTER (WHERE s.status_code = 'ERROR') AS errors,
               {", ".join(f"coalesce(sum(s.{c}) {_counted}, 0) AS {c}" for c in _TOKENS)},
               sum(s.cost_usd) {_counted} AS cost_usd,
               min(s.start_time_unix_nano) AS start_time, max(s.end_time_unix_nano) AS end_time,
               max(s.start_time_unix_nano) AS last_start,
               max(s.span_id) FILTER (WHERE s.is_root = 1) AS root_span_id,
               max(s.name) FILTER (WHERE s.is_root = 1) AS root_span_name,
               CASE
                   WHEN max(s.is_root) = 1 THEN CASE
                       WHEN max(s.end_time_unix_nano IS NULL) FILTER (WHERE s.is_root = 1) THEN 'running'
                       WHEN max(s.status_code = 'ERROR') FILTER (WHERE s.is_root = 1) THEN 'failed'
                       ELSE 'completed' END
                   WHEN max(s.end_time_unix_nano IS NULL) THEN 'running'
                   ELSE 'completed'
               END AS status
        FROM spans AS s
        WHERE s.trace_id IN (SELECT trace_id FROM staged_traces UNION SELECT trace_id FROM recounted_traces)
        GROUP BY s.trace_id
    ) AS a
    WHERE traces.trace_id = a.trace_id;
    INSERT OR IGNORE INTO touched_sessions (session_id)
    SELECT t.session_id FROM staged_traces AS st CROSS JOIN traces AS t ON t.trace_id = st.trace_id
    UNION SELECT t.session_id FROM recounted_traces AS rt CROSS JOIN traces AS t ON t.trace_id = rt.trace_id
    UNION SELECT old_session_id FROM moved_traces;
    UPDATE sessions SET
        span_count = a.n, error_count = a.errors,
        {", ".join(f"{c} = a.{c}" for c in _TOKENS)}, cost_usd = a.cost_usd,
        start_time_unix_nano = min(coalesce(sessions.start_time_unix_nano, a.start_time),
                                   coalesce(a.start_time, sessions.start_time_unix_nano)),
        end_time_unix_nano = CASE WHEN a.status = 'running' THEN NULL
            ELSE nullif(max(coalesce(sessions.end_time_unix_nano, 0), coalesce(a.end_time, 0)), 0) END,
        last_activity_unix_nano = max(coalesce(a.last_activity, 0),
            coalesce(sessions.start_time_unix_nano, 0), coalesce(sessions.end_time_unix_nano, 0)),
        owner_pid = w.pid, owner_host = w.host,
        status = a.status
    FROM temp.writer_identity AS w, (
        SELECT se.session_id, coalesce(sum(t.span_count), 0) AS n, coalesce(sum(t.error_count), 0) AS errors,
               {", ".join(f"coalesce(sum(t.{c}), 0) AS {c}" for c in _TOKENS)},
               sum(t.cost_usd) AS cost_usd,
               min(t.start_time_unix_nano) AS start_time, max(t.end_time_unix_nano) AS end_time,
               max(t.last_activity_unix_nano) AS last_activity,
               CASE
                   -- Interrupted (its process died, or went silent) until spans of it arrive again.
                   WHEN se.status = 'interrupted' AND se.managed = 0 AND se.session_id NOT IN (
                       SELECT t2.session_id FROM staged_traces AS st2
                       CROSS JOIN traces AS t2 ON t2.trace_id = st2.trace_id) THEN 'interrupted'
                   WHEN se.managed = 1 THEN CASE
                       WHEN se.outcome IS NULL THEN 'running'
                       WHEN se.outcome != 'completed' THEN se.outcome
                       WHEN max(t.status = 'failed') THEN 'failed'
                       ELSE 'completed' END
                   WHEN max(t.status = 'running') THEN 'running'
                   WHEN max(t.status = 'failed') THEN 'failed'
                   ELSE 'completed'
               END AS status
        FROM touched_sessions AS ts
        CROSS JOIN sessions AS se ON se.session_id = ts.session_id
        LEFT JOIN traces AS t ON t.session_id = se.session_id
        GROUP BY se.session_id
    ) AS a
    WHERE sessions.session_id = a.session_id;
    {" ".join(f"DELETE FROM {name};" for name in _BATCH_TABLES)}"""

# -- session() blocks --------------------------------------------------------------------------------

# The batch's session() opens and closes, in order, in one statement (a statement each would hold
# the write lock while the committer waits for the GIL between them, and other processes wait
# for the lock): [kind, session_id, task, user_id, time, outcome] each. An open (re)starts the
# session; a close records its end and outcome.
_APPLY_SESSION_EVENTS = """
INSERT INTO sessions (
    session_id, task, user_id, start_time_unix_nano, end_time_unix_nano, managed, outcome, status)
SELECT value ->> 1, value ->> 2, value ->> 3,
       CASE value ->> 0 WHEN 'open' THEN value ->> 4 END, CASE value ->> 0 WHEN 'close' THEN value ->> 4 END,
       1, value ->> 5, coalesce(value ->> 5, 'running')
FROM json_each(:events) WHERE true ORDER BY key
ON CONFLICT (session_id) DO UPDATE SET
    task = CASE WHEN excluded.start_time_unix_nano IS NULL THEN sessions.task
        ELSE coalesce(excluded.task, sessions.task) END,
    user_id = CASE WHEN excluded.start_time_unix_nano IS NULL THEN sessions.user_id
        ELSE coalesce(excluded.user_id, sessions.user_id) END,
    start_time_unix_nano = CASE WHEN excluded.start_time_unix_nano IS NULL THEN sessions.start_time_unix_nano
        ELSE min(coalesce(sessions.start_time_unix_nano, excluded.start_time_unix_nano),
                 excluded.start_time_unix_nano) END,
    end_time_unix_nano = excluded.end_time_unix_nano,
    managed = 1,
    outcome = excluded.outcome,
    status = CASE WHEN excluded.start_time_unix_nano IS NULL THEN sessions.status ELSE 'running' END
"""
_TOUCH_EVENT_SESSIONS = (
    "INSERT OR IGNORE INTO touched_sessions (session_id) SELECT value ->> 1 FROM json_each(:events)"
)


# -- budgets (see _budget) ---------------------------------------------------------------------------

_budget_rank = "CASE {col} " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(BUDGET_STATUSES))
_budget_rank += " END"
# Each applies a whole batch of marks (a JSON array) in one statement: a statement per mark would
# wait for the GIL once per mark (see the module's docstring).
# A session's budget status only moves up: ok, then warning, then exceeded.
_RAISE_BUDGET_STATUS = f"""
UPDATE sessions SET budget_status = m.status
FROM (
    -- With max(), SQLite takes the bare column (status) from the row holding the maximum.
    SELECT value ->> 0 AS session_id, value ->> 1 AS status,
           max({_budget_rank.format(col="value ->> 1")}) AS rank
    FROM json_each(:marks) GROUP BY 1
) AS m
WHERE sessions.session_id = m.session_id
  AND coalesce({_budget_rank.format(col="sessions.budget_status")}, -1) < m.rank
"""
# The event is appended to the crossing span's events (a malformed value, from another writer, is
# left alone). A span crosses once, so it matches one mark at most.
_ADD_BUDGET_EVENT = """
UPDATE spans SET events = json_insert(coalesce(spans.events, '[]'), '$[#]', json(m.event))
FROM (
    SELECT value ->> 2 AS trace_id, value ->> 3 AS span_id, value ->> 4 AS event
    FROM json_each(:marks) WHERE value ->> 4 IS NOT NULL
) AS m
WHERE spans.trace_id = m.trace_id AND spans.span_id = m.span_id
  AND CASE WHEN json_valid(coalesce(spans.events, '[]'))
      THEN json_type(coalesce(spans.events, '[]')) = 'array' END
"""


# The whole batch in one statement: each statement costs the committer a wait for the GIL (see the
# module's docstring). Updating a view stores nothing: the documents are never copied into a row.
# The batch's session events (``events``) go in first and its budget marks (``marks``) last, as
# JSON documents of their own (see the statements above).
#
# Given the time it asked for the write lock (``asked``, Unix seconds), the statement is a
# transaction of its own: it takes the lock (its first step, before the trigger runs: the trigger
# writes the file), writes and commits, without the GIL, where a BEGIN and a COMMIT would each wait
# for it again. It then tells Python of a wait for the lock long enough to mean other writers, by
# calling _LOCK_WAITED (the GIL is taken only then). Both ends read the system clock: a step of it
# in between at worst makes one commit look contended.
#
# It stops early when ancestors lie deeper than it climbs: it rolls back whole (the scratch tables
# too), and the batch is written again inside a transaction, a step a statement (rarely: agents
# seldom nest that deep).
#
# The batch's documents are rows of one UPDATE (_WRITE_DOCUMENTS): the trigger runs once for each,
# so SQLite parses and stages one document (about _DOCUMENT_CHARS) at a time, not the whole batch
# at once. An UPDATE of a view, not a multi-row INSERT, because SQLite copies the rows an INSERT
# gives a trigger into a table first, while an UPDATE hands the trigger each bound document as
# it is. The first row carries ``asked`` and ``events``, the last ``marks``.
#
# A wait for the write lock this long means other writers use the file too; a turn left to them
# after the commit lasts at most _MAX_TURN_SECONDS.
_CONTENDED_SECONDS = 0.05
_MAX_TURN_SECONDS = 0.5
_LOCK_WAITED = "batch_waited_for_lock"
_STOPPED_EARLY = "batch stopped early"
_unix_now = "(julianday('now') - 2440587.5) * 86400.0"  # fixed for the statement at its first use
# The documents a batch is cut into (see batch_documents): about this many characters each (900
# spans of the benchmarks' shape), at most _DOCUMENTS of them.
_DOCUMENT_CHARS = 512 * 1024
_DOCUMENTS = 32
# Parameters by number, not by name: the sqlite3 module lets go of the GIL to look up each name,
# and waits for it again. ?1 to ?_DOCUMENTS: the documents; then asked, events, the last slot and
# marks.
_WRITE_DOCUMENTS = f"""UPDATE temp.write_batch SET
    payload = CASE slot {" ".join(f"WHEN {i} THEN ?{i + 1}" for i in range(_DOCUMENTS))} END,
    asked = CASE slot WHEN 0 THEN ?{_DOCUMENTS + 1} END,
    events = CASE slot WHEN 0 THEN ?{_DOCUMENTS + 2} END,
    marks = CASE slot WHEN ?{_DOCUMENTS + 3} THEN ?{_DOCUMENTS + 4} END
WHERE slot <= ?{_DOCUMENTS + 3}"""


def _from_new(statement: str) -> str:
    return statement.replace(":events", "NEW.events").replace(":marks", "NEW.marks").strip()


_WRITE_TRIGGER = f"""
CREATE TEMP TRIGGER write_batch INSTEAD OF UPDATE ON write_batch BEGIN
    SELECT {_LOCK_WAITED}(waited) FROM (SELECT {_unix_now} - NEW.asked AS waited)
    WHERE waited > {_CONTENDED_SECONDS};
    {_from_new(_APPLY_SESSION_EVENTS)};
    {_from_new(_TOUCH_EVENT_SESSIONS)};
    {_STAGE}
    {_STORE}
    {_CLIMB}
    SELECT RAISE(ABORT, '{_STOPPED_EARLY}')
    WHERE EXISTS (SELECT 1 FROM ancestors WHERE level = {_CLIMB_LEVELS});
    {_FINISH}
    {_from_new(_RAISE_BUDGET_STATUS)};
    {_from_new(_ADD_BUDGET_EVENT)};
END"""

_PIPELINE = (
    *_SCRATCH,
    "CREATE TEMP VIEW write_batch (slot, payload, asked, events, marks) AS "
    f"SELECT value, NULL, NULL, NULL, NULL FROM json_each('{list(range(_DOCUMENTS))}')",
    _WRITE_TRIGGER,
    # The same steps one statement each: for a batch that stopped early, and for profiling
    # (TraceWriter.stepwise).
    *(
        statement
        for view, column, steps in (
            ("stage_batch", "payload", _STAGE),
            ("store_batch", "go", _STORE),
            ("finish_batch", "go", _FINISH),
        )
        for statement in (
            f"CREATE TEMP VIEW {view} ({column}) AS SELECT NULL",
            f"CREATE TEMP TRIGGER {view} INSTEAD OF INSERT ON {view} BEGIN {steps} END",
        )
    ),
)
_CLEAR = tuple(f"DELETE FROM temp.{name}" for name in _BATCH_TABLES)

# Under sustained load the log is checkpointed after about this much batch data (~64 MiB).
_CHECKPOINT_AFTER_CHARS = 64 * 1024 * 1024


def store_resource(
    conn: sqlite3.Connection, attributes: str, schema_url: str | None, service_name: str | None
) -> int:
    """The id of the resource row (attributes as JSON), inserted if new; commits at once on an
    autocommit connection: a resource row is harmless on its own. A resource stored already (by
    another process, or an earlier run) is only read: reading never waits for the write lock."""
    key = (attributes, schema_url or "")
    find = "SELECT resource_id FROM resources WHERE attributes = ? AND schema_url = ?"
    found = conn.execute(find, key).fetchone()
    if found is None:
        conn.execute(
            "INSERT OR IGNORE INTO resources (attributes, schema_url, service_name) VALUES (?, ?, ?)",
            (*key, service_name),
        )
        found = conn.execute(find, key).fetchone()
    return int(found[0])


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A session() block opening or closing, written in order with the spans around it."""

    kind: str  # "open" or "close"
    session_id: str
    time_unix_nano: int
    task: str | None = None
    user_id: str | None = None
    outcome: str | None = None  # for "close": completed, failed or cancelled


def _events_document(events: Sequence[SessionEvent], redact: Callable[[str | None], str | None]) -> str:
    return to_json(
        [[e.kind, e.session_id, redact(e.task), e.user_id, e.time_unix_nano, e.outcome] for e in events]
    )


def _marks_document(marks: Sequence[BudgetMark]) -> str:
    return to_json([[m.session_id, m.status, m.trace_id, m.span_id, m.event] for m in marks])


def _connect(options: Options) -> sqlite3.Connection:
    return connect(options.path, busy_timeout_millis=options.busy_timeout_millis, cache_kib=WRITER_CACHE_KIB)


class TraceWriter:
    """Owns one connection to a trace file and writes batches into it, one transaction each."""

    def __init__(self, options: Options) -> None:
        self.path = options.path
        self._conn = _connect(options)
        # Resources are stored while mapping, and the log is copied into the file, while a commit
        # may run on the main connection: each has a connection of its own.
        self._resources_conn: sqlite3.Connection | None = None
        self._log_conn: sqlite3.Connection | None = None
        self._lock_wait = 0.0  # set by the batch statement, as a transaction of its own
        try:
            self._setup(options)
            # Opened now, not at the first span: see SQLiteSpanProcessor's constructor.
            self._resources_conn = _connect(options)
            self._log_conn = _connect(options)
        except BaseException:
            for conn in (self._conn, self._resources_conn):
                if conn is not None:
                    conn.close()
            raise
        self._prices: PriceTable = options.prices
        # Characters of batches committed since the last checkpoint began, and since one last
        # copied the whole log (it cannot while commits go on beside it).
        self._unchecked = 0
        self._unsettled = 0
        self._turn = 0.0  # seconds to leave the write lock to others (see yield_turn)
        #: The last commit waited for another writer's lock: keep transactions short meanwhile.
        self.contended = False
        #: Held whenever this writer is inside SQLite (``copying``: to copy the log), so that fork()
        #: can wait for a safe moment.
        self.busy = threading.Lock()
        self.copying = threading.Lock()
        self._mapper = SpanMapper(options, self._resource_id)
        #: Spans skipped because they could not be mapped at all (a bug worth reporting).
        self.unmappable = 0
        #: Write each batch a step a statement (slower: for profiling the steps).
        self.stepwise = False

    def _setup(self, options: Options) -> None:
        path = os.path.abspath(options.path)
        opened = os.stat(path)
        self._opened_as = (path, opened.st_dev, opened.st_ino)  # see replaced()
        self._conn.create_function(_LOCK_WAITED, 1, self._note_lock_wait)
        self._conn.create_function(_PRICE_OF, 1, self._price_of)
        for statement in _PIPELINE:
            self._conn.execute(statement)
        # Checkpoints run when the writer has a moment (see checkpoint()), not inside a commit: a
        # page rewritten by many batches is then copied back into the file once.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        # One statement, not one per row: each costs a wait for the GIL under a busy application.
        self._conn.execute(
            "INSERT INTO temp.attribute_keys SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, "
            "'$.\"' || (value ->> 0) || '\"' FROM json_each(?)",
            (to_json(attribute_key_rows()),),
        )
        host = socket.gethostname()
        self._conn.execute("INSERT INTO temp.writer_identity VALUES (?, ?)", (os.getpid(), host))
        # A process that crashed while writing this file left its sessions running: a new writer
        # says so at once (the sweeper would only after stale_after_seconds, if it runs at all).
        interrupt_dead_sessions(self._conn, host)
        if options.retention_days is not None:
            self._conn.execute(
                "INSERT INTO settings (key, value) VALUES ('retention_days', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(options.retention_days),),
            )

    def write(
        self,
        spans: Iterable[ReadableSpan],
        events: Sequence[SessionEvent] = (),
        marks: Sequence[BudgetMark] = (),
    ) -> None:
        """Write the spans (and session events, and budget marks) in one transaction.

        Raises ``sqlite3.Error`` when the transaction fails; nothing of the batch is then stored.
        """
        self.commit(batch_documents([self.prepare(spans)]), events, marks)
        self.checkpoint(idle=False)

    def prepare(self, spans: Iterable[ReadableSpan]) -> str | None:
        """The spans' rows for :func:`batch_documents`: JSON array elements, comma-separated (None
        for no spans). Needs the GIL; may run in another thread than ``commit``, so the next batch
        is prepared while one commits."""
        # A few rows at a time: the row lists are freed young, few of them left for the garbage
        # collector (which runs in whichever thread allocates, the application's too) to scan.
        spans = list(spans)
        encode = self._mapper.encode
        parts = []
        for start in range(0, len(spans), _ENCODE_CHUNK):
            rows = self._rows(spans[start : start + _ENCODE_CHUNK])
            elements = encode(rows)[1:-1] if rows else ""
            if elements:  # none when no row of the chunk could be encoded at all
                parts.append(elements)
        return ",".join(parts) if parts else None

    def commit(
        self, documents: Sequence[str], events: Sequence[SessionEvent] = (), marks: Sequence[BudgetMark] = ()
    ) -> None:
        """Write batch documents (and session events) in one transaction, in order; budget marks
        are applied last, when the spans they refer to are stored."""
        if not documents and not events and not marks:
            return
        with self.busy:
            self._commit(documents, events, marks)

    def _commit(
        self, documents: Sequence[str], events: Sequence[SessionEvent], marks: Sequence[BudgetMark]
    ) -> None:
        session_events = _events_document(events, self._mapper.redact_text) if events else None
        budget_marks = _marks_document(marks) if marks else None
        written = sum(map(len, documents)) or 1
        if not self.stepwise:
            asked = time.monotonic()
            waited = self._write_alone(documents, session_events, budget_marks)
            if waited is not None:
                self._committed(written, waited, time.monotonic() - asked - waited)
                return
        conn = self._conn
        asked = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        waited = time.monotonic() - asked
        try:
            if session_events is not None:
                conn.execute(_APPLY_SESSION_EVENTS, {"events": session_events})
                conn.execute(_TOUCH_EVENT_SESSIONS, {"events": session_events})
            for document in documents:
                conn.execute("INSERT INTO temp.stage_batch (payload) VALUES (?)", (document,))
                conn.execute("INSERT INTO temp.store_batch (go) VALUES (1)")
                conn.execute(_WALK_UP)
                conn.execute("INSERT INTO temp.finish_batch (go) VALUES (1)")
            if not documents:
                conn.execute("INSERT INTO temp.finish_batch (go) VALUES (1)")
            if budget_marks is not None:
                conn.execute(_RAISE_BUDGET_STATUS, {"marks": budget_marks})
                conn.execute(_ADD_BUDGET_EVENT, {"marks": budget_marks})
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._committed(written, waited, time.monotonic() - asked - waited)

    def _write_alone(self, documents: Sequence[str], events: str | None, marks: str | None) -> float | None:
        """Write the batch as one statement that is its own transaction (see _WRITE_TRIGGER); the
        seconds it waited for the write lock, if long enough to mean other writers, else 0. None
        when it stopped early, rolled back whole, to be written again inside a transaction."""
        self._lock_wait = 0.0
        parameters = [*documents, *[None] * (_DOCUMENTS - len(documents))]
        parameters += (time.time(), events, max(0, len(documents) - 1), marks)
        try:
            self._conn.execute(_WRITE_DOCUMENTS, parameters)
        except BaseException as exc:
            if isinstance(exc, sqlite3.IntegrityError) and str(exc) == _STOPPED_EARLY:
                return None  # rolled back whole, the scratch tables too
            self._rollback()
            raise
        return self._lock_wait

    def _committed(self, written: int, waited: float, held: float) -> None:
        # Another writer had the lock when this one asked: leave it a turn (see yield_turn).
        self.contended = waited > _CONTENDED_SECONDS
        self._turn = held if self.contended else 0.0
        self._unchecked += written
        self._unsettled += written

    def _note_lock_wait(self, seconds: float) -> int:
        self._lock_wait = seconds
        return 1

    def _rows(self, spans: Iterable[ReadableSpan]) -> list[list[Any]]:
        row = self._mapper.row
        try:
            return [row(span) for span in spans]
        except (sqlite3.Error, TraceFileError):
            raise  # storing a new resource failed: the file, not the span, is at fault
        except Exception:  # noqa: BLE001 - one malformed span must not cost the whole batch
            rows = []
            for span in spans:
                try:
                    rows.append(row(span))
                except (sqlite3.Error, TraceFileError):
                    raise
                except Exception:
                    self.unmappable += 1
                    if self.unmappable == 1:
                        logger.exception(
                            "otel-sqlite-exporter could not map span %r; it is skipped",
                            getattr(span, "_name", span),  # its name property may be what fails
                        )
            return rows

    def yield_turn(self) -> None:
        """After a commit that had to wait for the write lock, wait about as long as this writer
        held it (at most _MAX_TURN_SECONDS) before asking again. SQLite's busy handler looks for
        the lock every 100 ms at most, so a writer that asks again at once would win it each
        time, and the others, under heavy load, would wait past their busy timeout."""
        if self._turn:
            time.sleep(min(self._turn, _MAX_TURN_SECONDS))
            self._turn = 0.0

    def checkpoint(self, *, idle: bool) -> None:
        """Copy the log back into the file now if it is due (see ``checkpoint_due``)."""
        if self.checkpoint_due(idle=idle):
            self.copy_log()

    def checkpoint_due(self, *, idle: bool) -> bool:
        """Whether to copy the write-ahead log back into the file: whenever the writer is ``idle``,
        and under sustained load once enough was written (a page rewritten by many batches is
        then copied once)."""
        return self._unchecked > 0 and (idle or self._unchecked > _CHECKPOINT_AFTER_CHARS)

    def log_overdue(self) -> bool:
        """True when no checkpoint has copied the whole log for a while (commits went on beside
        each): then one between two commits should, so that the log starts over."""
        return self._unsettled > _CHECKPOINT_AFTER_CHARS

    def copy_log(self, *, between_commits: bool = False) -> None:
        """Checkpoint on a connection of its own, without waiting for readers or writers (PASSIVE):
        it may run in another thread while this writer commits. ``between_commits``: no commit
        runs beside it, so it copies the whole log unless a reader still needs part of it (which
        it then leaves for as long again)."""
        self._unchecked = 0
        with self.copying:
            _busy, log, copied = self._log_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if log == copied or between_commits:
            self._unsettled = 0

    def _price_of(self, model: str) -> str | None:
        """A model's price as the batch statement reads it (JSON), or None when it has none."""
        price = self._prices.lookup(model)
        if price is None:
            return None
        return to_json([price.input, price.output, price.cache_read, price.cache_write, price.reasoning])

    def _resource_id(self, attributes: str, schema_url: str | None, service_name: str | None) -> int:
        # Called while mapping, which may overlap a commit in another thread: resources get a
        # connection of their own. A resource row is harmless on its own, so it commits at once.
        with self.busy:
            return store_resource(self._resources_conn, attributes, schema_url, service_name)

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            for statement in _CLEAR:
                self._conn.execute(statement)
        except sqlite3.Error:
            pass

    def close(self) -> None:
        with self.busy, self.copying:
            for conn in (self._conn, self._resources_conn, self._log_conn):
                try:
                    if conn is not None:
                        conn.close()
                except sqlite3.Error:
                    pass

    def replaced(self) -> bool:
        """True when the path no longer leads to the file this writer has open: the file or its
        folder was removed, or another file put in its place. SQLite would go on writing into the
        old file, out of everyone's reach. One ``stat``."""
        path, device, inode = self._opened_as
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:
            return False  # not known to be gone (a folder no longer searchable, say): keep writing
        return (info.st_dev, info.st_ino) != (device, inode)


def batch_documents(prepared: Iterable[str | None]) -> list[str]:
    """The documents :meth:`TraceWriter.commit` writes: prepared rows joined, in order, into JSON
    arrays of about _DOCUMENT_CHARS each, at most _DOCUMENTS (none when there are no rows). The batch
    is one statement whatever their number (each statement costs the committer a wait for the
    GIL), and SQLite holds one document's parse and scratch rows at a time."""
    parts = [rows for rows in prepared if rows]
    # Each document but the last holds at least this much, so there are _DOCUMENTS at most.
    least = max(_DOCUMENT_CHARS, sum(map(len, parts)) // (_DOCUMENTS - 1))
    documents: list[str] = []
    joined: list[str] = []
    size = 0
    for rows in parts:
        joined += ("," if joined else "[", rows)
        size += len(rows)
        if size >= least:
            documents.append("".join((*joined, "]")))
            joined.clear()
            size = 0
    if joined:
        documents.append("".join((*joined, "]")))
    return documents


def retire_replaced(writer: TraceWriter, health: WriteHealth) -> None:
    """Leave a writer whose file was removed or replaced (see ``TraceWriter.replaced``): logged
    once, and the old file keeps what was written, its log (which SQLite leaves under the old
    name when the file has moved) copied into it first. Closing deletes nothing at the path."""
    health.file_replaced()
    try:
        writer.checkpoint(idle=True)
    except Exception as exc:  # noqa: BLE001 - the old file may be beyond reach
        health.failure(exc, lost=0)
    writer.close()
