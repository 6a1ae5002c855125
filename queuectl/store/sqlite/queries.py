"""The guarded statements that move a job out of and into PROCESSING: the claim, the
finish (by the attempt's own worker) and the recovery (on its behalf).  Each is one
statement, run by SQLiteStore inside its write transaction, and reports whether it
changed a row.
"""

from __future__ import annotations

from typing import Any

import apsw

from queuectl.models import JOB_COLUMNS, MONITOR_LEASE, Job, RecoveryGuard
from queuectl.store.outcome import Finished, Recovered

COLS = ", ".join(JOB_COLUMNS)

# PENDING/FAILED -> PROCESSING: one statement, so no two claimers can both match the
# row.  INDEXED BY: without statistics the planner prefers jobs_state (state=?) plus a
# sort of every runnable job, a cost that grows with the queue; jobs_due answers from
# its first entry.
_CLAIM = (
    "UPDATE jobs SET state = 'processing', attempts = attempts + 1,"
    " lease = lease + 1, worker_id = :w, started_at = :now, updated_at = :now,"
    " finished_at = NULL, exit_code = NULL, error = NULL, stdout = NULL,"
    " stderr = NULL, reason = NULL"
    " WHERE id = (SELECT id FROM jobs INDEXED BY jobs_due"
    "             WHERE state IN ('pending', 'failed')"
    "             AND next_run_at <= :now"
    "             ORDER BY priority DESC, next_run_at, id LIMIT 1)"
    f" RETURNING {COLS}"
)

# PROCESSING -> COMPLETED / FAILED / DEAD, fenced by the lease
_FINISH = (
    "UPDATE jobs SET state = :state, next_run_at = :next, exit_code = :code,"
    " error = :error, stdout = :out, stderr = :err, finished_at = :now,"
    " updated_at = :now, reason = NULL"
    " WHERE id = :id AND state = 'processing' AND lease = :lease"
)


def claim(conn: apsw.Connection, worker_id: str, now: float) -> Job | None:
    # The RETURNING cursor is read to its end (fetchall) so the statement completes
    # inside the transaction.
    rows = conn.execute(_CLAIM, {"w": worker_id, "now": now}).fetchall()
    return Job.from_tuple(rows[0]) if rows else None


def finish(conn: apsw.Connection, job_id: str, lease: int, outcome: Finished, now: float) -> bool:
    conn.execute(
        _FINISH,
        {
            "state": outcome.state.value,
            "next": outcome.next_run_at,
            "code": outcome.exit_code,
            "error": outcome.error,
            "out": outcome.stdout,
            "err": outcome.stderr,
            "now": now,
            "id": job_id,
            "lease": lease,
        },
    )
    return bool(conn.changes())


def recover_sql(job_id: str, lease: int, outcome: Recovered, g: RecoveryGuard) -> tuple[str, dict[str, Any]]:
    """The recovery's one guarded UPDATE and its parameters but `now`: PROCESSING ->
    FAILED / DEAD (or PENDING, the attempt given back), fenced by the lease and by
    what `g` requires."""
    attempts = "attempts - 1" if outcome.give_back else "attempts"
    sql = (
        f"UPDATE jobs SET state = :state, attempts = {attempts}, next_run_at = :next,"
        " exit_code = NULL, error = :error, finished_at = :now, updated_at = :now, reason = :reason"
        " WHERE id = :id AND state = 'processing' AND lease = :lease"
    )
    params: dict[str, Any] = {
        "state": outcome.state.value,
        "next": outcome.next_run_at,
        "error": outcome.error,
        "reason": outcome.reason,
        "id": job_id,
        "lease": lease,
    }
    if g.holder is not None:
        sql += (
            " AND EXISTS (SELECT 1 FROM leases WHERE name = :lease_name AND holder = :holder"
            " AND expires_at > :now)"
        )
        params.update(lease_name=MONITOR_LEASE, holder=g.holder)
    if g.worker_id is not None:
        # The worker is still silent: no heartbeat since the one the verdict saw.
        seen = float("-inf") if g.heartbeat_seen is None else g.heartbeat_seen
        sql += " AND NOT EXISTS (SELECT 1 FROM workers WHERE id = :wid AND heartbeat_at > :seen)"
        params.update(wid=g.worker_id, seen=seen)
    return sql, params
