"""The SQLite store, through APSW.

One connection per process, WAL journal, every write transaction `BEGIN IMMEDIATE`
(so a read never has to be upgraded to a write, which would fail at once with
SQLITE_BUSY_SNAPSHOT), and a 10 s busy timeout under a retry loop.  The history of
state changes is written by a trigger, so no statement can change a job's state
without its event; a new job's first event is written with its insert
(sqlite_conn.insert_jobs, the one place jobs are inserted).
Nothing `apsw.*` escapes this module: errors are translated at the boundary.  How a
connection is opened, configured and retried, its errors translated and a job
inserted is in sqlite_conn.py, which the enqueue fast path uses alone.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import apsw

from queuectl.errors import InvalidInput, StoreError, StoreGone
from queuectl.models import (
    JOB_COLUMNS,
    MONITOR_LEASE,
    Beat,
    Event,
    Job,
    JobState,
    LeaseGrant,
    LeaseInfo,
    NewJob,
    RecoveryGuard,
    WorkerInfo,
)
from queuectl.store.sqlite_conn import (
    APPLICATION_ID,
    COUNTS,
    COUNTS_UPTO,
    SCHEMA_VERSION,
    config_items,
    connect,
    first_existing,
    fold_counts,
    insert_jobs,
    net_counts,
    read,
    schema_ids,
    translate,
    write,
)
from queuectl.store.sqlite_file import DatabaseFile

_COLS = ", ".join(JOB_COLUMNS)
#: The jobs in the jobs_next index (migration v6): queries name it word for word, so
#: the planner sees that the partial index covers them.
_WAKE_FOR = "state = 'failed' OR (state = 'pending' AND next_run_at > created_at)"
_EVENT_COLS = "seq, job_id, at, from_state, to_state, attempt, worker_id, exit_code, error, reason"

# Each step moves the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY,
        command     TEXT NOT NULL,
        state       TEXT NOT NULL
                    CHECK (state IN ('pending','processing','completed','failed','dead')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        max_retries INTEGER NOT NULL,
        priority    INTEGER NOT NULL DEFAULT 0,
        timeout     REAL NOT NULL,
        lease       INTEGER NOT NULL DEFAULT 0,   -- +1 per claim, never reset: the fence
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        run_at      REAL NOT NULL,                -- earliest start, as enqueued
        next_run_at REAL,                         -- when a pending/failed job is due
        started_at  REAL,
        finished_at REAL,
        worker_id   TEXT,
        exit_code   INTEGER,
        error       TEXT,
        stdout      TEXT,
        stderr      TEXT,
        reason      TEXT                          -- why the last change was made
    ) STRICT;
    -- The claim walks this index from its first entry: cost is flat in queue size.
    CREATE INDEX jobs_due ON jobs (priority DESC, next_run_at, id)
        WHERE state IN ('pending', 'failed');
    -- When the next retry or delayed job falls due: an idle worker sleeps until then.
    CREATE INDEX jobs_next ON jobs (next_run_at) WHERE state IN ('pending', 'failed');
    CREATE INDEX jobs_state ON jobs (state, created_at, id);
    CREATE INDEX jobs_worker ON jobs (worker_id) WHERE state = 'processing';

    CREATE TABLE job_events (
        seq        INTEGER PRIMARY KEY,
        job_id     TEXT NOT NULL,
        at         REAL NOT NULL,
        from_state TEXT,
        to_state   TEXT NOT NULL,
        attempt    INTEGER NOT NULL,
        worker_id  TEXT,
        exit_code  INTEGER,
        error      TEXT,
        reason     TEXT
    ) STRICT;
    CREATE INDEX job_events_job ON job_events (job_id, seq);

    CREATE TRIGGER jobs_history_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, worker_id,
                                exit_code, error, reason)
        VALUES (NEW.id, NEW.updated_at, NULL, NEW.state, NEW.attempts, NULL, NULL, NULL, NULL);
    END;
    CREATE TRIGGER jobs_history_update AFTER UPDATE OF state ON jobs
    WHEN OLD.state IS NOT NEW.state BEGIN
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, worker_id,
                                exit_code, error, reason)
        VALUES (NEW.id, NEW.updated_at, OLD.state, NEW.state, NEW.attempts, NEW.worker_id,
                NEW.exit_code, NEW.error, NEW.reason);
    END;

    CREATE TABLE config (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE workers (
        id           TEXT PRIMARY KEY,
        host         TEXT NOT NULL,
        pid          INTEGER NOT NULL,
        proc_start   INTEGER,             -- /proc/<pid>/stat field 22: tells a reused pid apart
        started_at   REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    ) STRICT;
    """,
    # v2: the monitor lease, so at most one recovery pass runs at a time anywhere.
    """
    CREATE TABLE leases (
        name                 TEXT PRIMARY KEY,
        holder               TEXT NOT NULL,
        kind                 TEXT NOT NULL,   -- 'monitor' or 'worker' (a fallback pass)
        acquired_at          REAL NOT NULL,
        expires_at           REAL NOT NULL,
        last_pass_at         REAL,
        last_pass_by         TEXT,
        last_pass_kind       TEXT,
        last_monitor_pass_at REAL
    ) STRICT;
    """,
    # v3: the job a worker says it runs, from its heartbeats (NULL while idle), so the
    # monitor can tell a claim whose worker never received it (connection cut after
    # the commit) from one that is running.
    """
    ALTER TABLE workers ADD COLUMN holding TEXT;
    """,
    # v4: no index on the worker of processing jobs: maintaining it cost every claim and
    # finish two index updates, and the few processing jobs are found by state anyway.
    """
    DROP INDEX IF EXISTS jobs_worker;
    """,
    # v5: the audit outbox.  A recovery's log record is written in the transaction
    # that recovers the job, and moved to logs/recovered_jobs_*.json after the commit;
    # a monitor killed in between leaves it here for the next pass to write.
    """
    CREATE TABLE audit_outbox (
        id         INTEGER PRIMARY KEY,
        record     TEXT NOT NULL,
        created_at REAL NOT NULL
    ) STRICT;
    """,
    # v6: jobs_next holds only the jobs an idle worker must wake for: retries, and
    # pending jobs not due on arrival (delayed, recovered, retried from the DLQ).  A
    # job due when enqueued never enters it, so its claim no longer updates it: one
    # page fewer in every claim's commit (issue 6).
    # The insert trigger goes too: SQLite runs a trigger's program once per row, which
    # cost a bulk enqueue three quarters of its time (46k -> 164k rows/s without it,
    # bench/enqueue.py); insert_jobs() writes each new job's first event itself, in
    # the same transaction, from the same values.  State changes keep their trigger.
    f"""
    DROP INDEX IF EXISTS jobs_next;
    CREATE INDEX jobs_next ON jobs (next_run_at) WHERE {_WAKE_FOR};
    DROP TRIGGER IF EXISTS jobs_history_insert;
    """,
    # v7: job counts kept as a snapshot plus the events since it (sqlite_conn.COUNTS):
    # `queuectl status` counted every job's jobs_state entry (84 ms at 1M jobs,
    # bench/scale.py) and now reads five rows and the few events since the last fold.
    # A counter updated by the state trigger would cost every claim and finish (+20%
    # store time per job, measured); the snapshot costs them nothing.
    """
    CREATE TABLE job_counts (
        state TEXT PRIMARY KEY
              CHECK (state IN ('pending','processing','completed','failed','dead')),
        n     INTEGER NOT NULL
    ) STRICT;
    INSERT INTO job_counts (state, n)
        SELECT column1, (SELECT count(*) FROM jobs WHERE state = column1)
        FROM (VALUES ('pending'), ('processing'), ('completed'), ('failed'), ('dead'));
    CREATE TABLE job_counts_upto (
        id  INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL              -- the snapshot counts every event up to this one
    ) STRICT;
    INSERT INTO job_counts_upto (id, seq) VALUES (1, (SELECT coalesce(max(seq), 0) FROM job_events));
    """,
    # v8: when a recovery pass last found that every process had stalled (no pass by
    # anyone for heartbeat_timeout, or a clock jump): heartbeats get one more interval
    # before a silence counts (monitor.py).
    """
    ALTER TABLE leases ADD COLUMN resumed_at REAL;
    """,
    # v9: the home each worker was started from: homes that share a database stop,
    # and list, only their own workers.
    """
    ALTER TABLE workers ADD COLUMN home TEXT;
    """,
)
if len(MIGRATIONS) != SCHEMA_VERSION:  # the fast path checks user_version against it
    raise AssertionError(f"sqlite_conn.SCHEMA_VERSION is {SCHEMA_VERSION}, not {len(MIGRATIONS)}")

T = TypeVar("T")

# The two statements of a worker's loop, shared by claim(), finish() and
# finish_and_claim() (which runs both in one transaction: one commit per job).

# PENDING/FAILED -> PROCESSING: one statement, so no two claimers can both match the
# row.  INDEXED BY: without statistics the planner prefers jobs_state (state=?) plus a
# sort of every runnable job, O(queue) per claim (145 ms at 1M pending,
# bench/scale.py); jobs_due answers from its first entry.
_CLAIM = (
    "UPDATE jobs SET state = 'processing', attempts = attempts + 1,"
    " lease = lease + 1, worker_id = :w, started_at = :now, updated_at = :now,"
    " finished_at = NULL, exit_code = NULL, error = NULL, stdout = NULL,"
    " stderr = NULL, reason = NULL"
    " WHERE id = (SELECT id FROM jobs INDEXED BY jobs_due"
    "             WHERE state IN ('pending', 'failed')"
    "             AND next_run_at <= :now"
    "             ORDER BY priority DESC, next_run_at, id LIMIT 1)"
    f" RETURNING {_COLS}"
)

# PROCESSING -> COMPLETED / FAILED / DEAD, fenced by the lease
_FINISH = (
    "UPDATE jobs SET state = :state, next_run_at = :next, exit_code = :code,"
    " error = :error, stdout = :out, stderr = :err, finished_at = :now,"
    " updated_at = :now, reason = NULL"
    " WHERE id = :id AND state = 'processing' AND lease = :lease"
)

_Result = tuple[JobState, float | None, int | None, str | None, str, str]


def _claim(conn: apsw.Connection, worker_id: str, now: float) -> Job | None:
    # The RETURNING cursor is read to its end (fetchall) so the statement completes
    # inside the transaction.
    rows = conn.execute(_CLAIM, {"w": worker_id, "now": now}).fetchall()
    return Job.from_tuple(rows[0]) if rows else None


def _finish(conn: apsw.Connection, job_id: str, lease: int, result: _Result, now: float) -> bool:
    state, next_run_at, exit_code, error, stdout, stderr = result
    conn.execute(
        _FINISH,
        {
            "state": state.value,
            "next": next_run_at,
            "code": exit_code,
            "error": error,
            "out": stdout,
            "err": stderr,
            "now": now,
            "id": job_id,
            "lease": lease,
        },
    )
    return bool(conn.changes())


def _real(value: Any) -> float | None:
    return None if value is None else float(value)


def _recover_sql(g: RecoveryGuard) -> tuple[str, dict[str, Any]]:
    """The recovery's one guarded UPDATE: PROCESSING -> FAILED / DEAD (or PENDING, the
    attempt given back), fenced by the lease and by what `g` requires."""
    attempts = "attempts - 1" if g.give_back else "attempts"
    sql = (
        f"UPDATE jobs SET state = :state, attempts = {attempts}, next_run_at = :next,"
        " exit_code = NULL, error = :error, finished_at = :now, updated_at = :now, reason = :reason"
        " WHERE id = :id AND state = 'processing' AND lease = :lease"
    )
    params: dict[str, Any] = {}
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


class SQLiteStore:
    #: Every process shares this host's one write lock: never cut off (store protocol).
    partitionable = False

    def __init__(self, path: str, *, synchronous: str | None = None, clock: Callable[[], float] = time.time):
        self.path = path
        self._clock = clock
        self._data_version: int | None = None
        self.conn = connect(path, synchronous)
        try:
            self._migrate()
        except apsw.Error as exc:
            self.conn.close()
            raise translate(exc, path) from None
        except StoreError:
            self.conn.close()
            raise
        self._file = self._watch()

    # --- opening -------------------------------------------------------------------

    def _migrate(self) -> None:
        conn = self.conn
        app_id, version = self._ids()
        if app_id == APPLICATION_ID and version == len(MIGRATIONS):
            return
        with self._tx():
            app_id, version = self._ids()
            tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()[0][0]
            if app_id != APPLICATION_ID and (app_id != 0 or tables):
                raise StoreError(f"{self.path} is a SQLite database but not a queuectl one")
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"database {self.path} has schema version {version}, newer than this "
                    f"queuectl knows ({len(MIGRATIONS)}): upgrade queuectl"
                )
            for step in MIGRATIONS[version:]:
                conn.execute(step)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={len(MIGRATIONS)}")

    def _ids(self) -> tuple[int, int]:
        return schema_ids(self.conn)

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

    @contextlib.contextmanager
    def _tx(self) -> Iterator[apsw.Connection]:
        with self.conn:
            yield self.conn

    def _write(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run fn in one BEGIN IMMEDIATE transaction, retrying it whole when busy."""
        return write(self.conn, self.path, fn)

    def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return read(self.conn, self.path, sql, params)

    def now(self) -> float:
        return self._clock()

    def set_call_timeout(self, seconds: float | None) -> None:
        """Nothing to bound: lock waits end with the busy timeout."""

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # --- jobs ----------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob], now: float | None = None) -> list[str]:
        t = self._now(now)
        rows = [
            (j.id, j.command, j.max_retries, j.priority, j.timeout, t, t, j.run_at, j.run_at) for j in jobs
        ]
        insert_jobs(self.conn, self.path, rows)  # None -> PENDING
        return [j.id for j in jobs]

    def _first_existing(self, ids: list[str]) -> str | None:
        return first_existing(self.conn, self.path, ids)

    def get(self, job_id: str) -> Job | None:
        rows = self._read(f"SELECT {_COLS} FROM jobs WHERE id = ?", (job_id,))
        return Job.from_tuple(rows[0]) if rows else None

    def history(self, job_id: str) -> list[Event]:
        rows = self._read(f"SELECT {_EVENT_COLS} FROM job_events WHERE job_id = ? ORDER BY seq", (job_id,))
        return [Event.from_tuple(r) for r in rows]

    def list_jobs(self, state: JobState | None = None, limit: int | None = None) -> list[Job]:
        lim = -1 if limit is None else int(limit)
        if state is None:
            sql = f"SELECT {_COLS} FROM jobs ORDER BY created_at, id LIMIT ?"
            rows = self._read(sql, (lim,))
        else:
            sql = f"SELECT {_COLS} FROM jobs WHERE state = ? ORDER BY created_at, id LIMIT ?"
            rows = self._read(sql, (state.value, lim))
        return [Job.from_tuple(r) for r in rows]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in JobState}
        for state, n in net_counts(self._read(COUNTS)).items():
            out[str(state)] += n
        return out

    def fold_counts(self) -> None:
        self._write(fold_counts)

    def claim(self, worker_id: str, now: float | None = None) -> Job | None:
        return self._write(lambda conn: _claim(conn, worker_id, self._now(now)))

    def finish(
        self,
        job_id: str,
        lease: int,
        state: JobState,
        next_run_at: float | None,
        exit_code: int | None,
        error: str | None,
        stdout: str,
        stderr: str,
        now: float | None = None,
    ) -> bool:
        result = (state, next_run_at, exit_code, error, stdout, stderr)
        return self._write(lambda conn: _finish(conn, job_id, lease, result, self._now(now)))

    def finish_and_claim(
        self,
        job_id: str,
        lease: int,
        state: JobState,
        next_run_at: float | None,
        exit_code: int | None,
        error: str | None,
        stdout: str,
        stderr: str,
        worker_id: str,
        now: float | None = None,
    ) -> tuple[bool, Job | None]:
        result = (state, next_run_at, exit_code, error, stdout, stderr)

        def both(conn: apsw.Connection) -> tuple[bool, Job | None]:
            t = self._now(now)
            return _finish(conn, job_id, lease, result, t), _claim(conn, worker_id, t)

        return self._write(both)

    def next_due(self) -> float | None:
        # INDEXED BY, as in claim(): otherwise a scan of every runnable job per idle poll.
        # Jobs due on arrival are not in jobs_next (v6): they are due already.
        rows = self._read(f"SELECT min(next_run_at) FROM jobs INDEXED BY jobs_next WHERE {_WAKE_FOR}")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

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

        return self._write(retry)

    def purge(self, states: Sequence[JobState], before: float | None = None) -> int:
        allowed = {JobState.COMPLETED, JobState.DEAD}
        if not states or any(s not in allowed for s in states):
            raise InvalidInput("only completed and dead jobs can be purged")
        marks = ",".join("?" * len(states))
        cutoff = float("inf") if before is None else before
        params = [s.value for s in states] + [cutoff]
        where = f"state IN ({marks}) AND updated_at < ?"

        def delete(conn: apsw.Connection) -> int:
            # The counts: fold first, so every remaining event is in the snapshot; take
            # the purged jobs out of it; and mark it up to the newest event left, since
            # deleting the newest events lets SQLite hand their seqs out again.
            fold_counts(conn)
            gone = conn.execute(f"SELECT state, count(*) FROM jobs WHERE {where} GROUP BY state", params)
            minus = [(n, state) for state, n in gone.fetchall()]
            conn.execute(
                f"DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE {where})",
                params,
            )
            conn.execute(f"DELETE FROM jobs WHERE {where}", params)
            deleted = int(conn.changes())
            conn.executemany("UPDATE job_counts SET n = n - ? WHERE state = ?", minus)
            conn.execute(COUNTS_UPTO)
            return deleted

        return self._write(delete)

    def purgeable(self, states: Sequence[JobState], before: float | None = None) -> int:
        marks = ",".join("?" * len(states))
        cutoff = float("inf") if before is None else before
        sql = f"SELECT count(*) FROM jobs WHERE state IN ({marks}) AND updated_at < ?"
        return int(self._read(sql, [s.value for s in states] + [cutoff])[0][0])

    # --- recovery ------------------------------------------------------------------

    def processing(self) -> list[Job]:
        rows = self._read(f"SELECT {_COLS} FROM jobs WHERE state = 'processing' ORDER BY id")
        return [Job.from_tuple(r) for r in rows]

    def recover(
        self,
        job_id: str,
        lease: int,
        state: JobState,
        next_run_at: float | None,
        reason: str,
        error: str,
        now: float | None = None,
        audit: str | None = None,
        *,
        guard: RecoveryGuard | None = None,
    ) -> bool:
        g = guard or RecoveryGuard()
        sql, params = _recover_sql(g)
        params.update(
            {
                "state": JobState.PENDING.value if g.give_back else state.value,
                "next": next_run_at,
                "error": error,
                "reason": reason,
                "id": job_id,
                "lease": lease,
            }
        )

        def take_back(conn: apsw.Connection) -> bool:
            params["now"] = t = self._now(now)
            conn.execute(sql, params)
            if not conn.changes():
                return False
            if audit is not None:
                conn.execute("INSERT INTO audit_outbox (record, created_at) VALUES (?, ?)", (audit, t))
            return True

        return self._write(take_back)

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
        self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO workers (id, host, pid, proc_start, started_at,"
                " heartbeat_at, home, holding) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.id,
                    info.host,
                    info.pid,
                    info.proc_start,
                    info.started_at,
                    info.heartbeat_at,
                    info.home,
                    info.holding,
                ),
            )
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
        self._write(
            lambda conn: conn.execute(
                "DELETE FROM workers WHERE id = :w AND NOT EXISTS"
                " (SELECT 1 FROM jobs WHERE state = 'processing' AND worker_id = :w)",
                {"w": worker_id},
            )
        )

    def workers(self) -> list[WorkerInfo]:
        rows = self._read(
            "SELECT w.id, w.host, w.pid, w.proc_start, w.started_at, w.heartbeat_at,"
            " (SELECT j.id FROM jobs j WHERE j.worker_id = w.id AND j.state = 'processing'"
            "  LIMIT 1), w.holding, w.home"
            " FROM workers w ORDER BY w.started_at, w.id"
        )
        return [WorkerInfo.from_tuple(r) for r in rows]

    def remove_worker(self, worker_id: str, heartbeat_at: float) -> bool:
        def remove(conn: apsw.Connection) -> bool:
            conn.execute(
                "DELETE FROM workers WHERE id = :w AND heartbeat_at = :hb AND NOT EXISTS"
                " (SELECT 1 FROM jobs WHERE state = 'processing' AND worker_id = :w)",
                {"w": worker_id, "hb": heartbeat_at},
            )
            return bool(conn.changes())

        return self._write(remove)

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
        self._write(
            lambda conn: conn.execute(
                "UPDATE leases SET resumed_at = ? WHERE name = ? AND holder = ?", (at, name, holder)
            )
        )

    def keep_due(self, was: float, now: float) -> int:
        def move(conn: apsw.Connection) -> int:
            conn.execute(
                "UPDATE jobs SET next_run_at = :now WHERE state IN ('pending', 'failed')"
                " AND next_run_at > :now AND next_run_at <= :was",
                {"now": now, "was": was},
            )
            return int(conn.changes())

        return self._write(move)

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
        self._write(
            lambda conn: conn.executemany(
                "INSERT INTO config (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(items.items()),
            )
        )

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

    # --- maintenance ---------------------------------------------------------------

    def integrity_check(self) -> str:
        return str(self._read("PRAGMA integrity_check")[0][0])

    def optimize(self) -> None:
        with contextlib.suppress(apsw.Error):
            self.conn.execute("PRAGMA optimize")

    def close(self) -> None:
        with contextlib.suppress(apsw.Error):
            self.conn.close()
        # A file deleted or replaced under us: SQLite's close checkpoints nothing and
        # deletes nothing then.  Our -wal and -shm at the path belong to the old file,
        # and would be read as the new file's: take them away (never a newer file's).
        if self._file.gone():
            self._file.remove_own_wal()
