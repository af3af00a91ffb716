"""Where a trace file's bytes go, and how small the schema lets a file of that shape get.

    python benchmarks/file_size.py [--spans 100000]     # a new file of the benchmarks' span shape
    python benchmarks/file_size.py --db traces.db       # a file of your own, read and never changed

First the file's tables and indexes (SQLite's ``dbstat``), largest first, in bytes per span: the
pages each takes, the bytes of its records (payload) and the space left free in its pages.

Then the same spans in smaller layouts, each a copy made from the one before:

1. as written: the file's used pages (free pages left out);
2. packed: rebuilt by ``VACUUM`` (each table and index written anew in key order, its pages full);
3. the fewest indexes: only the keys and the indexes for the queries the schema promises (spans by
   session, trace, start time, type, name and model; sessions by start time; the full-text index),
   the model index without the usage columns it carries, and no response ids;
4. as 3, with 8 KiB pages.

Step 4 is about as small as a file can be that keeps the schema's columns (hex ids, the session id
on every span, the whole attributes JSON) and the indexes it promises; the last line compares it
with the 800 bytes a span the write path aims at.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from urllib.request import pathname2url

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import BYTES_PER_SPAN_TARGET, prefill

# The indexes step 3 keeps (besides the primary keys and unique keys, which no layout can drop).
PROMISED_INDEXES = frozenset(
    {
        "spans_by_session",
        "spans_by_start",
        "spans_by_type",
        "spans_by_name",
        "spans_by_model",
        "sessions_by_start",
    }
)
NARROW_MODEL_INDEX = (
    "CREATE INDEX spans_by_model ON spans (model, start_time_unix_nano) WHERE model IS NOT NULL"
)


def _read_only(path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{pathname2url(os.path.abspath(path))}?mode=ro", uri=True)


def objects(path: str) -> list[tuple[str, str, int, int, int, int]] | None:
    """(name, kind, pages, bytes, payload, unused) of each table and index, largest first; None
    when this SQLite was built without ``dbstat``."""
    with closing(_read_only(path)) as conn:
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_schema"))
        try:
            rows = conn.execute(
                "SELECT name, count(*), sum(pgsize), sum(payload), sum(unused) FROM dbstat "
                "GROUP BY name ORDER BY sum(pgsize) DESC, name"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "dbstat" not in str(exc):
                raise
            return None
    return [(name, _kind(name, kinds.get(name)), *sizes) for name, *sizes in rows]


def _kind(name: str, kind: str | None) -> str:
    if name.startswith("spans_fts"):
        return "fts"
    if name.startswith("sqlite_autoindex"):
        return "key"
    return kind or "-"


def spans_in(path: str) -> int:
    with closing(_read_only(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM spans").fetchone()[0])


def used_bytes(path: str) -> tuple[int, int]:
    """The bytes of the file's used pages (free pages left out), and the page size."""
    with closing(_read_only(path)) as conn:
        pages, free, page_size = (
            conn.execute(f"PRAGMA {pragma}").fetchone()[0]
            for pragma in ("page_count", "freelist_count", "page_size")
        )
    return (pages - free) * page_size, page_size


def layouts(path: str, scratch: str) -> list[tuple[str, str]]:
    """(label, file) of each layout, the first ``path`` itself, the others copies in ``scratch``."""
    packed = os.path.join(scratch, "packed.db")
    with closing(_read_only(path)) as conn:
        conn.execute("VACUUM INTO ?", (packed,))
    fewest = os.path.join(scratch, "fewest.db")
    shutil.copyfile(packed, fewest)
    with closing(sqlite3.connect(fewest, isolation_level=None)) as conn:
        indexes = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL"
            )
        ]
        for name in indexes:
            if name not in PROMISED_INDEXES or name == "spans_by_model":
                conn.execute(f'DROP INDEX "{name}"')
        conn.execute(NARROW_MODEL_INDEX)
        conn.execute("UPDATE spans SET response_id = NULL")
        conn.execute("VACUUM")
    large_pages = os.path.join(scratch, "large_pages.db")
    shutil.copyfile(fewest, large_pages)
    with closing(sqlite3.connect(large_pages, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")  # the page size of a WAL file cannot change
        conn.execute("PRAGMA page_size = 8192")
        conn.execute("VACUUM")
    return [
        ("as written", path),
        ("packed (VACUUM)", packed),
        ("the fewest indexes, no response ids", fewest),
        ("  and 8 KiB pages", large_pages),
    ]


def report(path: str, scratch: str) -> None:
    spans = spans_in(path)  # the same in every layout
    if not spans:
        raise SystemExit(f"file_size: {path} holds no spans")
    size, page_size = used_bytes(path)
    print(f"{path}: {spans:,} spans, page size {page_size:,}, {size / spans:,.1f} bytes a span\n")
    found = objects(path)
    if found is None:
        print("(this SQLite has no dbstat table: the breakdown by table and index is skipped)")
    else:
        print(
            f"{'table or index':32} {'kind':>5} {'pages':>8} {'bytes/span':>11} {'payload':>8} {'unused':>8}"
        )
        small = [row for row in found if row[3] < spans / 2]  # under half a byte a span
        for name, kind, pages, size, payload, unused in found:
            if size >= spans / 2:
                per = (size / spans, payload / spans, unused / spans)
                print(f"{name:32} {kind:>5} {pages:8,} {per[0]:11.1f} {per[1]:8.1f} {per[2]:8.1f}")
        if small:
            print(f"{f'{len(small)} others':32} {'':>5} {sum(row[2] for row in small):8,}")
        total = sum(row[3] for row in found)
        print(f"{'total in tables and indexes':32} {'':>5} {total // page_size:8,} {total / spans:11.1f}")
    print()
    print(f"{'layout':40} {'page size':>9} {'bytes/span':>11}")
    for label, file in layouts(path, scratch):
        size, page_size = used_bytes(file)
        print(f"{label:40} {page_size:9,} {size / spans:11.1f}")
    print(f"{'target':40} {'':9} {BYTES_PER_SPAN_TARGET:11,}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=100_000, help="spans of the benchmarks' shape to write")
    parser.add_argument("--db", help="measure this file instead (it is only read)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.db
        if path is None:
            path = os.path.join(scratch, "written.db")
            started = time.perf_counter()
            prefill(path, args.spans)
            print(
                f"wrote {args.spans:,} spans of the benchmarks' shape through SQLiteSpanProcessor "
                f"in {time.perf_counter() - started:.1f} s"
            )
        elif not os.path.exists(path):
            raise SystemExit(f"file_size: no such file: {path}")
        try:
            report(path, scratch)
        except sqlite3.Error as exc:
            raise SystemExit(f"file_size: {path}: {exc}") from None


if __name__ == "__main__":
    main()
