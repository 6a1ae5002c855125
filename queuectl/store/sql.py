"""SQL and parameters both backends share, written once: the column lists they read
and write, and the fenced statements that end an attempt.  A statement is built for
one backend's placeholder style by `mark` (name -> placeholder: ":name" for SQLite,
"%(name)s" for PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from queuectl.models import MONITOR_LEASE, JobFilter, JobMetrics, JobState, QueueInfo, WorkerInfo
from queuectl.store.outcome import Finished, Recovered

#: A job's history events, in models.Event's field order.
EVENT_COLUMNS = "seq, job_id, at, from_state, to_state, attempt, worker_id, exit_code, error, reason"
#: The columns register_worker writes, in worker_row's order.
WORKER_COLUMNS = "id, host, pid, proc_start, started_at, heartbeat_at, home, holding"

#: Text as it goes into a column (PostgreSQL's cannot hold NUL: postgres.queries.clean).
Clean = Callable[[str | None], str | None]


def held_key(keyed: list[tuple[str, str]], holder: Callable[[str], str | None]) -> tuple[str, str] | None:
    """The first unique key of an insert's jobs ((key, job id), in order) that another
    of them repeats or a stored job that may still run holds (`holder(key)`: its id,
    or None), as (key, holding id); None: no key clashes."""
    seen: dict[str, str] = {}
    for key, job_id in keyed:
        if key in seen:
            return key, seen[key]
        seen[key] = job_id
        held = holder(key)
        if held is not None:
            return key, held
    return None


#: The holder of a unique key: the job that may still run with it.
KEY_HOLDER = (
    "SELECT id FROM jobs WHERE unique_key = {mark}"
    " AND state IN ('waiting', 'pending', 'failed', 'processing')"
)


def _same(text: str | None) -> str | None:
    return text


def workers_query(pick: str = "") -> str:
    """Every worker row in WorkerInfo's field order (the PROCESSING job it holds
    picked by `pick`, an ORDER BY clause or nothing), oldest first."""
    return (
        "SELECT w.id, w.host, w.pid, w.proc_start, w.started_at, w.heartbeat_at,"
        " (SELECT j.id FROM jobs j WHERE j.worker_id = w.id AND j.state = 'processing'"
        f"  {pick}LIMIT 1), w.holding, w.home"
        " FROM workers w ORDER BY w.started_at, w.id"
    )


def worker_row(info: WorkerInfo) -> tuple[Any, ...]:
    """The values of WORKER_COLUMNS for `info`."""
    return (
        info.id,
        info.host,
        info.pid,
        info.proc_start,
        info.started_at,
        info.heartbeat_at,
        info.home,
        info.holding,
    )


def cancel_reason(actor: str) -> str:
    """The reason a cancel records (its history event shows who did it)."""
    return f"cancelled by {actor}"


def finish_params(
    job_id: str, lease: int, outcome: Finished, now: float | None, clean: Clean = _same
) -> dict[str, Any]:
    """The parameters of a backend's finish statement: state, next, code, error, out,
    err, now, id, lease."""
    return {
        "state": outcome.state.value,
        "next": outcome.next_run_at,
        "code": outcome.exit_code,
        "error": clean(outcome.error),
        "out": clean(outcome.stdout),
        "err": clean(outcome.stderr),
        "now": now,
        "id": job_id,
        "lease": lease,
    }


def recover_statement(
    job_id: str, lease: int, outcome: Recovered, mark: Callable[[str], str], clean: Clean = _same
) -> tuple[str, dict[str, Any]]:
    """The recovery's one guarded UPDATE and its parameters but `now`: PROCESSING ->
    FAILED / DEAD (or PENDING, the attempt given back), fenced by the lease and by
    what the outcome's guard requires (its lease holder's lease still unexpired, its
    silent worker still silent)."""
    attempts = "attempts - 1" if outcome.give_back else "attempts"
    now = mark("now")
    sql = (
        f"UPDATE jobs SET state = {mark('state')}, attempts = {attempts}, next_run_at = {mark('next')},"
        f" exit_code = NULL, error = {mark('error')}, finished_at = {now}, updated_at = {now},"
        f" reason = {mark('reason')} WHERE id = {mark('id')} AND state = 'processing'"
        f" AND lease = {mark('lease')}"
    )
    params: dict[str, Any] = {
        "state": outcome.state.value,
        "next": outcome.next_run_at,
        "error": clean(outcome.error),
        "reason": outcome.reason,
        "id": job_id,
        "lease": lease,
    }
    g = outcome.guard
    if g.holder is not None:
        sql += (
            f" AND EXISTS (SELECT 1 FROM leases WHERE name = {mark('lease_name')}"
            f" AND holder = {mark('holder')} AND expires_at > {now})"
        )
        params.update(lease_name=MONITOR_LEASE, holder=g.holder)
    if g.worker_id is not None:
        # The worker is still silent: no heartbeat since the one the verdict saw.
        sql += (
            f" AND NOT EXISTS (SELECT 1 FROM workers WHERE id = {mark('wid')}"
            f" AND heartbeat_at > {mark('seen')})"
        )
        seen = float("-inf") if g.heartbeat_seen is None else g.heartbeat_seen
        params.update(wid=g.worker_id, seen=seen)
    return sql, params


def job_filter(where: JobFilter, dialect: str) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (with its leading " WHERE", or "") and named parameters of a
    listing filtered by `where`, for `dialect` ("sqlite" or "postgres").

    The command test is a literal substring (instr/strpos: no LIKE pattern, so % and _
    match themselves, and both stores compare case-sensitively)."""
    pg = dialect == "postgres"

    def mark(name: str) -> str:
        return f"%({name})s" if pg else f":{name}"

    def one_of(column: str, name: str) -> str:
        if pg:
            return f"{column} = ANY(%({name})s::text[])"
        return f"{column} IN (SELECT value FROM json_each(:{name}))"

    def texts(values: Iterable[str]) -> Any:
        return list(values) if pg else json.dumps(list(values))

    terms: list[str] = []
    params: dict[str, Any] = {}
    if where.states:
        terms.append(one_of("state", "states"))
        params["states"] = texts(s.value for s in where.states)
    if where.queues:
        terms.append(one_of("queue", "queues"))
        params["queues"] = texts(where.queues)
    if where.command_contains is not None:
        find = "strpos" if pg else "instr"
        terms.append(f"{find}(command, {mark('text')}) > 0")
        params["text"] = where.command_contains
    if where.since is not None:
        terms.append(f"created_at >= {mark('since')}")
        params["since"] = where.since
    if where.until is not None:
        terms.append(f"created_at < {mark('until')}")
        params["until"] = where.until
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


def list_order(where: JobFilter) -> str:
    """A listing's order: creation order, oldest first (or newest first)."""
    return " ORDER BY created_at DESC, id DESC" if where.newest_first else " ORDER BY created_at, id"


def queue_infos(rows: Iterable[Sequence[Any]]) -> list[QueueInfo]:
    """Queue stats rows (name, paused, concurrency, state or None, n) -> one
    QueueInfo per queue, in the rows' order, every state present."""
    out: dict[str, tuple[bool, int | None, dict[str, int]]] = {}
    for name, paused, concurrency, state, n in rows:
        entry = out.setdefault(
            str(name),
            (bool(paused), None if concurrency is None else int(concurrency), {s.value: 0 for s in JobState}),
        )
        if state is not None:
            entry[2][str(state)] = int(n)
    return [QueueInfo(name, p, c, counts) for name, (p, c, counts) in out.items()]


def metrics_queries(mark: Callable[[str], str], bounds: Sequence[float]) -> tuple[str, str, str, str]:
    """Store.job_metrics's four reads: jobs and attempts per (queue, state); the
    completed jobs' last-attempt run times as cumulative bucket counts, count and sum
    (the bounds are our constants, written into the text); recoveries per reason in
    the history; the earliest due time of a job due at `mark("now")`."""
    from queuectl.models import Reason

    per_queue = "SELECT queue, state, count(*), coalesce(sum(attempts), 0) FROM jobs GROUP BY queue, state"
    buckets = "".join(f", coalesce(sum(CASE WHEN d <= {float(b)!r} THEN 1 ELSE 0 END), 0)" for b in bounds)
    runtime = (
        f"SELECT count(*), coalesce(sum(d), 0){buckets} FROM (SELECT finished_at - started_at AS d FROM jobs"
        " WHERE state = 'completed' AND started_at IS NOT NULL AND finished_at IS NOT NULL) runs"
    )
    reasons = ", ".join(f"'{r.value}'" for r in Reason)
    recoveries = (
        "SELECT reason, count(*) FROM job_events"
        f" WHERE from_state = 'processing' AND reason IN ({reasons}) GROUP BY reason"
    )
    oldest = (
        "SELECT min(next_run_at) FROM jobs"
        f" WHERE state IN ('pending', 'failed') AND next_run_at <= {mark('now')}"
    )
    return per_queue, runtime, recoveries, oldest


def job_metrics(
    bounds: Sequence[float], rows: tuple[Sequence[Any], Sequence[Any], Sequence[Any], Any], now: float
) -> JobMetrics:
    """JobMetrics from the rows of metrics_queries's four reads at `now`."""
    per_queue, runtime, recoveries, oldest = rows
    count, total, *cumulative = runtime
    return JobMetrics(
        jobs=[(str(q), str(s), int(n), int(a)) for q, s, n, a in per_queue],
        bounds=tuple(bounds),
        runtime_buckets=[int(c) for c in cumulative],
        runtime_count=int(count),
        runtime_sum=float(total),
        recoveries={str(r): int(n) for r, n in recoveries},
        oldest_due_at=None if oldest is None else float(oldest),
        now=now,
    )


#: The most recent history events finished_since() looks through.
FINISHED_TAIL = 100_000


def finished_query(mark: Callable[[str], str]) -> str:
    """Attempts that ended (completed, failed, dead) since `mark("since")`, per state,
    among the last FINISHED_TAIL history events (a walk of the primary key's end, not
    of the whole history)."""
    return (
        "SELECT to_state, count(*) FROM job_events"
        f" WHERE seq > (SELECT coalesce(max(seq), 0) FROM job_events) - {FINISHED_TAIL}"
        f" AND at >= {mark('since')} AND to_state IN ('completed', 'failed', 'dead') GROUP BY to_state"
    )
