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


def claim(conn: Conn, worker_id: str, now: float | None) -> Job | None:
    # PENDING/FAILED -> PROCESSING: one statement.  SKIP LOCKED makes concurrent
    # claimers pass over a row another claimer holds instead of waiting for it; a row
    # changed under us is re-checked against the WHERE (EvalPlanQual).
    row = conn.execute(
        f"UPDATE jobs SET state = 'processing', attempts = attempts + 1,"
        f" lease = lease + 1, worker_id = %(w)s, started_at = {T}, updated_at = {T},"
        " finished_at = NULL, exit_code = NULL, error = NULL, stdout = NULL,"
        " stderr = NULL, reason = NULL"
        " WHERE id = (SELECT id FROM jobs WHERE state IN ('pending', 'failed')"
        f"             AND next_run_at <= {T}"
        "             ORDER BY priority DESC, next_run_at, id LIMIT 1"
        "             FOR UPDATE SKIP LOCKED)"
        f" RETURNING {COLS}",
        {"w": worker_id, "now": now},
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


def insert_few(conn: Conn, jobs: Sequence[NewJob], now: float | None) -> None:
    """A few jobs: one INSERT over arrays (fewest round trips)."""
    # None -> PENDING (the statement trigger writes the first events)
    conn.execute(
        "INSERT INTO jobs (id, command, state, max_retries, priority, timeout,"
        " created_at, updated_at, run_at, next_run_at)"
        f" SELECT u.id, u.command, 'pending', u.max_retries, u.priority, u.timeout,"
        f" {T}, {T}, u.run_at, u.run_at"
        " FROM unnest(%(ids)s::text[], %(cmds)s::text[], %(retries)s::int8[],"
        " %(prios)s::int8[], %(timeouts)s::float8[], %(runs)s::float8[])"
        " AS u(id, command, max_retries, priority, timeout, run_at)",
        {
            "now": now,
            "ids": [j.id for j in jobs],
            "cmds": [j.command for j in jobs],
            "retries": [j.max_retries for j in jobs],
            "prios": [j.priority for j in jobs],
            "timeouts": [j.timeout for j in jobs],
            "runs": [j.run_at for j in jobs],
        },
    )


def copy_many(conn: Conn, jobs: Sequence[NewJob], now: float | None) -> None:
    """Many jobs: COPY, about twice the rate of INSERT (the statement trigger
    fires for COPY too, so the history is written all the same)."""
    if now is None:
        row = conn.execute(f"SELECT {DB_NOW}").fetchone()
        assert row is not None
        now = float(row[0])
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY jobs (id, command, state, max_retries, priority, timeout,"
            " created_at, updated_at, run_at, next_run_at) FROM STDIN"
        ) as copy,
    ):
        for j in jobs:
            # None -> PENDING
            head = (j.id, j.command, "pending", j.max_retries, j.priority, j.timeout)
            copy.write_row((*head, now, now, j.run_at, j.run_at))


def clock(conn: Conn) -> float:
    """The database clock as it is now."""
    row = conn.execute(CLOCK).fetchone()
    assert row is not None
    return float(row[0])
