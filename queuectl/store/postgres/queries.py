"""The PostgreSQL store's statements that move jobs: the insert of new jobs, the
claim and the finish (by the attempt's own worker), and the text clean-up they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from queuectl.models import JOB_COLUMNS, Job, NewJob
from queuectl.store.outcome import Finished
from queuectl.store.sql import finish_params

Conn = psycopg.Connection[Any]

COLS = ", ".join(JOB_COLUMNS)
#: The database clock as epoch seconds; one value for the whole transaction.
DB_NOW = "extract(epoch FROM now())::float8"
T = f"COALESCE(%(now)s::float8, {DB_NOW})"
#: The database clock as it is now (not the transaction's start): read after a
#: statement got its locks, for heartbeats, leases and recovery decisions.
CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"


def claim(conn: Conn, worker_id: str, now: float | None, served: Sequence[str] | None = None) -> Job | None:
    """`served`: the queues to claim from (None: every queue)."""
    # PENDING/FAILED -> PROCESSING: one statement.  Each served queue that is not
    # paused and has room gives its first due job from jobs_due (the queues' filter
    # runs at their scan, before the lateral: a paused or full queue's jobs are never
    # read); the best of those is claimed: the cost grows with the number of queues,
    # not of jobs.  SKIP LOCKED makes concurrent claimers pass over a row another
    # claimer holds instead of waiting for it; a row changed under us is re-checked
    # against the WHERE (EvalPlanQual).
    #
    # Room (queuectl_room): a per-queue advisory lock held to the end of this
    # transaction, then a count from a snapshot taken after the lock.  A claim commits
    # before it releases the lock, so the next holder's count sees it: no two claims
    # can both take a queue's last slot, on any host.  The lock is try-only (no
    # waiting, so no deadlock between claimers of several queues): a claimer that
    # loses passes the queue over, as SKIP LOCKED passes a row.  If it found nothing
    # else, its next_due() still sees that queue's due head and room, so its worker
    # claims again at once instead of sleeping a poll interval.
    row = conn.execute(
        f"UPDATE jobs SET state = 'processing', attempts = attempts + 1,"
        f" lease = lease + 1, worker_id = %(w)s, started_at = {T}, updated_at = {T},"
        " finished_at = NULL, exit_code = NULL, error = NULL, stdout = NULL,"
        " stderr = NULL, reason = NULL"
        " WHERE id = (SELECT h.id FROM queues q CROSS JOIN LATERAL"
        "              (SELECT id, priority, next_run_at FROM jobs"
        "               WHERE queue = q.name AND state IN ('pending', 'failed')"
        f"              AND next_run_at <= {T}"
        "               ORDER BY priority DESC, next_run_at, id LIMIT 1"
        "               FOR UPDATE SKIP LOCKED) h"
        "             WHERE NOT q.paused"
        "             AND (%(served)s::text[] IS NULL OR q.name = ANY(%(served)s::text[]))"
        "             AND (q.concurrency IS NULL OR queuectl_room(q.name, q.concurrency))"
        "             ORDER BY h.priority DESC, h.next_run_at, h.id LIMIT 1)"
        f" RETURNING {COLS}",
        {"w": worker_id, "now": now, "served": None if served is None else list(served)},
    ).fetchone()
    return Job.from_tuple(row) if row else None


def finish(conn: Conn, job_id: str, lease: int, outcome: Finished, now: float | None) -> bool:
    # PROCESSING -> COMPLETED / FAILED / DEAD, fenced by the lease
    cur = conn.execute(
        "UPDATE jobs SET state = %(state)s, next_run_at = %(next)s, exit_code = %(code)s,"
        f" error = %(error)s, stdout = %(out)s, stderr = %(err)s, finished_at = {T},"
        f" updated_at = {T}, reason = NULL"
        " WHERE id = %(id)s AND state = 'processing' AND lease = %(lease)s",
        finish_params(job_id, lease, outcome, now, clean),
    )
    return cur.rowcount > 0


def clean(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; a job's output may.  Keep the rest as is."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


#: The columns an enqueue writes, in the order insert_few's unnest and copy_many's
#: rows give them.
_INSERT_COLUMNS = (
    "id, command, state, max_retries, priority, timeout, created_at, updated_at, run_at,"
    " next_run_at, queue, cwd, env, unique_key"
)


def waiting(conn: Conn, jobs: Sequence[NewJob]) -> frozenset[str]:
    """The ids of the jobs that must wait: a parent (in this batch, or stored) has not
    completed.  Each stored parent is read FOR SHARE: its state cannot change before
    this transaction commits, so a parent that completes meanwhile finds the new
    job_deps rows and releases the child.  JobNotFound for an unknown parent; Conflict
    for one that ended dead or cancelled (the job could never run)."""
    from queuectl.errors import Conflict, JobNotFound

    new = {j.id for j in jobs}
    parents = sorted({p for j in jobs for p in j.after if p not in new})
    states: dict[str, str] = {}
    if parents:
        rows = conn.execute(
            "SELECT id, state FROM jobs WHERE id = ANY(%s::text[]) ORDER BY id FOR SHARE", (parents,)
        ).fetchall()
        states = {str(i): str(s) for i, s in rows}
    out = set()
    for j in jobs:
        for parent in j.after:
            if parent in new:
                out.add(j.id)
                continue
            state = states.get(parent)
            if state is None:
                raise JobNotFound(parent)
            if state in ("dead", "cancelled"):
                raise Conflict(f"parent job {parent} is {state}: job {j.id} could never run")
            if state != "completed":
                out.add(j.id)
    return frozenset(out)


def link(conn: Conn, jobs: Sequence[NewJob]) -> None:
    """The job_deps rows of `jobs`, and a queues row for each queue they name."""
    pairs = [(j.id, p) for j in jobs for p in j.after]
    if pairs:
        conn.execute(
            "INSERT INTO job_deps (child, parent) SELECT * FROM unnest(%s::text[], %s::text[])"
            " ON CONFLICT DO NOTHING",
            ([c for c, _ in pairs], [p for _, p in pairs]),
        )
    named = sorted({j.queue for j in jobs} - {"default"})
    if named:
        conn.execute("INSERT INTO queues (name) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (named,))


def insert_few(conn: Conn, jobs: Sequence[NewJob], now: float | None, wait: frozenset[str]) -> None:
    """A few jobs: one INSERT over arrays (fewest round trips)."""
    # None -> PENDING / WAITING (the statement trigger writes the first events)
    conn.execute(
        f"INSERT INTO jobs ({_INSERT_COLUMNS})"
        f" SELECT u.id, u.command, u.state, u.max_retries, u.priority, u.timeout,"
        f" {T}, {T}, u.run_at, CASE WHEN u.state = 'waiting' THEN NULL ELSE u.run_at END,"
        " u.queue, u.cwd, u.env, u.unique_key"
        " FROM unnest(%(ids)s::text[], %(cmds)s::text[], %(states)s::text[], %(retries)s::int8[],"
        " %(prios)s::int8[], %(timeouts)s::float8[], %(runs)s::float8[], %(queues)s::text[],"
        " %(cwds)s::text[], %(envs)s::text[], %(keys)s::text[])"
        " AS u(id, command, state, max_retries, priority, timeout, run_at, queue, cwd, env, unique_key)",
        {
            "now": now,
            "ids": [j.id for j in jobs],
            "cmds": [j.command for j in jobs],
            "states": ["waiting" if j.id in wait else "pending" for j in jobs],
            "retries": [j.max_retries for j in jobs],
            "prios": [j.priority for j in jobs],
            "timeouts": [j.timeout for j in jobs],
            "runs": [j.run_at for j in jobs],
            "queues": [j.queue for j in jobs],
            "cwds": [j.cwd for j in jobs],
            "envs": [j.env for j in jobs],
            "keys": [j.unique_key for j in jobs],
        },
    )


def copy_many(conn: Conn, jobs: Sequence[NewJob], now: float | None, wait: frozenset[str]) -> None:
    """Many jobs: COPY, about twice the rate of INSERT (the statement trigger
    fires for COPY too, so the history is written all the same)."""
    if now is None:
        row = conn.execute(f"SELECT {DB_NOW}").fetchone()
        assert row is not None
        now = float(row[0])
    with conn.cursor() as cur, cur.copy(f"COPY jobs ({_INSERT_COLUMNS}) FROM STDIN") as copy:
        for j in jobs:
            # None -> PENDING / WAITING
            held = j.id in wait
            head = (j.id, j.command, "waiting" if held else "pending", j.max_retries, j.priority, j.timeout)
            tail = (j.queue, j.cwd, j.env, j.unique_key)
            copy.write_row((*head, now, now, j.run_at, None if held else j.run_at, *tail))


def clock(conn: Conn) -> float:
    """The database clock as it is now."""
    row = conn.execute(CLOCK).fetchone()
    assert row is not None
    return float(row[0])
