"""The SQLite schema: its migrations, and how a database is told to be queuectl's
at the current version.

The schema version is PRAGMA user_version: the number of MIGRATIONS applied.  Its
numbers mean the same model as the PostgreSQL store's (store/postgres/schema.py).
PRAGMA application_id tells a queuectl database from anyone else's.
"""

from __future__ import annotations

import apsw

from queuectl.errors import StoreError
from queuectl.store.ddl import JOB_INDEXES_V1

#: PRAGMA application_id of a queuectl database ("QCTL").
APPLICATION_ID = 0x5143544C
#: The jobs an idle worker must wake for, which the jobs_next index holds: queries
#: name it word for word, so the planner sees that the partial index covers them.
WAKE_FOR = "state = 'failed' OR (state = 'pending' AND next_run_at > created_at)"

#: Every state, as the v10 CHECK constraints list them.
STATES = "'pending','processing','completed','failed','dead','waiting','cancelled'"
#: The states of a job that may still run: a unique key is held in these.
LIVE = "'waiting','pending','failed','processing'"

MIGRATIONS: tuple[str, ...] = (
    f"""
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
    ) STRICT;{JOB_INDEXES_V1}
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
    # v4: no index on the worker of processing jobs: it cost every claim and finish
    # two index updates, and the few processing jobs are found by state anyway.
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
    # job due when enqueued never enters it, so its claim does not update it.
    # The insert trigger goes: SQLite runs a trigger's program once per row, the
    # largest cost of a bulk enqueue; insert.insert_jobs() writes each new job's first
    # event itself, in the same transaction, from the same values.  State changes keep
    # their trigger.
    f"""
    DROP INDEX IF EXISTS jobs_next;
    CREATE INDEX jobs_next ON jobs (next_run_at) WHERE {WAKE_FOR};
    DROP TRIGGER IF EXISTS jobs_history_insert;
    """,
    # v7: job counts kept as a snapshot plus the events since it (counts.py), so
    # `queuectl status` reads five rows and the few events since the last fold instead
    # of counting every job.  A counter updated by the state trigger would cost every
    # claim and finish; the snapshot costs them nothing.
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
    # before a silence counts (the recovery pass).
    """
    ALTER TABLE leases ADD COLUMN resumed_at REAL;
    """,
    # v9: the home each worker was started from: homes that share a database stop,
    # and list, only their own workers.
    """
    ALTER TABLE workers ADD COLUMN home TEXT;
    """,
    # v10: job control.  Two new states (waiting: for parents; cancelled), so the jobs
    # table is rebuilt (SQLite cannot change a CHECK); named queues (queue, and the
    # queues table: paused, concurrency), the caller's directory and variables (cwd,
    # env), unique keys (held by a partial unique index while the job may still run),
    # and dependencies (job_deps, released and cancelled by triggers in the
    # transaction of the parent's change).  jobs_due leads with the queue: the claim
    # takes each served queue's first due job from it (flat in queue size, and a
    # paused queue's jobs are never walked).
    f"""
    DROP TRIGGER IF EXISTS jobs_history_update;
    DROP INDEX IF EXISTS jobs_due;
    DROP INDEX IF EXISTS jobs_next;
    DROP INDEX IF EXISTS jobs_state;
    CREATE TABLE jobs_v10 (
        id          TEXT PRIMARY KEY,
        command     TEXT NOT NULL,
        state       TEXT NOT NULL
                    CHECK (state IN ({STATES})),
        attempts    INTEGER NOT NULL DEFAULT 0,
        max_retries INTEGER NOT NULL,
        priority    INTEGER NOT NULL DEFAULT 0,
        timeout     REAL NOT NULL,
        lease       INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        run_at      REAL NOT NULL,
        next_run_at REAL,
        started_at  REAL,
        finished_at REAL,
        worker_id   TEXT,
        exit_code   INTEGER,
        error       TEXT,
        stdout      TEXT,
        stderr      TEXT,
        reason      TEXT,
        queue       TEXT NOT NULL DEFAULT 'default',
        cwd         TEXT,
        env         TEXT,                         -- JSON object of added variables
        unique_key  TEXT
    ) STRICT;
    INSERT INTO jobs_v10 (rowid, id, command, state, attempts, max_retries, priority,
        timeout, lease, created_at, updated_at, run_at, next_run_at, started_at,
        finished_at, worker_id, exit_code, error, stdout, stderr, reason)
    SELECT rowid, id, command, state, attempts, max_retries, priority, timeout, lease,
        created_at, updated_at, run_at, next_run_at, started_at, finished_at, worker_id,
        exit_code, error, stdout, stderr, reason FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v10 RENAME TO jobs;
    CREATE INDEX jobs_due ON jobs (queue, priority DESC, next_run_at, id)
        WHERE state IN ('pending', 'failed');
    CREATE INDEX jobs_next ON jobs (next_run_at) WHERE {WAKE_FOR};
    CREATE INDEX jobs_state ON jobs (state, created_at, id);
    CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ({LIVE});
    CREATE TRIGGER jobs_history_update AFTER UPDATE OF state ON jobs
    WHEN OLD.state IS NOT NEW.state BEGIN
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, worker_id,
                                exit_code, error, reason)
        VALUES (NEW.id, NEW.updated_at, OLD.state, NEW.state, NEW.attempts, NEW.worker_id,
                NEW.exit_code, NEW.error, NEW.reason);
    END;

    CREATE TABLE job_counts_v10 (
        state TEXT PRIMARY KEY CHECK (state IN ({STATES})),
        n     INTEGER NOT NULL
    ) STRICT;
    INSERT INTO job_counts_v10 (state, n) SELECT state, n FROM job_counts;
    INSERT INTO job_counts_v10 (state, n) VALUES ('waiting', 0), ('cancelled', 0);
    DROP TABLE job_counts;
    ALTER TABLE job_counts_v10 RENAME TO job_counts;

    CREATE TABLE queues (
        name        TEXT PRIMARY KEY,
        paused      INTEGER NOT NULL DEFAULT 0,
        concurrency INTEGER                       -- at most this many processing; NULL: any
    ) STRICT;
    INSERT INTO queues (name) VALUES ('default');
    INSERT OR IGNORE INTO queues (name) SELECT DISTINCT queue FROM jobs;

    CREATE TABLE job_deps (
        child  TEXT NOT NULL,
        parent TEXT NOT NULL,
        PRIMARY KEY (child, parent)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX job_deps_parent ON job_deps (parent, child);

    -- A parent completed: each waiting child whose parents have all completed is due.
    CREATE TRIGGER jobs_release_children AFTER UPDATE OF state ON jobs
    WHEN NEW.state = 'completed' AND OLD.state IS NOT NEW.state
         AND EXISTS (SELECT 1 FROM job_deps WHERE parent = NEW.id) BEGIN
        UPDATE jobs SET state = 'pending', next_run_at = max(run_at, NEW.updated_at),
            updated_at = NEW.updated_at, reason = 'parents_completed'
        WHERE state = 'waiting' AND id IN (SELECT child FROM job_deps WHERE parent = NEW.id)
          AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent
                          WHERE d.child = jobs.id AND p.state <> 'completed');
    END;
    -- A parent ended dead or cancelled: its waiting children can never run.  Their own
    -- children follow (recursive_triggers is on for every connection).
    CREATE TRIGGER jobs_cancel_children AFTER UPDATE OF state ON jobs
    WHEN NEW.state IN ('dead', 'cancelled') AND OLD.state IS NOT NEW.state
         AND EXISTS (SELECT 1 FROM job_deps WHERE parent = NEW.id) BEGIN
        UPDATE jobs SET state = 'cancelled', next_run_at = NULL, updated_at = NEW.updated_at,
            finished_at = NEW.updated_at, reason = 'parent ' || NEW.id || ' ' || NEW.state
        WHERE state = 'waiting' AND id IN (SELECT child FROM job_deps WHERE parent = NEW.id);
    END;
    """,
    # v11: nothing to change.  PostgreSQL's v11 indexes the processing jobs by queue,
    # for its concurrency count, which would otherwise walk dead row versions; SQLite
    # keeps none, and counts through jobs_state as many rows as jobs are running.
    "-- v11: no change",
    # v12: no change.  The number was held for the audit trail while it and the
    # schedules were built side by side; the trail did not land with them, and a
    # released step never changes, so the trail takes the next free one.
    "-- v12: no change",
    # v13: named cron schedules (schedules.py); a run due is fired by a guarded update
    # of next_run_at in the transaction that enqueues its job.
    """
    CREATE TABLE schedules (
        name        TEXT PRIMARY KEY,
        cron        TEXT NOT NULL,
        tz          TEXT NOT NULL,
        job         TEXT NOT NULL,
        paused      INTEGER NOT NULL DEFAULT 0,
        next_run_at REAL NOT NULL,
        created_at  REAL NOT NULL,
        last_run_at REAL,
        last_job_id TEXT
    ) STRICT;
    """,
    # v14: the audit trail (store/trail.py).  A job event's actor (NULL: the row's
    # worker_id, so a worker's claim and finish write nothing more); notes for
    # changes that are not a job's (pos: the newest job event when written, which
    # orders a note among them); the sealed lines, kept until every home has them;
    # the head (the last line, and the newest event and note it covers); how far each
    # home's files reach; checkpoints.
    f"""
    ALTER TABLE job_events ADD COLUMN actor TEXT;
    CREATE TABLE audit_notes (
        id     INTEGER PRIMARY KEY,
        pos    INTEGER NOT NULL,
        at     REAL NOT NULL,
        kind   TEXT NOT NULL,
        actor  TEXT NOT NULL,
        detail TEXT NOT NULL                      -- a JSON object
    ) STRICT;
    CREATE TABLE audit_head (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        seq         INTEGER NOT NULL,
        hash        TEXT NOT NULL,
        events_upto INTEGER NOT NULL,             -- every job event up to this seq is sealed
        notes_upto  INTEGER NOT NULL              -- every note up to this id is sealed
    ) STRICT;
    INSERT INTO audit_head (id, seq, hash, events_upto, notes_upto) VALUES (1, 0, '{"0" * 64}', 0, 0);
    CREATE TABLE audit_lines (
        seq       INTEGER PRIMARY KEY,
        sealed_at REAL NOT NULL,
        hash      TEXT NOT NULL,
        line      TEXT NOT NULL
    ) STRICT;
    CREATE TABLE audit_homes (
        home TEXT PRIMARY KEY,
        seq  INTEGER NOT NULL,
        hash TEXT NOT NULL,
        at   REAL NOT NULL
    ) STRICT;
    CREATE TABLE audit_checkpoints (
        seq   INTEGER PRIMARY KEY,
        hash  TEXT NOT NULL,
        at    REAL NOT NULL,
        actor TEXT NOT NULL
    ) STRICT;
    """,
)

#: PRAGMA user_version of a database with every migration applied.
SCHEMA_VERSION = len(MIGRATIONS)


def schema_ids(conn: apsw.Connection) -> tuple[int, int]:
    """(PRAGMA application_id, PRAGMA user_version)."""
    app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
    version = conn.execute("PRAGMA user_version").fetchall()[0][0]
    return int(str(app_id)), int(str(version))


def is_current(conn: apsw.Connection) -> bool:
    """A queuectl database with every migration applied."""
    return schema_ids(conn) == (APPLICATION_ID, SCHEMA_VERSION)


def migrate(conn: apsw.Connection, path: str) -> None:
    """Bring the database at `path` to SCHEMA_VERSION inside one BEGIN IMMEDIATE
    transaction; refuse someone else's database and a newer schema than this code
    knows (StoreError)."""
    if is_current(conn):
        return
    with conn:
        app_id, version = schema_ids(conn)
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()[0][0]
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise StoreError(f"{path} is a SQLite database but not a queuectl one")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {path} has schema version {version}, newer than this "
                f"queuectl knows ({SCHEMA_VERSION}): upgrade queuectl"
            )
        for step in MIGRATIONS[version:]:
            conn.execute(step)
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
