"""Owners: the process writing each running session, and whether it still runs.

A session row records the pid and host of the process that last wrote it. A running session whose
process has died (a crash, a kill) will never be completed: a writer opening the file marks it
interrupted, and a reader, which never writes, reads it as interrupted.
"""

from __future__ import annotations

import os
import socket
import sqlite3

# Readers see such sessions through this view over the sessions table (see read_dead_as_interrupted).
_DEAD = "temp.dead_sessions"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie does not; unknown means alive)."""
    if pid <= 0 or os.name == "nt":
        return True  # on Windows signal 0 would not probe the process: only silence marks it stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rpartition(")")[2].split()
    except OSError:
        return True
    return not state or state[0] not in ("Z", "X")


def dead_owners(conn: sqlite3.Connection, host: str | None = None) -> list[tuple[str, int]]:
    """(session id, pid) of the running sessions written by a process of this host that has died."""
    host = socket.gethostname() if host is None else host
    me = os.getpid()
    rows = conn.execute(
        "SELECT session_id, owner_pid FROM sessions WHERE status = 'running' AND owner_host = ?", (host,)
    ).fetchall()
    return [(sid, pid) for sid, pid in rows if isinstance(pid, int) and pid != me and not process_alive(pid)]


def interrupt_dead_sessions(conn: sqlite3.Connection, host: str) -> int:
    """Mark interrupted the running sessions whose writing process, on this host, has died: their
    open spans then read as interrupted at once, not after ``stale_after_seconds``. Each is marked
    only if it is unchanged since it was read. Returns how many were marked."""
    dead = dead_owners(conn, host)
    conn.executemany(
        "UPDATE sessions SET status = 'interrupted' WHERE session_id = ? AND status = 'running' "
        "AND owner_pid = ? AND owner_host = ?",
        [(sid, pid, host) for sid, pid in dead],
    )
    return len(dead)


def read_dead_as_interrupted(conn: sqlite3.Connection) -> None:
    """On a read-only connection: the sessions of dead processes read as interrupted, as a writer
    would mark them, while the file stays untouched. Only when there are any (after a crash, until
    a writer opens the file): a temp view then stands for the sessions table, whose status index
    it cannot use."""
    dead = dead_owners(conn)
    if not dead:
        return
    conn.execute(f"CREATE TABLE {_DEAD} (session_id TEXT PRIMARY KEY)")
    conn.executemany(f"INSERT INTO {_DEAD} VALUES (?)", [(sid,) for sid, _ in dead])
    columns = [row[1] for row in conn.execute("PRAGMA main.table_info(sessions)")]
    selected = ", ".join(
        f"CASE WHEN session_id IN (SELECT session_id FROM {_DEAD}) THEN 'interrupted' ELSE status END "
        "AS status"
        if column == "status"
        else column
        for column in columns
    )
    # The rowid too: the read side finds a session's row again by it.
    conn.execute(f"CREATE TEMP VIEW sessions AS SELECT rowid AS rowid, {selected} FROM main.sessions")
