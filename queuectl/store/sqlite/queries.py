"""The two statements of a worker's loop: the claim and the finish (by the attempt's
own worker).  Each is one statement, run by SQLiteStore inside its write
transaction (finish_and_claim runs both in one), and reports what it changed.
"""

from __future__ import annotations

import apsw

from queuectl.models import DEFAULT_QUEUE, JOB_COLUMNS, Job
from queuectl.store.outcome import Finished
from queuectl.store.sql import finish_params

COLS = ", ".join(JOB_COLUMNS)

# PENDING/FAILED -> PROCESSING: one statement, so no two claimers can both match the
# row (and, SQLite having one writer at a time, no two can both see room under a
# queue's concurrency).  Each queue the worker serves (:served, a JSON array; NULL:
# every queue) that is not paused and has room gives its first due job, read from
# jobs_due from its first entry for that queue; the best of those is claimed.  The
# cost grows with the number of queues, not of jobs.  INDEXED BY: without statistics
# the planner prefers jobs_state (state=?) plus a sort of every runnable job.
_TAKE = (
    "UPDATE jobs SET state = 'processing', attempts = attempts + 1,"
    " lease = lease + 1, worker_id = :w, started_at = :now, updated_at = :now,"
    " finished_at = NULL, exit_code = NULL, error = NULL, stdout = NULL,"
    " stderr = NULL, reason = NULL"
)
_CLAIM = (
    f"{_TAKE}"
    " WHERE id = (SELECT h.id FROM queues q JOIN jobs h ON h.id ="
    "              (SELECT id FROM jobs INDEXED BY jobs_due"
    "               WHERE queue = q.name AND state IN ('pending', 'failed')"
    "               AND next_run_at <= :now"
    "               ORDER BY priority DESC, next_run_at, id LIMIT 1)"
    "             WHERE q.paused = 0"
    "             AND (:served IS NULL OR q.name IN (SELECT value FROM json_each(:served)))"
    "             AND (q.concurrency IS NULL OR q.concurrency >"
    "                  (SELECT count(*) FROM jobs p WHERE p.state = 'processing' AND p.queue = q.name))"
    "             ORDER BY h.priority DESC, h.next_run_at, h.id LIMIT 1)"
    f" RETURNING {COLS}"
)

# PROCESSING -> COMPLETED / FAILED / DEAD, fenced by the lease
_FINISH = (
    "UPDATE jobs SET state = :state, next_run_at = :next, exit_code = :code,"
    " error = :error, stdout = :out, stderr = :err, finished_at = :now,"
    " updated_at = :now, reason = NULL"
    " WHERE id = :id AND state = 'processing' AND lease = :lease"
)


# WAITING/PENDING/FAILED/PROCESSING -> CANCELLED.  The lease is left as it is: a
# running attempt's worker finds (id, processing, lease) gone at its next heartbeat.
_CANCEL = (
    "UPDATE jobs SET state = 'cancelled', next_run_at = NULL, finished_at = :now,"
    " updated_at = :now, reason = :reason"
    " WHERE id = :id AND state IN ('waiting', 'pending', 'failed', 'processing')"
)

#: A running attempt's output so far, fenced by the lease (no state change: no event).
SAVE_OUTPUT = (
    "UPDATE jobs SET stdout = :out, stderr = :err WHERE id = :id AND state = 'processing' AND lease = :lease"
)


# The same claim where it has a single queue to read (:q): the worker serves every
# queue and the only one is :q (`default`, which always has a row), or it serves
# :q alone; and :q is neither paused nor limited.  The guard (NOT EXISTS over the
# few rows of `queues`) makes it claim nothing otherwise, and claim() then runs
# _CLAIM in the same write transaction: exact either way.  It reads jobs_due once,
# with no join and no sort: the general claim's join and sort, small as they are,
# lengthen the write lock that every worker of a drain waits for (docs/benchmarks.md).
# `(SELECT :q)`, not `:q`: SQLite built with STAT4 (apsw's is) re-prepares a
# statement whenever a parameter compared with a non-unique index's column gets a
# new binding, which costs three times the claim; a subquery's value is not looked
# at by the planner.
_CLAIM_ONE = (
    f"{_TAKE}"
    " WHERE id = (SELECT id FROM jobs INDEXED BY jobs_due"
    "             WHERE queue = (SELECT :q) AND state IN ('pending', 'failed')"
    "             AND next_run_at <= :now"
    "             ORDER BY priority DESC, next_run_at, id LIMIT 1)"
    " AND NOT EXISTS (SELECT 1 FROM queues WHERE (:all OR name = :q)"
    "                 AND (name <> :q OR paused <> 0 OR concurrency IS NOT NULL))"
    f" RETURNING {COLS}"
)


def claim(
    conn: apsw.Connection, worker_id: str, now: float, served: str | None = None, one: str | None = None
) -> Job | None:
    """`served`: the queues to claim from, as a JSON array (None: every queue);
    `one`: the single queue they are, if so (see queues.single)."""
    # The RETURNING cursor is read to its end (fetchall) so each statement completes
    # inside the transaction.
    if served is None or one is not None:
        q = DEFAULT_QUEUE if served is None else one
        params = {"w": worker_id, "now": now, "q": q, "all": served is None}
        rows = conn.execute(_CLAIM_ONE, params).fetchall()
        if rows:
            return Job.from_tuple(rows[0])
    rows = conn.execute(_CLAIM, {"w": worker_id, "now": now, "served": served}).fetchall()
    return Job.from_tuple(rows[0]) if rows else None


def finish(conn: apsw.Connection, job_id: str, lease: int, outcome: Finished, now: float) -> bool:
    conn.execute(_FINISH, finish_params(job_id, lease, outcome, now))
    return bool(conn.changes())


def cancel(conn: apsw.Connection, job_id: str, reason: str, now: float) -> bool:
    conn.execute(_CANCEL, {"id": job_id, "reason": reason, "now": now})
    return bool(conn.changes())
