"""The one way jobs enter a SQLite queue: insert_jobs(), used by SQLiteStore.enqueue
and by insert_new() (the `queuectl enqueue` path, which validates its jobs with
rules.py before they reach this module and imports nothing else of the store).
"""

from __future__ import annotations

import time

import apsw

from queuectl.actors import cli_actor
from queuectl.errors import Conflict, DuplicateJob, JobNotFound, StoreError, UniqueConflict
from queuectl.store.sqlite.connection import config_items, connect, read, translate, write
from queuectl.store.sqlite.counts import COUNTS_UPTO, fold_counts
from queuectl.store.sqlite.schema import is_current

# A constant of this name means to mypy what typing.TYPE_CHECKING means, without
# importing typing on the `queuectl enqueue` path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from queuectl.rules import JobRow

# None -> PENDING or WAITING (insert_jobs writes the first events with
# INSERT_FIRST_EVENTS).  Parameters: id, command, state, max_retries, priority, timeout,
# created_at, updated_at, run_at, next_run_at, queue, cwd, env, unique_key.
INSERT_JOB = (
    "INSERT INTO jobs (id, command, state, max_retries, priority, timeout,"
    " created_at, updated_at, run_at, next_run_at, queue, cwd, env, unique_key)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The first event (what the state trigger writes for a change) of every job inserted
#: after the row with rowid ? (the second parameter; the first is the actor), in
#: rowid order: the order insert_jobs inserted them.
#: One statement for all of them, not one per job.
INSERT_FIRST_EVENTS = (
    "INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor)"
    " SELECT id, updated_at, NULL, state, 0, ? FROM jobs WHERE rowid > ? ORDER BY rowid"
)
#: SQLite gives a new row the largest rowid plus one, unless the largest is 2**63-1
#: (then any unused one), so below this bound (a wide safety margin) the rows
#: inserted are exactly those after the largest rowid before.
_ROWID_SAFE = 2**62
#: Inserts of at least this many jobs fold the counts in their own transaction, so a
#: queue filled in bulk has its counts ready (a one-job enqueue leaves that to the
#: next recovery pass: a fold would cost it a scan of the events since the last).
FOLD_MIN_ROWS = 500


def insert_jobs(conn: apsw.Connection, path: str, jobs: Sequence[JobRow], now: float, actor: str) -> None:
    """Insert jobs (rows as rules.check_job returns them), each with its first
    history event, in one transaction: all of them or none.  A job is PENDING, due at
    its run_at, or WAITING while a parent (`after`) has not completed.

    DuplicateJob names the first id that exists (or repeats); UniqueConflict the first
    unique key a job that may still run holds; JobNotFound a parent that is neither
    stored nor in `jobs`; Conflict a parent that ended dead or cancelled (the job could
    never run).  Their first events name `actor` (store/trail.py)."""

    try:
        write(conn, path, inserter(jobs, now, actor))
    except DuplicateJob:
        keyed = [(str(j[9]), str(j[0])) for j in jobs if j[9] is not None]
        raise _conflict(conn, path, [str(j[0]) for j in jobs], keyed) from None


def inserter(jobs: Sequence[JobRow], now: float, actor: str) -> Callable[[apsw.Connection], None]:
    """insert_jobs's statements, to run inside a write transaction of the caller's (a
    schedule's run inserts its job in the transaction that advances the schedule)."""
    fold = len(jobs) >= FOLD_MIN_ROWS
    queues = {j[6] for j in jobs}
    linked = [j for j in jobs if j[10]]

    def insert(c: apsw.Connection) -> None:
        if fold:  # the events since the last fold; the new jobs are counted below
            fold_counts(c)
        before = c.execute("SELECT coalesce(max(rowid), 0) FROM jobs").fetchall()[0][0]
        if not isinstance(before, int) or before >= _ROWID_SAFE:
            raise StoreError("the jobs table has run out of rowids in order")
        waiting = _waiting(c, linked, {j[0] for j in jobs}) if linked else frozenset()
        c.executemany(
            INSERT_JOB,
            [
                (
                    i,
                    cmd,
                    "waiting" if i in waiting else "pending",
                    retries,
                    prio,
                    timeout,
                    now,
                    now,
                    at,
                    None if i in waiting else at,
                    queue,
                    cwd,
                    env,
                    key,
                )
                for i, cmd, retries, prio, timeout, at, queue, cwd, env, key, _ in jobs
            ],
        )
        c.execute(INSERT_FIRST_EVENTS, (actor, before))
        if linked:
            c.executemany(
                "INSERT OR IGNORE INTO job_deps (child, parent) VALUES (?, ?)",
                [(j[0], parent) for j in linked for parent in j[10]],
            )
        if queues != {"default"}:
            c.executemany("INSERT OR IGNORE INTO queues (name) VALUES (?)", [(q,) for q in sorted(queues)])
        if fold:  # no other writer between: the snapshot is current but for these
            c.executemany(
                "UPDATE job_counts SET n = n + ? WHERE state = ?",
                [(len(waiting), "waiting"), (len(jobs) - len(waiting), "pending")],
            )
            c.execute(COUNTS_UPTO)

    return insert


def _waiting(c: apsw.Connection, linked: Sequence[JobRow], new: set[str]) -> frozenset[str]:
    """The ids among `linked` (jobs with parents) that must wait: a parent in this
    batch or stored and not completed.  Raises for an unknown parent, or one that
    ended dead or cancelled."""
    waiting = set()
    for job in linked:
        for parent in job[10]:
            if parent in new:
                waiting.add(job[0])
                continue
            rows = c.execute("SELECT state FROM jobs WHERE id = ?", (parent,)).fetchall()
            if not rows:
                raise JobNotFound(parent)
            state = str(rows[0][0])
            if state in ("dead", "cancelled"):
                raise Conflict(f"parent job {parent} is {state}: job {job[0]} could never run")
            if state != "completed":
                waiting.add(job[0])
    return frozenset(waiting)


def _conflict(
    conn: apsw.Connection, path: str, ids: list[str], keyed: list[tuple[str, str]]
) -> DuplicateJob | UniqueConflict:
    """What a failed insert clashed with: an id, or else a unique key."""
    taken = _first_existing(conn, path, ids)
    if taken is not None or not keyed:
        return DuplicateJob(taken)
    from queuectl.store.sql import KEY_HOLDER, held_key  # the error path only

    def holder(key: str) -> str | None:
        rows = read(conn, path, KEY_HOLDER.format(mark="?"), (key,))
        return str(rows[0][0]) if rows else None

    clash = held_key(keyed, holder)
    return DuplicateJob(None) if clash is None else UniqueConflict(*clash)


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
        insert_jobs(conn, path, jobs, now, cli_actor())
        return [j[0] for j in jobs]
    except apsw.Error as exc:
        raise translate(exc, path) from None
    finally:
        try:  # noqa: SIM105 (contextlib stays off the `queuectl enqueue` path)
            conn.close()
        except apsw.Error:  # as SQLiteStore.close
            pass
