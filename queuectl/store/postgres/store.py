"""The PostgreSQL store, through psycopg 3: one queue for workers on many hosts.

Same semantics as the SQLite store (see store/__init__.py), with these choices:

* Times are epoch seconds in `double precision` columns, so a value round-trips
  exactly (remove_worker is a compare-and-set on heartbeat_at).  `now=None` means
  the database clock (`now()`: one instant per transaction), so host clocks do not
  matter; an explicit `now` is always honoured.
* History is written by triggers in the same transaction as every state change.
* The claim is one autocommit statement with `FOR UPDATE SKIP LOCKED`: claimers on
  any number of hosts never get the same row and never wait for each other.
* Enqueue, `dlq retry`, cancel and a running attempt's saved output send
  `pg_notify` in their transaction; an idle worker (and a waiter) LISTENs for it
  (notify.py).  A finish sends none: see Queue.wait for how a waiter learns of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from queuectl.actors import cli_actor
from queuectl.errors import DuplicateJob, StoreError, UniqueConflict
from queuectl.models import (
    Beat,
    Event,
    Job,
    JobFilter,
    JobMetrics,
    JobState,
    LeaseGrant,
    LeaseInfo,
    NewJob,
    QueueInfo,
    WorkerInfo,
)
from queuectl.store.outcome import Finished, Recovered
from queuectl.store.postgres import queries
from queuectl.store.postgres.connection import CONNECT_TRIES, Conn, Connection
from queuectl.store.postgres.notify import Listener, channel
from queuectl.store.postgres.queues import NEXT_DUE, SET_CONCURRENCY, SET_PAUSED, STATS
from queuectl.store.postgres.schedules import Schedules
from queuectl.store.postgres.schema import migrate
from queuectl.store.postgres.trail import ALL_SEALED, SEALED_EVENT, PostgresTrail, add_note, set_actor, stamp
from queuectl.store.sql import (
    EVENT_COLUMNS,
    KEY_HOLDER,
    WORKER_COLUMNS,
    cancel_reason,
    finished_query,
    held_key,
    job_filter,
    job_metrics,
    list_order,
    metrics_queries,
    queue_infos,
    recover_statement,
    worker_row,
    workers_query,
)
from queuectl.store.trail import TrailStore

#: From this many jobs on, an enqueue uses COPY instead of one INSERT.
COPY_THRESHOLD = 64
_WORKERS = workers_query("ORDER BY j.id ")


class PostgresStore(Schedules):
    #: Another host may reach the server while this one cannot (store protocol).
    partitionable = True

    def __init__(self, url: str, *, connect_tries: int = CONNECT_TRIES) -> None:
        self._channel = ""
        self._db = Connection(url, self._migrate, connect_tries)
        self._listener = Listener(self._db)
        #: The URL without its password: the only form that may be shown.
        self.url = self._db.url
        #: Who this process's changes are by, in the audit trail (store protocol).
        self.actor = cli_actor()
        self.trail: TrailStore = PostgresTrail(self._db, lambda: self.actor)
        self._db.open()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    def _changes(self, query: str, params: Any) -> int:
        """Run one statement (autocommit: its own transaction); the rows it changed."""
        return self._db.run(lambda conn: conn.execute(query, params).rowcount)

    def _migrate(self, conn: Conn) -> None:
        self._channel = self._listener.channel = channel(migrate(conn, self.url))

    # --- clock -----------------------------------------------------------------------

    def now(self) -> float:
        return float(self._db.read(queries.CLOCK)[0][0])

    def check_database(self) -> None:
        """Nothing to check: the server owns its files (store protocol)."""

    def set_call_timeout(self, seconds: float | None) -> None:
        """Bound every call (store protocol)."""
        self._db.set_call_timeout(seconds)

    # --- jobs ----------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob], now: float | None = None) -> list[str]:
        ids = [j.id for j in jobs]
        if not jobs:
            return []

        def insert(conn: Conn) -> list[str]:
            with conn.transaction():
                set_actor(conn, self.actor)
                wait = queries.waiting(conn, jobs) if any(j.after for j in jobs) else frozenset()
                if len(jobs) < COPY_THRESHOLD:
                    queries.insert_few(conn, jobs, now, wait)
                else:
                    queries.copy_many(conn, jobs, now, wait)
                queries.link(conn, jobs)
                conn.execute("SELECT pg_notify(%s, 'enqueue')", (self._channel,))
            return ids

        try:
            return self._db.run(insert)
        except DuplicateJob:
            raise self._conflict(jobs) from None
        except UnicodeEncodeError:
            raise StoreError("job text is not valid UTF-8") from None

    def _conflict(self, jobs: Sequence[NewJob]) -> DuplicateJob | UniqueConflict:
        """What a failed insert clashed with: an id, or else a unique key."""
        taken = self._first_existing([j.id for j in jobs])
        keyed = [(j.unique_key, j.id) for j in jobs if j.unique_key is not None]
        if taken is not None or not keyed:
            return DuplicateJob(taken)

        def holder(key: str) -> str | None:
            rows = self._db.read(KEY_HOLDER.format(mark="%s"), (key,))
            return str(rows[0][0]) if rows else None

        clash = held_key(keyed, holder)
        return DuplicateJob(None) if clash is None else UniqueConflict(*clash)

    def _first_existing(self, ids: list[str]) -> str | None:
        seen: set[str] = set()
        for job_id in ids:
            if job_id in seen:
                return job_id
            seen.add(job_id)
        rows = self._db.read(
            "SELECT u.id FROM unnest(%s::text[]) WITH ORDINALITY AS u(id, n)"
            " WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.id) ORDER BY u.n LIMIT 1",
            (ids,),
        )
        return str(rows[0][0]) if rows else None

    def get(self, job_id: str) -> Job | None:
        rows = self._db.read(f"SELECT {queries.COLS} FROM jobs WHERE id = %s", (job_id,))
        return Job.from_tuple(rows[0]) if rows else None

    def parents(self, job_id: str) -> list[str]:
        rows = self._db.read("SELECT parent FROM job_deps WHERE child = %s ORDER BY parent", (job_id,))
        return [str(r[0]) for r in rows]

    def history(self, job_id: str) -> list[Event]:
        rows = self._db.read(
            f"SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = %s ORDER BY seq", (job_id,)
        )
        return [Event.from_tuple(r) for r in rows]

    def list_jobs(
        self, state: JobState | None = None, limit: int | None = None, *, where: JobFilter | None = None
    ) -> list[Job]:
        where = where or JobFilter()
        if state is not None:
            where = replace(where, states=(state,))
        clause, params = job_filter(where, "postgres")
        params["lim"] = None if limit is None else int(limit)
        query = f"SELECT {queries.COLS} FROM jobs{clause}{list_order(where)} LIMIT %(lim)s"
        return [Job.from_tuple(r) for r in self._db.read(query, params)]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in JobState}
        for state, n in self._db.read("SELECT state, count(*) FROM jobs GROUP BY state"):
            out[str(state)] = int(n)
        return out

    def fold_counts(self) -> None:
        """Nothing to fold: counts() counts the jobs table itself here, with no
        snapshot to keep."""

    def claim(
        self, worker_id: str, now: float | None = None, queues: Sequence[str] | None = None
    ) -> Job | None:
        return self._db.run(lambda conn: queries.claim(conn, worker_id, now, queues))

    def finish(self, job_id: str, lease: int, outcome: Finished, now: float | None = None) -> bool:
        return self._db.run(lambda conn: queries.finish(conn, job_id, lease, outcome, now))

    def finish_and_claim(
        self,
        job_id: str,
        lease: int,
        outcome: Finished,
        worker_id: str,
        now: float | None = None,
        queues: Sequence[str] | None = None,
    ) -> tuple[bool, Job | None]:
        def both(conn: Conn) -> tuple[bool, Job | None]:
            # One transaction, one commit per job; the finish stays fenced by the lease.
            with conn.transaction():
                held = queries.finish(conn, job_id, lease, outcome, now)
                return held, queries.claim(conn, worker_id, now, queues)

        return self._db.run(both)

    def next_due(self, queues: Sequence[str] | None = None) -> float | None:
        rows = self._db.read(NEXT_DUE, {"now": None, "served": None if queues is None else list(queues)})
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    # --- named queues ----------------------------------------------------------------

    def queue_stats(self) -> list[QueueInfo]:
        return queue_infos(self._db.read(STATS))

    def set_paused(self, name: str, paused: bool) -> bool:
        note = ("queue_paused" if paused else "queue_resumed", {"queue": name})
        return self._set(SET_PAUSED, name, paused, note)

    def set_concurrency(self, name: str, limit: int | None) -> bool:
        note = ("queue_concurrency_set", {"queue": name, "concurrency": limit})
        return self._set(SET_CONCURRENCY, name, limit, note)

    def _set(self, query: str, name: str, value: Any, note: tuple[str, dict[str, Any]]) -> bool:
        """One queue setting, audited; a change wakes idle workers (a resumed queue,
        or one given more room, may have jobs due)."""

        def run(conn: Conn) -> bool:
            with conn.transaction():
                changed = conn.execute(query, {"name": name, "value": value}).rowcount > 0
                if changed:
                    add_note(conn, note[0], self.actor, note[1])
                    conn.execute("SELECT pg_notify(%s, 'queue')", (self._channel,))
            return changed

        return self._db.run(run)

    def dlq_retry(self, job_ids: Iterable[str] | None, now: float | None = None) -> list[str]:
        # DEAD -> PENDING, attempts reset: the job gets a fresh set of retries.
        update = (
            f"UPDATE jobs SET state = 'pending', attempts = 0, next_run_at = {queries.T},"
            f" updated_at = {queries.T}, worker_id = NULL, exit_code = NULL, error = NULL,"
            " reason = 'dlq_retry' WHERE state = 'dead'"
        )
        ids = None if job_ids is None else list(dict.fromkeys(job_ids))
        if ids is None:
            query = (
                f"WITH moved AS ({update} RETURNING id, created_at)"
                " SELECT id FROM moved ORDER BY created_at, id"
            )
            params: dict[str, Any] = {"now": now}
        else:
            query = f"{update} AND id = ANY(%(ids)s::text[]) RETURNING id"
            params = {"now": now, "ids": ids}

        def retry(conn: Conn) -> list[str]:
            with conn.transaction():
                moved = [str(r[0]) for r in conn.execute(query, params).fetchall()]
                if moved:
                    stamp(conn, self.actor)
                    conn.execute("SELECT pg_notify(%s, 'dlq_retry')", (self._channel,))
            return moved

        try:
            moved = self._db.run(retry)
        except DuplicateJob:  # the unique index: a key the retry would take is held
            raise self._held_key(ids) from None
        if ids is None:
            return moved
        done = set(moved)
        return [i for i in ids if i in done]

    def cancel(self, job_ids: Sequence[str], actor: str, now: float | None = None) -> list[str]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return []
        # WAITING/PENDING/FAILED/PROCESSING -> CANCELLED: one guarded statement for the
        # rows; a row a finish holds is waited for and re-checked against the WHERE.
        # The lease is left as it is: the running attempt's worker finds (id,
        # processing, lease) gone at its next heartbeat.
        query = (
            f"UPDATE jobs SET state = 'cancelled', next_run_at = NULL, finished_at = {queries.T},"
            f" updated_at = {queries.T}, reason = %(reason)s"
            " WHERE id = ANY(%(ids)s::text[]) AND state IN ('waiting', 'pending', 'failed', 'processing')"
            " RETURNING id"
        )
        params = {"now": now, "ids": ids, "reason": queries.clean(cancel_reason(actor))}

        def cancel(conn: Conn) -> set[str]:
            with conn.transaction():
                moved = {str(r[0]) for r in conn.execute(query, params).fetchall()}
                if moved:
                    stamp(conn, self.actor)
                    conn.execute("SELECT pg_notify(%s, 'cancel')", (self._channel,))
            return moved

        moved = self._db.run(cancel)
        return [i for i in ids if i in moved]

    def save_output(self, job_id: str, lease: int, stdout: str, stderr: str) -> bool:
        params = {"id": job_id, "lease": lease, "out": queries.clean(stdout), "err": queries.clean(stderr)}

        def save(conn: Conn) -> bool:
            # Fenced by the lease; no state change, so no history event.  The NOTIFY
            # wakes `logs --follow` (at most one per running job per heartbeat).
            with conn.transaction():
                changed = (
                    conn.execute(
                        "UPDATE jobs SET stdout = %(out)s, stderr = %(err)s"
                        " WHERE id = %(id)s AND state = 'processing' AND lease = %(lease)s",
                        params,
                    ).rowcount
                    > 0
                )
                if changed:
                    conn.execute("SELECT pg_notify(%s, 'output')", (self._channel,))
            return changed

        return self._db.run(save)

    def _held_key(self, ids: list[str] | None) -> UniqueConflict:
        """Why a dlq_retry clashed: the first dead job (of `ids`, None: any) whose
        unique key a job that may still run holds, or another of the retried jobs."""
        rows = self._db.read(
            "SELECT d.unique_key, l.id FROM jobs d JOIN jobs l ON l.unique_key = d.unique_key"
            " AND l.id <> d.id AND l.state IN ('waiting', 'pending', 'failed', 'processing')"
            " WHERE d.state = 'dead' AND (%(ids)s::text[] IS NULL OR d.id = ANY(%(ids)s::text[]))"
            " ORDER BY d.created_at, d.id LIMIT 1",
            {"ids": ids},
        )
        if rows:
            return UniqueConflict(str(rows[0][0]), str(rows[0][1]))
        rows = self._db.read(
            "SELECT unique_key FROM jobs WHERE state = 'dead' AND unique_key IS NOT NULL"
            " AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))"
            " GROUP BY unique_key HAVING count(*) > 1 LIMIT 1",
            {"ids": ids},
        )
        return UniqueConflict(str(rows[0][0]) if rows else "?", None)

    def purge(self, states: Sequence[JobState], before: float | None = None, limit: int | None = None) -> int:
        # One statement: the jobs and their history go together, or not at all.
        which = (
            "state = ANY(%(states)s::text[])"
            f" AND (%(before)s::float8 IS NULL OR updated_at < %(before)s::float8) AND {ALL_SEALED}"
        )
        if limit is not None:
            # The oldest first, along jobs_state (state, created_at, id); rows another
            # purge (a second monitor) holds are left to it.
            which = (
                f"id IN (SELECT id FROM jobs WHERE {which}"
                " AND (%(before)s::float8 IS NULL OR created_at < %(before)s::float8)"
                " ORDER BY state, created_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
            )
        # Only jobs whose events are all sealed go (ALL_SEALED): the rest wait for a
        # later purge.
        query = (
            f"WITH gone AS (DELETE FROM jobs WHERE {which} RETURNING id),"
            f" events AS (DELETE FROM job_events WHERE {SEALED_EVENT} AND job_id IN (SELECT id FROM gone))"
            " SELECT count(*) FROM gone"
        )
        params = {"states": [s.value for s in states], "before": before, "limit": limit}
        detail = {"states": params["states"], "before": before, "limit": limit}

        def delete(conn: Conn) -> int:
            with conn.transaction():
                deleted = int(conn.execute(query, params).fetchall()[0][0])
                if deleted:
                    add_note(conn, "jobs_purged", self.actor, {**detail, "changed": deleted})
            return deleted

        return self._db.run(delete)

    def purgeable(self, states: Sequence[JobState], before: float | None = None) -> int:
        query = (
            "SELECT count(*) FROM jobs WHERE state = ANY(%(states)s::text[])"
            " AND (%(before)s::float8 IS NULL OR updated_at < %(before)s::float8)"
            f" AND {ALL_SEALED}"
        )
        return int(self._db.read(query, {"states": [s.value for s in states], "before": before})[0][0])

    def job_metrics(self, bounds: Sequence[float], now: float | None = None) -> JobMetrics:
        per_queue, runtime, recoveries, oldest = metrics_queries(lambda name: f"%({name})s", bounds)
        at = self.now() if now is None else now
        rows = (
            self._db.read(per_queue),
            self._db.read(runtime)[0],
            self._db.read(recoveries),
            self._db.read(oldest, {"now": at})[0][0],
        )
        return job_metrics(bounds, rows, at)

    def finished_since(self, since: float) -> dict[str, int]:
        rows = self._db.read(finished_query(lambda name: f"%({name})s"), {"since": since})
        return {str(state): int(n) for state, n in rows}

    # --- recovery ------------------------------------------------------------------

    def processing(self) -> list[Job]:
        rows = self._db.read(f"SELECT {queries.COLS} FROM jobs WHERE state = 'processing' ORDER BY id")
        return [Job.from_tuple(r) for r in rows]

    def recover(self, job_id: str, lease: int, outcome: Recovered, now: float | None = None) -> bool:
        query, params = recover_statement(job_id, lease, outcome, lambda name: f"%({name})s", queries.clean)
        params["audit"] = outcome.audit

        def take_back(conn: Conn) -> bool:
            with conn.transaction():
                # The job's row first, then the time: a wait for the row (its worker's
                # finish) comes before the clock is read.
                conn.execute("SELECT 1 FROM jobs WHERE id = %(id)s FOR UPDATE", params)
                params["now"] = queries.clock(conn) if now is None else now
                changed = conn.execute(query, params).rowcount > 0
                if changed:
                    stamp(conn, self.actor)
                if changed and outcome.audit is not None:
                    conn.execute(
                        "INSERT INTO audit_outbox (record, created_at) VALUES (%(audit)s, %(now)s)", params
                    )
            return changed

        return self._db.run(take_back)

    def audit_pending(self) -> list[tuple[int, str]]:
        rows = self._db.read("SELECT id, record FROM audit_outbox ORDER BY id")
        return [(int(i), str(r)) for i, r in rows]

    def audit_clear(self, ids: Sequence[int]) -> None:
        if ids:
            self._changes("DELETE FROM audit_outbox WHERE id = ANY(%s)", (list(ids),))

    # --- workers -------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        self._changes(
            f"INSERT INTO workers ({WORKER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
            " proc_start = excluded.proc_start, started_at = excluded.started_at,"
            " heartbeat_at = excluded.heartbeat_at, home = excluded.home,"
            " holding = excluded.holding",
            worker_row(info),
        )

    def heartbeat(
        self, worker_id: str, job_id: str | None, lease: int | None, now: float | None = None
    ) -> Beat:
        params = {"now": now, "w": worker_id, "job": job_id, "lease": lease}

        def beat(conn: Conn) -> Beat:
            with conn.transaction():
                # The job first: a wait for a lock on jobs comes before the heartbeat's
                # time, which the UPDATE reads from the clock as it writes the row.
                # FOR SHARE waits for a recovery in flight (it locks the job FOR
                # UPDATE): the answer is then its outcome, never the state before it,
                # and a recovery that starts after this commits sees the heartbeat.
                held = job_id is None or (
                    conn.execute(
                        "SELECT 1 FROM jobs WHERE id = %(job)s AND state = 'processing'"
                        " AND lease = %(lease)s::int8 FOR SHARE",
                        params,
                    ).fetchone()
                    is not None
                )
                registered = (
                    conn.execute(
                        "UPDATE workers SET holding = %(job)s::text, heartbeat_at ="
                        " COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"
                        " WHERE id = %(w)s",
                        params,
                    ).rowcount
                    > 0
                )
            return Beat(registered, held)

        return self._db.run(beat)

    def unregister_worker(self, worker_id: str) -> None:
        self._changes(
            "DELETE FROM workers WHERE id = %(w)s AND NOT EXISTS"
            " (SELECT 1 FROM jobs WHERE state = 'processing' AND worker_id = %(w)s)",
            {"w": worker_id},
        )

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo.from_tuple(r) for r in self._db.read(_WORKERS)]

    def remove_worker(self, worker_id: str, heartbeat_at: float) -> bool:
        changed = self._changes(
            "DELETE FROM workers WHERE id = %(w)s AND heartbeat_at = %(hb)s::float8"
            " AND NOT EXISTS (SELECT 1 FROM jobs WHERE state = 'processing' AND worker_id = %(w)s)",
            {"w": worker_id, "hb": heartbeat_at},
        )
        return changed > 0

    # --- the monitor lease -----------------------------------------------------------

    def acquire_lease(
        self, name: str, holder: str, kind: str, ttl: float, now: float | None = None
    ) -> LeaseGrant | None:
        # One INSERT ... ON CONFLICT: atomic, so two takers never both win.
        query = (
            "INSERT INTO leases (name, holder, kind, acquired_at, expires_at)"
            " VALUES (%(name)s, %(holder)s, %(kind)s, %(now)s, %(now)s + %(ttl)s::float8)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, kind = excluded.kind,"
            " acquired_at = excluded.acquired_at, expires_at = excluded.expires_at"
            " WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at"
        )
        params: dict[str, Any] = {"name": name, "holder": holder, "kind": kind, "ttl": ttl}

        def take(conn: Conn) -> LeaseGrant | None:
            with conn.transaction():
                before = conn.execute(
                    "SELECT greatest(acquired_at, last_pass_at), resumed_at FROM leases"
                    " WHERE name = %(name)s FOR UPDATE",
                    params,
                ).fetchone()
                params["now"] = t = queries.clock(conn) if now is None else now
                if conn.execute(query, params).rowcount == 0:
                    return None
            previous, resumed = before if before else (None, None)
            return LeaseGrant(at=t, previous=previous, resumed_at=resumed)

        return self._db.run(take)

    def mark_resumed(self, name: str, holder: str, at: float) -> None:
        self._changes("UPDATE leases SET resumed_at = %s WHERE name = %s AND holder = %s", (at, name, holder))

    def keep_due(self, was: float, now: float) -> int:
        return self._changes(
            "UPDATE jobs SET next_run_at = %(now)s WHERE state IN ('pending', 'failed')"
            " AND next_run_at > %(now)s AND next_run_at <= %(was)s",
            {"now": now, "was": was},
        )

    def release_lease(self, name: str, holder: str, passed: bool, now: float | None = None) -> bool:
        query = (
            f"UPDATE leases SET expires_at = {queries.T},"
            f" last_pass_at = CASE WHEN %(passed)s THEN {queries.T} ELSE last_pass_at END,"
            " last_pass_by = CASE WHEN %(passed)s THEN holder ELSE last_pass_by END,"
            " last_pass_kind = CASE WHEN %(passed)s THEN kind ELSE last_pass_kind END,"
            f" last_monitor_pass_at = CASE WHEN %(passed)s AND kind = 'monitor' THEN {queries.T}"
            "                        ELSE last_monitor_pass_at END"
            " WHERE name = %(name)s AND holder = %(holder)s"
        )
        return self._changes(query, {"now": now, "passed": bool(passed), "name": name, "holder": holder}) > 0

    def lease_info(self, name: str) -> LeaseInfo | None:
        rows = self._db.read(
            "SELECT name, holder, kind, acquired_at, expires_at, last_pass_at, last_pass_by,"
            " last_pass_kind, last_monitor_pass_at, resumed_at FROM leases WHERE name = %s",
            (name,),
        )
        return LeaseInfo(*rows[0]) if rows else None

    # --- config --------------------------------------------------------------------

    def config_items(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._db.read("SELECT key, value FROM config")}

    def config_set(self, items: dict[str, str]) -> None:
        def store(conn: Conn) -> None:
            with conn.transaction(), conn.cursor() as cur:
                old = dict(cur.execute("SELECT key, value FROM config").fetchall())
                cur.executemany(
                    "INSERT INTO config (key, value) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    list(items.items()),
                )
                for key, value in items.items():
                    add_note(conn, "config_set", self.actor, {"key": key, "old": old.get(key), "new": value})

        self._db.run(store)

    # --- waiting -------------------------------------------------------------------

    def wait_for_change(self, timeout: float, wakeup_fd: int | None = None) -> None:
        """Wait for a NOTIFY on this queue's channel (notify.Listener.wait)."""
        self._listener.wait(timeout, wakeup_fd)

    def close(self) -> None:
        self._listener.close()
        self._db.close()
