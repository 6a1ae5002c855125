"""The SQLite store: the Store contract (store/__init__.py) over one APSW connection.

The history of state changes is written by a trigger, so no statement can change a
job's state without its event; a new job's first event is written with its insert
(insert.insert_jobs, the one place jobs are inserted).
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import apsw

from queuectl.actors import cli_actor
from queuectl.errors import DuplicateJob, StoreError, StoreGone, UniqueConflict
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
from queuectl.store.sql import (
    EVENT_COLUMNS,
    WORKER_COLUMNS,
    cancel_reason,
    finished_query,
    job_filter,
    job_metrics,
    list_order,
    metrics_queries,
    queue_infos,
    recover_statement,
    worker_row,
    workers_query,
)
from queuectl.store.sql_schedules import statements
from queuectl.store.sqlite import queries
from queuectl.store.sqlite.connection import config_items, connect, read, translate, write
from queuectl.store.sqlite.counts import COUNTS, COUNTS_UPTO, fold_counts, net_counts
from queuectl.store.sqlite.file import DatabaseFile
from queuectl.store.sqlite.insert import insert_jobs
from queuectl.store.sqlite.queues import NEXT_DUE, SET_CONCURRENCY, SET_PAUSED, STATS, served, single
from queuectl.store.sqlite.schedules import Schedules
from queuectl.store.sqlite.schema import migrate
from queuectl.store.sqlite.trail import (
    ALL_SEALED,
    LOWER_MARK,
    SEALED_EVENT,
    SQLiteTrail,
    add_note,
    newest_event,
    stamp,
)
from queuectl.store.trail import TrailStore

T = TypeVar("T")
_WORKERS = workers_query()
_COLS = queries.COLS
_SCHED = statements(lambda name: f":{name}")


def _real(value: Any) -> float | None:
    return None if value is None else float(value)


class SQLiteStore(Schedules):
    #: Every process shares this host's one write lock: never cut off (store protocol).
    partitionable = False

    def __init__(self, path: str, *, synchronous: str | None = None, clock: Callable[[], float] = time.time):
        self.path = path
        self._clock = clock
        self._data_version: int | None = None
        self.conn = connect(path, synchronous)
        try:
            migrate(self.conn, path)
        except apsw.Error as exc:
            self.conn.close()
            raise translate(exc, path) from None
        except StoreError:
            self.conn.close()
            raise
        self._file = self._watch()
        #: Who this process's changes are by, in the audit trail (store protocol).
        self.actor = cli_actor()
        self.trail: TrailStore = SQLiteTrail(self.conn, path, lambda: self.actor, clock)

    def _watch(self) -> DatabaseFile:
        try:
            return DatabaseFile(self.path, int(self._read("PRAGMA page_size")[0][0]))
        except OSError as exc:  # deleted between the open and here
            self.conn.close()
            raise StoreGone(f"database file {self.path} vanished as it was opened: {exc.strerror}") from None
        except StoreError:
            self.conn.close()
            raise

    def check_database(self) -> None:
        """The path still names the file this store opened, whole (store protocol)."""
        self._file.check()

    # --- plumbing ------------------------------------------------------------------

    def _write(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run fn in one BEGIN IMMEDIATE transaction, retrying it whole when busy."""
        return write(self.conn, self.path, fn)

    def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return read(self.conn, self.path, sql, params)

    def _changes(self, sql: str, params: Any = ()) -> int:
        """Run one statement in its own write transaction; the rows it changed."""

        def run(conn: apsw.Connection) -> int:
            conn.execute(sql, params)
            return int(conn.changes())

        return self._write(run)

    def _acted(self, fn: Callable[[apsw.Connection], T], note: str | None = None, **detail: Any) -> T:
        """fn in one write transaction by self.actor: the job events it writes name
        the actor, and when it changed something (a true result) a note of kind
        `note` with `detail` (and the result, as `changed`, when a count) records it."""

        def run(c: apsw.Connection) -> T:
            after = newest_event(c)
            out = fn(c)
            if out:
                stamp(c, self.actor, after)
                if note is not None:
                    extra = {"changed": out} if isinstance(out, int) and not isinstance(out, bool) else {}
                    add_note(c, note, self.actor, {**detail, **extra}, self._clock())
            return out

        return self._write(run)

    def _noted(self, sql: str, params: Any, note: str, **detail: Any) -> int:
        """_changes(), with a note of `kind` when it changed a row."""

        def run(conn: apsw.Connection) -> int:
            conn.execute(sql, params)
            return int(conn.changes())

        return self._acted(run, note, **detail)

    def now(self) -> float:
        return self._clock()

    def set_call_timeout(self, seconds: float | None) -> None:
        """Nothing to bound: lock waits end with the busy timeout."""

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # --- jobs ----------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob], now: float | None = None) -> list[str]:
        rows = [
            (
                j.id,
                j.command,
                j.max_retries,
                j.priority,
                j.timeout,
                j.run_at,
                j.queue,
                j.cwd,
                j.env,
                j.unique_key,
                tuple(j.after),
            )
            for j in jobs
        ]
        insert_jobs(self.conn, self.path, rows, self._now(now), self.actor)  # -> PENDING / WAITING
        return [j.id for j in jobs]

    def get(self, job_id: str) -> Job | None:
        rows = self._read(f"SELECT {_COLS} FROM jobs WHERE id = ?", (job_id,))
        return Job.from_tuple(rows[0]) if rows else None

    def parents(self, job_id: str) -> list[str]:
        rows = self._read("SELECT parent FROM job_deps WHERE child = ? ORDER BY parent", (job_id,))
        return [str(r[0]) for r in rows]

    def history(self, job_id: str) -> list[Event]:
        rows = self._read(f"SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ? ORDER BY seq", (job_id,))
        return [Event.from_tuple(r) for r in rows]

    def list_jobs(
        self, state: JobState | None = None, limit: int | None = None, *, where: JobFilter | None = None
    ) -> list[Job]:
        where = where or JobFilter()
        if state is not None:
            where = replace(where, states=(state,))
        clause, params = job_filter(where, "sqlite")
        params["lim"] = -1 if limit is None else int(limit)
        return [
            Job.from_tuple(r)
            for r in self._read(f"SELECT {_COLS} FROM jobs{clause}{list_order(where)} LIMIT :lim", params)
        ]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in JobState}
        for state, n in net_counts(self._read(COUNTS)).items():
            out[str(state)] += n
        return out

    def fold_counts(self) -> None:
        self._write(fold_counts)

    def claim(
        self, worker_id: str, now: float | None = None, queues: Sequence[str] | None = None
    ) -> Job | None:
        q, one = served(queues), single(queues)
        return self._write(lambda conn: queries.claim(conn, worker_id, self._now(now), q, one))

    def finish(self, job_id: str, lease: int, outcome: Finished, now: float | None = None) -> bool:
        return self._write(lambda conn: queries.finish(conn, job_id, lease, outcome, self._now(now)))

    def finish_and_claim(
        self,
        job_id: str,
        lease: int,
        outcome: Finished,
        worker_id: str,
        now: float | None = None,
        queues: Sequence[str] | None = None,
    ) -> tuple[bool, Job | None]:
        q, one = served(queues), single(queues)

        def both(conn: apsw.Connection) -> tuple[bool, Job | None]:
            t = self._now(now)
            return queries.finish(conn, job_id, lease, outcome, t), queries.claim(conn, worker_id, t, q, one)

        return self._write(both)

    def next_due(self, queues: Sequence[str] | None = None) -> float | None:
        # INDEXED BY, as in claim(): otherwise a scan of every runnable job per idle poll.
        # Jobs due on arrival are not in jobs_next: they are due already.
        rows = self._read(NEXT_DUE, {"served": served(queues)})
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    # --- named queues ----------------------------------------------------------------

    def queue_stats(self) -> list[QueueInfo]:
        return queue_infos(self._read(STATS))

    def set_paused(self, name: str, paused: bool) -> bool:
        kind = "queue_paused" if paused else "queue_resumed"
        return self._noted(SET_PAUSED, {"name": name, "value": int(paused)}, kind, queue=name) > 0

    def set_concurrency(self, name: str, limit: int | None) -> bool:
        params = {"name": name, "value": limit}
        return (
            self._noted(SET_CONCURRENCY, params, "queue_concurrency_set", queue=name, concurrency=limit) > 0
        )

    def dlq_retry(self, job_ids: Iterable[str] | None, now: float | None = None) -> list[str]:
        t = self._now(now)
        # DEAD -> PENDING, attempts reset: the job gets a fresh set of retries.
        sql = (
            "UPDATE jobs SET state = 'pending', attempts = 0, next_run_at = :now,"
            " updated_at = :now, worker_id = NULL, exit_code = NULL, error = NULL,"
            " reason = 'dlq_retry' WHERE state = 'dead'"
        )
        ids = None if job_ids is None else list(job_ids)

        def retry(conn: apsw.Connection) -> list[str]:
            if ids is None:
                return [str(r[0]) for r in conn.execute(sql + " RETURNING id", {"now": t}).fetchall()]
            moved: list[str] = []
            for job_id in ids:
                rows = conn.execute(sql + " AND id = :id RETURNING id", {"now": t, "id": job_id})
                moved.extend(str(r[0]) for r in rows.fetchall())
            return moved

        try:
            return self._acted(retry)
        except DuplicateJob:  # the unique index: a key the retry would take is held
            raise self._held_key(ids) from None

    def _held_key(self, ids: list[str] | None) -> UniqueConflict:
        """Why a dlq_retry clashed: the first dead job (of `ids`, None: any) whose
        unique key a job that may still run holds, or another of the retried jobs."""
        marks = "" if ids is None else f" AND d.id IN ({','.join('?' * len(ids))})"
        rows = self._read(
            "SELECT d.unique_key, l.id FROM jobs d JOIN jobs l ON l.unique_key = d.unique_key"
            " AND l.id <> d.id AND l.state IN ('waiting', 'pending', 'failed', 'processing')"
            f" WHERE d.state = 'dead'{marks} ORDER BY d.created_at, d.id LIMIT 1",
            ids or (),
        )
        if rows:
            return UniqueConflict(str(rows[0][0]), str(rows[0][1]))
        rows = self._read(
            f"SELECT d.unique_key FROM jobs d WHERE d.state = 'dead' AND d.unique_key IS NOT NULL{marks}"
            " GROUP BY d.unique_key HAVING count(*) > 1 LIMIT 1",
            ids or (),
        )
        return UniqueConflict(str(rows[0][0]) if rows else "?", None)

    def cancel(self, job_ids: Sequence[str], actor: str, now: float | None = None) -> list[str]:
        def cancel_each(conn: apsw.Connection) -> list[str]:
            t = self._now(now)
            reason = cancel_reason(actor)
            moved: list[str] = []
            for job_id in dict.fromkeys(job_ids):
                if queries.cancel(conn, job_id, reason, t):
                    moved.append(job_id)
            return moved

        return self._acted(cancel_each)

    def save_output(self, job_id: str, lease: int, stdout: str, stderr: str) -> bool:
        return bool(
            self._changes(queries.SAVE_OUTPUT, {"id": job_id, "lease": lease, "out": stdout, "err": stderr})
        )

    def purge(self, states: Sequence[JobState], before: float | None = None, limit: int | None = None) -> int:
        marks = ",".join("?" * len(states))
        cutoff = float("inf") if before is None else before
        params: list[Any] = [s.value for s in states] + [cutoff]
        where = f"state IN ({marks}) AND updated_at < ? AND {ALL_SEALED}"
        if limit is not None:
            # jobs_state (state, created_at, id) walks the oldest first; created_at <=
            # updated_at, so the walk stops at the cutoff.  The three statements below
            # run in one IMMEDIATE transaction: they see the same batch.
            where = (
                f"id IN (SELECT id FROM jobs WHERE {where} AND created_at < ?"
                " ORDER BY state, created_at, id LIMIT ?)"
            )
            params += [cutoff, int(limit)]

        def delete(conn: apsw.Connection) -> int:
            # The counts: fold first, so every remaining event is in the snapshot; take
            # the purged jobs out of it; and mark it up to the newest event left, since
            # deleting the newest events lets SQLite hand their seqs out again.
            fold_counts(conn)
            gone = conn.execute(f"SELECT state, count(*) FROM jobs WHERE {where} GROUP BY state", params)
            minus = [(n, state) for state, n in gone.fetchall()]
            conn.execute(
                f"DELETE FROM job_events WHERE {SEALED_EVENT}"
                f" AND job_id IN (SELECT id FROM jobs WHERE {where})",
                params,
            )
            conn.execute(f"DELETE FROM jobs WHERE {where}", params)
            deleted = int(conn.changes())
            conn.executemany("UPDATE job_counts SET n = n - ? WHERE state = ?", minus)
            conn.execute(COUNTS_UPTO)
            conn.execute(LOWER_MARK)
            return deleted

        states_ = [s.value for s in states]
        return self._acted(delete, "jobs_purged", states=states_, before=before, limit=limit)

    def purgeable(self, states: Sequence[JobState], before: float | None = None) -> int:
        marks = ",".join("?" * len(states))
        cutoff = float("inf") if before is None else before
        sql = f"SELECT count(*) FROM jobs WHERE state IN ({marks}) AND updated_at < ? AND {ALL_SEALED}"
        return int(self._read(sql, [s.value for s in states] + [cutoff])[0][0])

    def job_metrics(self, bounds: Sequence[float], now: float | None = None) -> JobMetrics:
        per_queue, runtime, recoveries, oldest = metrics_queries(lambda name: f":{name}", bounds)
        at = self._now(now)
        rows = (
            self._read(per_queue),
            self._read(runtime)[0],
            self._read(recoveries),
            self._read(oldest, {"now": at})[0][0],
        )
        return job_metrics(bounds, rows, at)

    def finished_since(self, since: float) -> dict[str, int]:
        rows = self._read(finished_query(lambda name: f":{name}"), {"since": since})
        return {str(state): int(n) for state, n in rows}

    # --- recovery ------------------------------------------------------------------

    def processing(self) -> list[Job]:
        rows = self._read(f"SELECT {_COLS} FROM jobs WHERE state = 'processing' ORDER BY id")
        return [Job.from_tuple(r) for r in rows]

    def recover(self, job_id: str, lease: int, outcome: Recovered, now: float | None = None) -> bool:
        sql, params = recover_statement(job_id, lease, outcome, lambda name: f":{name}")
        audit = outcome.audit

        def take_back(conn: apsw.Connection) -> bool:
            params["now"] = t = self._now(now)
            conn.execute(sql, params)
            if not conn.changes():
                return False
            if audit is not None:
                conn.execute("INSERT INTO audit_outbox (record, created_at) VALUES (?, ?)", (audit, t))
            return True

        return self._acted(take_back)

    def audit_pending(self) -> list[tuple[int, str]]:
        rows = self._read("SELECT id, record FROM audit_outbox ORDER BY id")
        return [(int(str(i)), str(r)) for i, r in rows]

    def audit_clear(self, ids: Sequence[int]) -> None:
        if ids:
            self._write(
                lambda conn: conn.executemany("DELETE FROM audit_outbox WHERE id = ?", [(i,) for i in ids])
            )

    # --- workers -------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        self._changes(
            f"INSERT OR REPLACE INTO workers ({WORKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            worker_row(info),
        )

    def heartbeat(
        self, worker_id: str, job_id: str | None, lease: int | None, now: float | None = None
    ) -> Beat:
        def beat(conn: apsw.Connection) -> Beat:
            conn.execute(
                "UPDATE workers SET heartbeat_at = ?, holding = ? WHERE id = ?",
                (self._now(now), job_id, worker_id),
            )
            registered = bool(conn.changes())
            if job_id is None:
                return Beat(registered, True)
            rows = conn.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND state = 'processing' AND lease = ?",
                (job_id, lease),
            ).fetchall()
            return Beat(registered, bool(rows))

        return self._write(beat)

    def unregister_worker(self, worker_id: str) -> None:
        self._changes(
            "DELETE FROM workers WHERE id = :w AND NOT EXISTS"
            " (SELECT 1 FROM jobs WHERE state = 'processing' AND worker_id = :w)",
            {"w": worker_id},
        )

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo.from_tuple(r) for r in self._read(_WORKERS)]

    def remove_worker(self, worker_id: str, heartbeat_at: float) -> bool:
        changed = self._changes(
            "DELETE FROM workers WHERE id = :w AND heartbeat_at = :hb AND NOT EXISTS"
            " (SELECT 1 FROM jobs WHERE state = 'processing' AND worker_id = :w)",
            {"w": worker_id, "hb": heartbeat_at},
        )
        return bool(changed)

    # --- the monitor lease --------------------------------------------------------

    def acquire_lease(
        self, name: str, holder: str, kind: str, ttl: float, now: float | None = None
    ) -> LeaseGrant | None:
        def take(conn: apsw.Connection) -> LeaseGrant | None:
            t = self._now(now)
            before = conn.execute(
                "SELECT max(acquired_at, coalesce(last_pass_at, acquired_at)), resumed_at"
                " FROM leases WHERE name = ?",
                (name,),
            ).fetchall()
            conn.execute(
                "INSERT INTO leases (name, holder, kind, acquired_at, expires_at)"
                " VALUES (:name, :holder, :kind, :now, :exp)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, kind = excluded.kind,"
                " acquired_at = excluded.acquired_at, expires_at = excluded.expires_at"
                " WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at",
                {"name": name, "holder": holder, "kind": kind, "now": t, "exp": t + ttl},
            )
            if not conn.changes():
                return None
            previous, resumed = before[0] if before else (None, None)
            return LeaseGrant(at=t, previous=_real(previous), resumed_at=_real(resumed))

        return self._write(take)

    def mark_resumed(self, name: str, holder: str, at: float) -> None:
        self._changes("UPDATE leases SET resumed_at = ? WHERE name = ? AND holder = ?", (at, name, holder))

    def keep_due(self, was: float, now: float) -> int:
        return self._changes(
            "UPDATE jobs SET next_run_at = :now WHERE state IN ('pending', 'failed')"
            " AND next_run_at > :now AND next_run_at <= :was",
            {"now": now, "was": was},
        )

    def release_lease(self, name: str, holder: str, passed: bool, now: float | None = None) -> bool:
        def release(conn: apsw.Connection) -> bool:
            conn.execute(
                "UPDATE leases SET expires_at = :now,"
                " last_pass_at = CASE WHEN :passed THEN :now ELSE last_pass_at END,"
                " last_pass_by = CASE WHEN :passed THEN holder ELSE last_pass_by END,"
                " last_pass_kind = CASE WHEN :passed THEN kind ELSE last_pass_kind END,"
                " last_monitor_pass_at = CASE WHEN :passed AND kind = 'monitor' THEN :now"
                "                        ELSE last_monitor_pass_at END"
                " WHERE name = :name AND holder = :holder",
                {"now": self._now(now), "passed": int(passed), "name": name, "holder": holder},
            )
            return bool(conn.changes())

        return self._write(release)

    def lease_info(self, name: str) -> LeaseInfo | None:
        rows = self._read(
            "SELECT name, holder, kind, acquired_at, expires_at, last_pass_at, last_pass_by,"
            " last_pass_kind, last_monitor_pass_at, resumed_at FROM leases WHERE name = ?",
            (name,),
        )
        return LeaseInfo(*rows[0]) if rows else None

    # --- config --------------------------------------------------------------------

    def config_items(self) -> dict[str, str]:
        return config_items(self.conn, self.path)

    def config_set(self, items: dict[str, str]) -> None:
        def run(conn: apsw.Connection) -> bool:
            old = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM config")}
            conn.executemany(
                "INSERT INTO config (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(items.items()),
            )
            for key, value in items.items():
                detail = {"key": key, "old": old.get(key), "new": value}
                add_note(conn, "config_set", self.actor, detail, self._clock())
            return True

        self._write(run)

    # --- waiting -------------------------------------------------------------------

    def wait_for_change(self, timeout: float, wakeup_fd: int | None = None) -> None:
        """Poll PRAGMA data_version (it changes when another connection commits)
        every few milliseconds: microseconds a check, and no server to notify us."""
        deadline = time.monotonic() + timeout
        if self._data_version is None:
            self._data_version = self._version()
        fds = [wakeup_fd] if wakeup_fd is not None else []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if fds:
                ready, _, _ = select.select(fds, [], [], min(left, 0.005))
                if ready:
                    return
            else:
                time.sleep(min(left, 0.005))
            version = self._version()
            if version != self._data_version:
                self._data_version = version
                return

    def _version(self) -> int:
        return int(self._read("PRAGMA data_version")[0][0])

    def close(self) -> None:
        with contextlib.suppress(apsw.Error):
            self.conn.close()
        # A file deleted or replaced under us: SQLite's close checkpoints nothing and
        # deletes nothing then.  Our -wal and -shm at the path belong to the old file,
        # and would be read as the new file's: take them away (never a newer file's).
        if self._file.gone():
            self._file.remove_own_wal()
