"""The PostgreSQL schema: its migrations, applied on first use.

Tables live in the connection's current schema (the first of its search_path),
never a hard-coded one.  The schema is created and migrated inside one transaction
under `pg_advisory_xact_lock`, so concurrent first opens do not race; the applied
versions are rows of `queuectl_schema`.  A version number means the same model as
the SQLite store's (store/sqlite/schema.py): a step one store does not need is a
no-op step in the other.
"""

from __future__ import annotations

from typing import Any

import psycopg

from queuectl.errors import StoreError
from queuectl.store.ddl import JOB_INDEXES_V1

Conn = psycopg.Connection[Any]

#: Advisory lock class for migrations ("QCTL"); the key is the schema's hash.
LOCK_CLASS = 0x5143544C

#: Advisory lock class of a queue's concurrency check ("QCTQ").
ROOM_LOCK = 0x51435451
#: Every state, as the v10 CHECK constraint lists them.
STATES = "'pending','processing','completed','failed','dead','waiting','cancelled'"
#: The states of a job that may still run: a unique key is held in these.
LIVE = "'waiting','pending','failed','processing'"

MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE jobs (
        id          text COLLATE "C" PRIMARY KEY,   -- byte order, as in SQLite
        command     text NOT NULL,
        state       text NOT NULL
                    CHECK (state IN ('pending','processing','completed','failed','dead')),
        attempts    bigint NOT NULL DEFAULT 0,
        max_retries bigint NOT NULL,
        priority    bigint NOT NULL DEFAULT 0,
        timeout     double precision NOT NULL,
        lease       bigint NOT NULL DEFAULT 0,      -- +1 per claim, never reset: the fence
        created_at  double precision NOT NULL,      -- epoch seconds, as in the API
        updated_at  double precision NOT NULL,
        run_at      double precision NOT NULL,      -- earliest start, as enqueued
        next_run_at double precision,               -- when a pending/failed job is due
        started_at  double precision,
        finished_at double precision,
        worker_id   text,
        exit_code   bigint,
        error       text,
        stdout      text,
        stderr      text,
        reason      text                            -- why the last change was made
    );{JOB_INDEXES_V1}
    CREATE TABLE job_events (
        seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id     text COLLATE "C" NOT NULL,
        at         double precision NOT NULL,
        from_state text,
        to_state   text NOT NULL,
        attempt    bigint NOT NULL,
        worker_id  text,
        exit_code  bigint,
        error      text,
        reason     text
    );
    CREATE INDEX job_events_job ON job_events (job_id, seq);

    -- One set-based insert per statement, so a bulk enqueue stays fast.
    CREATE FUNCTION jobs_history_insert() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt)
        SELECT id, updated_at, NULL, state, attempts FROM new_jobs ORDER BY id;
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_history_insert AFTER INSERT ON jobs
        REFERENCING NEW TABLE AS new_jobs
        FOR EACH STATEMENT EXECUTE FUNCTION jobs_history_insert();

    CREATE FUNCTION jobs_history_update() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, worker_id,
                                exit_code, error, reason)
        VALUES (NEW.id, NEW.updated_at, OLD.state, NEW.state, NEW.attempts, NEW.worker_id,
                NEW.exit_code, NEW.error, NEW.reason);
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_history_update AFTER UPDATE OF state ON jobs
        FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION jobs_history_update();

    CREATE TABLE config (
        key   text PRIMARY KEY,
        value text NOT NULL
    );

    CREATE TABLE workers (
        id           text COLLATE "C" PRIMARY KEY,
        host         text NOT NULL,
        pid          bigint NOT NULL,
        proc_start   bigint,            -- /proc/<pid>/stat field 22: tells a reused pid apart
        started_at   double precision NOT NULL,
        heartbeat_at double precision NOT NULL
    );
    """,
    # v2: the monitor lease, so at most one recovery pass runs at a time anywhere.
    """
    CREATE TABLE leases (
        name                 text PRIMARY KEY,
        holder               text NOT NULL,
        kind                 text NOT NULL,   -- 'monitor' or 'worker' (a fallback pass)
        acquired_at          double precision NOT NULL,
        expires_at           double precision NOT NULL,
        last_pass_at         double precision,
        last_pass_by         text,
        last_pass_kind       text,
        last_monitor_pass_at double precision
    );
    """,
    # v3: the job a worker says it runs, from its heartbeats (NULL while idle), so the
    # monitor can tell a claim whose worker never received it (connection cut after
    # the commit) from one that is running.
    """
    ALTER TABLE workers ADD COLUMN holding text;
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
        id         bigserial PRIMARY KEY,
        record     text NOT NULL,
        created_at double precision NOT NULL
    );
    """,
    # v6: when a recovery pass last found that every process had stalled (the model
    # of SQLite's v8).
    """
    ALTER TABLE leases ADD COLUMN resumed_at double precision;
    """,
    # v7: the home each worker was started from (the model of SQLite's v9).
    """
    ALTER TABLE workers ADD COLUMN home text;
    """,
    # v8, v9: nothing to change.  SQLite's v6 and v7 (a narrower jobs_next index, the
    # counts snapshot) have no PostgreSQL counterpart, so this store reached SQLite's
    # v9 model at its v7; these two steps bring its number to SQLite's, and from here
    # on the two stores' version N means one model.
    "SELECT 1",
    "SELECT 1",
    # v10: job control (the model of SQLite's v10): the waiting and cancelled states,
    # named queues (queue; the queues table), cwd and env, unique keys (a partial
    # unique index over the jobs that may still run), dependencies (job_deps, released
    # and cancelled by triggers in the transaction of the parent's change; PostgreSQL
    # triggers fire for a trigger's own updates, so a cancel reaches grandchildren).
    # queuectl_room() is a queue's concurrency check for the claim: VOLATILE, so its
    # count reads a snapshot taken after its lock (READ COMMITTED), not the claim's.
    f"""
    ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
    ALTER TABLE jobs ADD CONSTRAINT jobs_state_check CHECK (state IN ({STATES}));
    ALTER TABLE jobs ADD COLUMN queue text COLLATE "C" NOT NULL DEFAULT 'default',
                     ADD COLUMN cwd text, ADD COLUMN env text, ADD COLUMN unique_key text;
    DROP INDEX IF EXISTS jobs_due;
    CREATE INDEX jobs_due ON jobs (queue, priority DESC, next_run_at, id)
        WHERE state IN ('pending', 'failed');
    CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ({LIVE});

    CREATE TABLE queues (
        name        text COLLATE "C" PRIMARY KEY,
        paused      boolean NOT NULL DEFAULT false,
        concurrency bigint                          -- at most this many processing; NULL: any
    );
    INSERT INTO queues (name) VALUES ('default');
    INSERT INTO queues (name) SELECT DISTINCT queue FROM jobs ON CONFLICT DO NOTHING;

    CREATE TABLE job_deps (
        child  text COLLATE "C" NOT NULL,
        parent text COLLATE "C" NOT NULL,
        PRIMARY KEY (child, parent)
    );
    CREATE INDEX job_deps_parent ON job_deps (parent, child);

    CREATE FUNCTION jobs_release_children() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        UPDATE jobs SET state = 'pending', next_run_at = greatest(run_at, NEW.updated_at),
            updated_at = NEW.updated_at, reason = 'parents_completed'
        WHERE state = 'waiting' AND id IN (SELECT child FROM job_deps WHERE parent = NEW.id)
          AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent
                          WHERE d.child = jobs.id AND p.state <> 'completed');
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_release_children AFTER UPDATE OF state ON jobs
        FOR EACH ROW WHEN (NEW.state = 'completed' AND OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION jobs_release_children();

    CREATE FUNCTION jobs_cancel_children() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        UPDATE jobs SET state = 'cancelled', next_run_at = NULL, updated_at = NEW.updated_at,
            finished_at = NEW.updated_at, reason = 'parent ' || NEW.id || ' ' || NEW.state
        WHERE state = 'waiting' AND id IN (SELECT child FROM job_deps WHERE parent = NEW.id);
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_cancel_children AFTER UPDATE OF state ON jobs
        FOR EACH ROW WHEN (NEW.state IN ('dead', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION jobs_cancel_children();

    CREATE FUNCTION queuectl_room(q text, most bigint) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
    BEGIN
        -- Held to the end of the claim's transaction: the next claimer's count, taken
        -- after it gets the lock, sees this claim committed.  A claimer that cannot
        -- take it passes the queue over, as SKIP LOCKED passes a row over.
        IF NOT pg_try_advisory_xact_lock({ROOM_LOCK}, hashtext(current_schema() || '/' || q)) THEN
            RETURN false;
        END IF;
        RETURN (SELECT count(*) FROM jobs WHERE state = 'processing' AND queue = q) < most;
    END $$;
    """,
    # v11: a queue's PROCESSING jobs by queue, for queuectl_room's count at every claim
    # from a limited queue (and for idle workers' wake-up).  Through jobs_state that
    # count walked every dead 'processing' entry the claims and finishes of all queues
    # left since the last vacuum (held back by any long transaction on the server):
    # a cost growing with throughput; here it walks that queue's only.
    """
    CREATE INDEX jobs_running ON jobs (queue) WHERE state = 'processing';
    """,
    # v12: no change (see SQLite's v12: the audit trail takes the next free step).
    "SELECT 1",
    # v13: named cron schedules (schedules.py), as SQLite's v13.
    """
    CREATE TABLE schedules (
        name        text PRIMARY KEY,
        cron        text NOT NULL,
        tz          text NOT NULL,
        job         text NOT NULL,
        paused      boolean NOT NULL DEFAULT false,
        next_run_at double precision NOT NULL,
        created_at  double precision NOT NULL,
        last_run_at double precision,
        last_job_id text
    );
    """,
    # v14: the audit trail, as SQLite's v14, with one difference: identity values
    # are taken in no commit order here, so each event and note records its
    # transaction (xid), and the head covers events by (xid, kind, id): sealing
    # takes only transactions older than every one still running (store/trail.py).
    # An enqueue names its actor through the setting queuectl.actor, which the
    # insert trigger reads; other changes by a process on purpose stamp their own
    # transaction's events; a worker's claim and finish leave it NULL.
    f"""
    ALTER TABLE job_events ADD COLUMN actor text,
        ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
    CREATE INDEX job_events_xid ON job_events (xid, seq);
    CREATE OR REPLACE FUNCTION jobs_history_insert() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor)
        SELECT id, updated_at, NULL, state, attempts,
               nullif(current_setting('queuectl.actor', true), '')
        FROM new_jobs ORDER BY id;
        RETURN NULL;
    END $$;
    CREATE TABLE audit_notes (
        id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        xid    xid8 NOT NULL DEFAULT pg_current_xact_id(),
        at     double precision NOT NULL,
        kind   text NOT NULL,
        actor  text NOT NULL,
        detail text NOT NULL
    );
    CREATE INDEX audit_notes_xid ON audit_notes (xid, id);
    CREATE TABLE audit_head (
        id       int PRIMARY KEY CHECK (id = 1),
        seq      bigint NOT NULL,
        hash     text NOT NULL,
        mark_xid xid8 NOT NULL,                  -- every event before (mark_xid,
        mark_src int NOT NULL,                   -- mark_src (0 event, 1 note),
        mark_id  bigint NOT NULL                 -- mark_id) is sealed
    );
    INSERT INTO audit_head VALUES (1, 0, '{"0" * 64}', '0', 0, 0);
    CREATE TABLE audit_lines (
        seq       bigint PRIMARY KEY,
        sealed_at double precision NOT NULL,
        hash      text NOT NULL,
        line      text NOT NULL
    );
    CREATE TABLE audit_homes (
        home text PRIMARY KEY,
        seq  bigint NOT NULL,
        hash text NOT NULL,
        at   double precision NOT NULL
    );
    CREATE TABLE audit_checkpoints (
        seq   bigint PRIMARY KEY,
        hash  text NOT NULL,
        at    double precision NOT NULL,
        actor text NOT NULL
    );
    """,
)

#: The version of a schema with every migration applied.
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: Conn, url: str) -> str:
    """Bring the connection's current schema to SCHEMA_VERSION (creating its tables on
    first use) and return its name.  StoreError: no schema to create tables in, a jobs
    table that is not queuectl's, or a newer version than this code knows."""
    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise StoreError(
            f"PostgreSQL at {url}: no schema to create tables in (the search_path names no existing schema)"
        )
    schema = str(row[0])
    if _version(conn) == SCHEMA_VERSION:
        return schema
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (LOCK_CLASS,))
        version = _version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"PostgreSQL schema {schema!r} at {url} has schema version {version}, "
                f"newer than this queuectl knows ({SCHEMA_VERSION}): upgrade queuectl"
            )
        if version == 0:
            if _has_table(conn, "jobs"):
                raise StoreError(
                    f"schema {schema!r} at {url} has a jobs table that is not "
                    "queuectl's: use another schema (?options=-csearch_path%3D<schema>)"
                )
            conn.execute(
                "CREATE TABLE queuectl_schema (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for number, step in enumerate(MIGRATIONS[version:], version + 1):
            conn.execute(step)
            conn.execute("INSERT INTO queuectl_schema (version) VALUES (%s)", (number,))
    return schema


def _version(conn: Conn) -> int:
    if not _has_table(conn, "queuectl_schema"):
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM queuectl_schema").fetchone()
    return int(row[0]) if row else 0


def _has_table(conn: Conn, name: str) -> bool:
    # A query on pg_class, not to_regclass(): that one reads the backend's catalog
    # cache, which may still say "no such table" after we waited for the lock while
    # another process created it (a stale negative entry).
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relname = %s)",
        (name,),
    ).fetchone()
    return bool(row and row[0])
