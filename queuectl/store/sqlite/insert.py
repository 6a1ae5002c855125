"""The one way jobs enter a SQLite queue: insert_jobs(), used by SQLiteStore.enqueue
and by insert_new() (the `queuectl enqueue` path, which validates its jobs with
rules.py before they reach this module and imports nothing else of the store).
"""

from __future__ import annotations

import time

import apsw

from queuectl.errors import DuplicateJob, StoreError
from queuectl.store.sqlite.connection import config_items, connect, read, translate, write
from queuectl.store.sqlite.counts import COUNTS_UPTO, fold_counts
from queuectl.store.sqlite.schema import is_current

# A constant of this name means to mypy what typing.TYPE_CHECKING means, without
# importing typing on the `queuectl enqueue` path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    #: A validated job as rules.check_job returns it:
    #: (id, command, max_retries, priority, timeout, run_at).
    JobRow = tuple[str, str, int, int, float, float]

# None -> PENDING (insert_jobs writes the first events with INSERT_FIRST_EVENTS).  Parameters: id,
# command, max_retries, priority, timeout, created_at, updated_at, run_at, next_run_at.
INSERT_JOB = (
    "INSERT INTO jobs (id, command, state, max_retries, priority, timeout,"
    " created_at, updated_at, run_at, next_run_at)"
    " VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)"
)
#: The first event (what the state trigger writes for a change) of every job inserted
#: after the row with rowid ?, in rowid order: the order insert_jobs inserted them.
#: One statement for all of them, not one per job.
INSERT_FIRST_EVENTS = (
    "INSERT INTO job_events (job_id, at, from_state, to_state, attempt)"
    " SELECT id, updated_at, NULL, 'pending', 0 FROM jobs WHERE rowid > ? ORDER BY rowid"
)
#: SQLite gives a new row the largest rowid plus one, unless the largest is 2**63-1
#: (then any unused one), so below this bound (a wide safety margin) the rows
#: inserted are exactly those after the largest rowid before.
_ROWID_SAFE = 2**62
#: Inserts of at least this many jobs fold the counts in their own transaction, so a
#: queue filled in bulk has its counts ready (a one-job enqueue leaves that to the
#: next recovery pass: a fold would cost it a scan of the events since the last).
FOLD_MIN_ROWS = 500


def insert_jobs(conn: apsw.Connection, path: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert jobs as PENDING (rows as INSERT_JOB takes them), each with its first
    history event, in one transaction; DuplicateJob names the first id that exists
    (or repeats)."""

    fold = len(rows) >= FOLD_MIN_ROWS

    def insert(c: apsw.Connection) -> None:
        if fold:  # the events since the last fold; the new jobs are counted below
            fold_counts(c)
        before = c.execute("SELECT coalesce(max(rowid), 0) FROM jobs").fetchall()[0][0]
        if not isinstance(before, int) or before >= _ROWID_SAFE:
            raise StoreError("the jobs table has run out of rowids in order")
        c.executemany(INSERT_JOB, rows)
        c.execute(INSERT_FIRST_EVENTS, (before,))
        if fold:  # no other writer between: the snapshot is current but for these
            c.execute("UPDATE job_counts SET n = n + ? WHERE state = 'pending'", (len(rows),))
            c.execute(COUNTS_UPTO)

    try:
        write(conn, path, insert)
    except DuplicateJob:
        raise DuplicateJob(_first_existing(conn, path, [str(r[0]) for r in rows])) from None


def _first_existing(conn: apsw.Connection, path: str, ids: list[str]) -> str | None:
    """The first of `ids` that repeats an earlier one or is in the queue already."""
    seen: set[str] = set()
    for job_id in ids:
        if job_id in seen:
            return job_id
        seen.add(job_id)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = read(conn, path, f"SELECT id FROM jobs WHERE id IN ({marks}) LIMIT 1", chunk)
        if rows:
            return str(rows[0][0])
    return None


def insert_new(path: str, build: Callable[[Mapping[str, str], float], Sequence[JobRow]]) -> list[str] | None:
    """Insert as PENDING, into the queue at `path`, the jobs `build(stored config, now)`
    returns (validated: build raises to refuse them), in one transaction, as
    SQLiteStore.enqueue does (same clock, same statements, same order: open, read the
    stored config, build, insert); returns their ids.  None, having changed nothing,
    when the database is not a queuectl one at the current schema (new, older, newer,
    or someone else's): SQLiteStore migrates it or says why not."""
    conn = connect(path, None)
    try:
        if not is_current(conn):
            return None
        now = time.time()  # SQLiteStore's clock
        jobs = build(config_items(conn, path), now)
        rows = [
            (i, cmd, retries, prio, timeout, now, now, at, at) for i, cmd, retries, prio, timeout, at in jobs
        ]
        insert_jobs(conn, path, rows)
        return [r[0] for r in rows]
    except apsw.Error as exc:
        raise translate(exc, path) from None
    finally:
        try:  # noqa: SIM105 (contextlib stays off the `queuectl enqueue` path)
            conn.close()
        except apsw.Error:  # as SQLiteStore.close
            pass
