"""The PostgreSQL store, through psycopg 3: one queue for workers on many hosts.

Same semantics as the SQLite store (see store/__init__.py), with these choices:

* Times are epoch seconds in `double precision` columns, so a value round-trips
  exactly (remove_worker is a compare-and-set on heartbeat_at).  `now=None` means
  the database clock (`now()`: one instant per transaction), so host clocks do not
  matter; an explicit `now` is always honoured.
* Tables live in the connection's current schema (the first of its search_path),
  never a hard-coded one.  The schema is created and migrated on first use inside
  one transaction under `pg_advisory_xact_lock`, so concurrent first opens do not
  race; the applied versions are rows of `queuectl_schema`.
* History is written by triggers in the same transaction as every state change.
* The claim is one autocommit statement with `FOR UPDATE SKIP LOCKED`: claimers on
  any number of hosts never get the same row and never wait for each other.
* Enqueue and `dlq retry` send `pg_notify` in their transaction; an idle worker
  LISTENs on a second, autocommit connection.  The claim stays the truth: a missed
  notification costs one poll.
* A lost connection is dropped and re-opened on the next call with capped,
  jittered backoff.  Reads are retried once on a fresh connection; a write whose
  connection broke mid-statement is not (it may have committed): it raises
  StoreUnavailable and the caller decides (the worker retries its fenced finish).
* Nothing `psycopg.*` escapes this module, and no message carries the URL's
  password (see redact_url).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from queuectl.errors import (
    DuplicateJob,
    InvalidInput,
    QueuectlError,
    StoreBusy,
    StoreError,
    StoreUnavailable,
)
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

#: Connection attempts per call before StoreUnavailable, and the backoff between
#: them: doubling from BACKOFF_FIRST up to BACKOFF_CAP, each scaled by a random
#: 0.5-1.0 so that many workers do not reconnect in lockstep (2.5-5 s in all,
#: enough to ride out a server restart).
CONNECT_TRIES = 7
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 2.0
#: Advisory lock class for migrations ("QCTL"); the key is the schema's hash.
LOCK_CLASS = 0x5143544C
#: From this many jobs on, an enqueue uses COPY instead of one INSERT.
COPY_THRESHOLD = 64
#: Connection settings applied unless the URL gives its own: fail fast when the
#: server is gone, and notice a silently dead peer (network cut) within ~30 s.
CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "queuectl",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}

_COLS = ", ".join(JOB_COLUMNS)
_EVENT_COLS = "seq, job_id, at, from_state, to_state, attempt, worker_id, exit_code, error, reason"
#: The database clock as epoch seconds; one value for the whole transaction.
_DB_NOW = "extract(epoch FROM now())::float8"
_T = f"COALESCE(%(now)s::float8, {_DB_NOW})"
#: The database clock as it is now (not the transaction's start): read after a
#: statement got its locks, for heartbeats, leases and recovery decisions.
_CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"
#: The call guard's shortest tick (it looks at the call in flight every eighth of the bound).
GUARD_TICK = 0.05

# Each step moves the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
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
    );
    -- The claim walks this index from its first entry: cost is flat in queue size.
    CREATE INDEX jobs_due ON jobs (priority DESC, next_run_at, id)
        WHERE state IN ('pending', 'failed');
    -- When the next retry or delayed job falls due: an idle worker sleeps until then.
    CREATE INDEX jobs_next ON jobs (next_run_at) WHERE state IN ('pending', 'failed');
    CREATE INDEX jobs_state ON jobs (state, created_at, id);
    CREATE INDEX jobs_worker ON jobs (worker_id) WHERE state = 'processing';

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
    # v6: when a recovery pass last found that every process had stalled (SQLite v8).
    """
    ALTER TABLE leases ADD COLUMN resumed_at double precision;
    """,
    # v7: the home each worker was started from (SQLite v9).
    """
    ALTER TABLE workers ADD COLUMN home text;
    """,
)

T = TypeVar("T")
Conn = psycopg.Connection[Any]


# --- the worker's two statements (claim(), finish(), finish_and_claim()) ----------------


def _claim(conn: Conn, worker_id: str, now: float | None) -> Job | None:
    # PENDING/FAILED -> PROCESSING: one statement.  SKIP LOCKED makes concurrent
    # claimers pass over a row another claimer holds instead of waiting for it; a row
    # changed under us is re-checked against the WHERE (EvalPlanQual).
    row = conn.execute(
        f"UPDATE jobs SET state = 'processing', attempts = attempts + 1,"
        f" lease = lease + 1, worker_id = %(w)s, started_at = {_T}, updated_at = {_T},"
        " finished_at = NULL, exit_code = NULL, error = NULL, stdout = NULL,"
        " stderr = NULL, reason = NULL"
        " WHERE id = (SELECT id FROM jobs WHERE state IN ('pending', 'failed')"
        f"             AND next_run_at <= {_T}"
        "             ORDER BY priority DESC, next_run_at, id LIMIT 1"
        "             FOR UPDATE SKIP LOCKED)"
        f" RETURNING {_COLS}",
        {"w": worker_id, "now": now},
    ).fetchone()
    return Job.from_tuple(row) if row else None


def _finish_params(
    job_id: str,
    lease: int,
    state: JobState,
    next_run_at: float | None,
    exit_code: int | None,
    error: str | None,
    stdout: str,
    stderr: str,
    now: float | None,
) -> dict[str, Any]:
    return {
        "state": state.value,
        "next": next_run_at,
        "code": exit_code,
        "error": _clean(error),
        "out": _clean(stdout),
        "err": _clean(stderr),
        "now": now,
        "id": job_id,
        "lease": lease,
    }


def _finish(conn: Conn, params: dict[str, Any]) -> bool:
    # PROCESSING -> COMPLETED / FAILED / DEAD, fenced by the lease
    cur = conn.execute(
        "UPDATE jobs SET state = %(state)s, next_run_at = %(next)s, exit_code = %(code)s,"
        f" error = %(error)s, stdout = %(out)s, stderr = %(err)s, finished_at = {_T},"
        f" updated_at = {_T}, reason = NULL"
        " WHERE id = %(id)s AND state = 'processing' AND lease = %(lease)s",
        params,
    )
    return cur.rowcount > 0


# --- passwords never leave this module ------------------------------------------------


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***: safe to print or log."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hosts = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hosts}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            pairs = [(k, "***" if k.lower() == "password" else v) for k, v in pairs]
            query = urlencode(pairs, safe="*", quote_via=quote)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url.split("?", 1)[0])


def _secrets(url: str) -> list[str]:
    """Every spelling of the URL's password(s), to scrub from driver messages."""
    found: set[str] = set()
    # A URL too broken for urlsplit still has its password between "user:" and "@".
    match = re.search(r"://[^:/@?#]*:([^@]*)@", url)
    if match and match.group(1):
        found.update({match.group(1), unquote(match.group(1))})
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            found.update({parts.password, unquote(parts.password)})
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k.lower() == "password" and v:
                found.add(v)
    return sorted(found, key=len, reverse=True)


def _channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of one queue (one schema of one database)."""
    name = f"queuectl.{schema}"
    if len(name.encode()) <= 63:
        return name
    return "queuectl." + hashlib.sha256(schema.encode()).hexdigest()[:32]


def _clean(text: str | None) -> str | None:
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


_TRANSIENT_FATAL = ("starting up", "shutting down", "in recovery", "too many", "terminating", "timeout")
_LOST_STATES = ("57P01", "57P02", "57P03")
_BUSY_STATES = ("40001", "40P01", "55P03", "57014")


def _transient(exc: psycopg.Error) -> bool:
    """Worth connecting again: the server is unreachable or restarting, not refusing us."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    msg = str(exc).lower()
    if "invalid" in msg:  # a bad option or value in the URL: trying again cannot help
        return False
    if "fatal" in msg:
        return any(s in msg for s in _TRANSIENT_FATAL)
    return True


def _is_lost(conn: Conn, exc: psycopg.Error) -> bool:
    """Did this error break the connection (as opposed to failing one statement)?"""
    if conn.closed or conn.broken:
        return True
    state = exc.sqlstate or ""
    return state.startswith("08") or state in _LOST_STATES


def _usable(conn: Conn | None) -> bool:
    """An idle connection whose socket is readable has been told something we did
    not ask for: in practice the server closing it (restart, pg_terminate_backend).
    Checking first means a write is not sent down a dead connection."""
    if conn is None or conn.closed:
        return False
    try:
        ready, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not ready


class _CallGuard:
    """Bounds the calls of one store: a daemon thread shuts down the socket of a call
    still in flight past its deadline, so a connection that hangs (a black-holed
    network: the peer's kernel, or a proxy, still acknowledges, so neither keepalives
    nor tcp_user_timeout fire) fails like a reset one, and the caller's thread is
    never held longer than the bound.  The call sees a broken connection and the
    store reconnects on the next call."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: (deadline, socket fd) of the call in flight, or None; replaced whole, so a
        #: reader sees one call's pair, never a mix of two.
        self.current: tuple[float, int] | None = None
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="queuectl-call-guard", daemon=True).start()

    def _watch(self) -> None:
        # A tick of an eighth of the bound: a hung call is cut within 1.125x the
        # bound, and an idle worker's guard wakes a few times a second, not 20.
        tick = max(GUARD_TICK, self.timeout / 8)
        while not self._closed.wait(tick):
            call = self.current
            if call is None or time.monotonic() < call[0]:
                continue
            if self.current is call:  # still the same call: cut it off
                self.current = None
                with contextlib.suppress(OSError):
                    # A duplicate of the descriptor, so closing it leaves the
                    # connection's own descriptor to psycopg; the shutdown reaches the
                    # socket both name.
                    sock = socket.socket(fileno=os.dup(call[1]))
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    finally:
                        sock.close()

    def close(self) -> None:
        self._closed.set()


class PostgresStore:
    #: Another host may reach the server while this one cannot (store protocol).
    partitionable = True

    def __init__(self, url: str, *, connect_tries: int = CONNECT_TRIES) -> None:
        self._url = url
        #: The URL without its password: the only form that may be shown.
        self.url = redact_url(url)
        self._secrets = _secrets(url)
        self._tries = max(1, connect_tries)
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreError(f"invalid PostgreSQL URL {self.url}: {self._reason(exc)}") from None
        self._kwargs: dict[str, Any] = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
        self._schema = ""
        self._channel = ""
        self._conn: Conn | None = None
        self._listener: Conn | None = None
        self._analyzed_at = 0.0
        self._guard: _CallGuard | None = None
        #: With a call timeout: when the call in flight must have ended (monotonic).
        self._deadline: float | None = None
        self._conn = self._open()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    # --- connections -----------------------------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        """One line from a driver error, with every password scrubbed out."""
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        text = text.replace(self._url, self.url)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text or type(exc).__name__

    def _connect(self, tries: int | None = None) -> Conn:
        """A new autocommit connection; transient failures are retried with capped,
        jittered backoff, then reported as StoreUnavailable."""
        tries = self._tries if tries is None else tries
        delay = BACKOFF_FIRST
        for attempt in range(tries):
            try:
                return psycopg.connect(self._url, autocommit=True, **self._kwargs)
            except psycopg.Error as exc:
                if not _transient(exc):
                    raise StoreError(f"cannot use PostgreSQL at {self.url}: {self._reason(exc)}") from None
                pause = delay * random.uniform(0.5, 1.0)
                # A bounded call never backs off past its deadline.
                late = self._deadline is not None and time.monotonic() + pause > self._deadline
                if attempt + 1 >= tries or late:
                    raise StoreUnavailable(
                        f"cannot reach PostgreSQL at {self.url}: {self._reason(exc)}"
                    ) from None
            time.sleep(pause)
            delay = min(delay * 2, BACKOFF_CAP)
        raise AssertionError("unreachable")

    def _open(self) -> Conn:
        conn = self._connect()
        try:
            self._migrate(conn)
        except psycopg.Error as exc:
            conn.close()
            raise self._translate(exc) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _ready(self) -> Conn:
        if not _usable(self._conn):
            self._drop()
            self._conn = self._open()
        assert self._conn is not None
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self, fn: Callable[[Conn], T], *, read: bool = False) -> T:
        """Run fn on a healthy connection, translating errors.  A read that finds the
        connection broken is retried once on a new one; a write is not, since it may
        have committed before the connection went."""
        guard = self._guard
        if guard is not None:
            self._deadline = time.monotonic() + guard.timeout
        try:
            for attempt in range(2 if read else 1):
                conn = self._ready()
                if guard is not None and self._deadline is not None:
                    guard.current = (self._deadline, conn.fileno())
                try:
                    return fn(conn)
                except psycopg.Error as exc:
                    if not _is_lost(conn, exc):
                        raise self._translate(exc) from None
                    self._drop()
                    if attempt == 1 or not read:
                        raise self._translate(exc) from None
                finally:
                    if guard is not None:
                        guard.current = None
            raise AssertionError("unreachable")
        finally:
            self._deadline = None

    def _read(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self._run(lambda conn: conn.execute(query, params).fetchall(), read=True)

    def _translate(self, exc: psycopg.Error) -> QueuectlError:
        reason = self._reason(exc)
        state = exc.sqlstate or ""
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return DuplicateJob()
        if state in _BUSY_STATES:
            return StoreBusy(f"PostgreSQL at {self.url} is busy: {reason}")
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return StoreUnavailable(f"lost the connection to PostgreSQL at {self.url}: {reason}")
        if isinstance(exc, psycopg.DataError):
            return InvalidInput(f"PostgreSQL cannot store this value: {reason}")
        return StoreError(f"database error on PostgreSQL at {self.url}: {reason}")

    # --- schema --------------------------------------------------------------------

    def _migrate(self, conn: Conn) -> None:
        schema = conn.execute("SELECT current_schema()").fetchone()
        if schema is None or schema[0] is None:
            raise StoreError(
                f"PostgreSQL at {self.url}: no schema to create tables in "
                "(the search_path names no existing schema)"
            )
        self._schema = str(schema[0])
        self._channel = _channel(self._schema)
        if self._version(conn) == len(MIGRATIONS):
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (LOCK_CLASS,))
            version = self._version(conn)
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"PostgreSQL schema {self._schema!r} at {self.url} has schema version {version}, "
                    f"newer than this queuectl knows ({len(MIGRATIONS)}): upgrade queuectl"
                )
            if version == 0:
                if self._has_table(conn, "jobs"):
                    raise StoreError(
                        f"schema {self._schema!r} at {self.url} has a jobs table that is not "
                        "queuectl's: use another schema (?options=-csearch_path%3D<schema>)"
                    )
                conn.execute(
                    "CREATE TABLE queuectl_schema (version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            for number, step in enumerate(MIGRATIONS[version:], version + 1):
                conn.execute(step)
                conn.execute("INSERT INTO queuectl_schema (version) VALUES (%s)", (number,))

    def _version(self, conn: Conn) -> int:
        if not self._has_table(conn, "queuectl_schema"):
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) FROM queuectl_schema").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _has_table(conn: Conn, name: str) -> bool:
        # A query on pg_class, not to_regclass(): that one reads the backend's catalog
        # cache, which may still say "no such table" after we waited for the lock while
        # another process created it (a stale negative entry; found by the race test).
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relname = %s)",
            (name,),
        ).fetchone()
        return bool(row and row[0])

    # --- clock -----------------------------------------------------------------------

    def now(self) -> float:
        return float(self._read(_CLOCK)[0][0])

    def check_database(self) -> None:
        """Nothing to check: the server owns its files (store protocol)."""

    def set_call_timeout(self, seconds: float | None) -> None:
        """Bound every call (store protocol).  libpq's connect_timeout is whole
        seconds and at least 2: a connection attempt to a black hole takes that long,
        and the next attempt is not made past the call's deadline."""
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        if seconds is not None:
            self._guard = _CallGuard(seconds)

    # --- jobs ----------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob], now: float | None = None) -> list[str]:
        ids = [j.id for j in jobs]
        if not jobs:
            return []

        def insert(conn: Conn) -> list[str]:
            with conn.transaction():
                if len(jobs) < COPY_THRESHOLD:
                    self._insert(conn, jobs, now)
                else:
                    self._copy(conn, jobs, now)
                conn.execute("SELECT pg_notify(%s, 'enqueue')", (self._channel,))
            return ids

        try:
            return self._run(insert)
        except DuplicateJob:
            raise DuplicateJob(self._first_existing(ids)) from None
        except UnicodeEncodeError:
            raise InvalidInput("job text is not valid UTF-8") from None

    @staticmethod
    def _insert(conn: Conn, jobs: Sequence[NewJob], now: float | None) -> None:
        """A few jobs: one INSERT over arrays (fewest round trips)."""
        # None -> PENDING (the statement trigger writes the first events)
        conn.execute(
            "INSERT INTO jobs (id, command, state, max_retries, priority, timeout,"
            " created_at, updated_at, run_at, next_run_at)"
            f" SELECT u.id, u.command, 'pending', u.max_retries, u.priority, u.timeout,"
            f" {_T}, {_T}, u.run_at, u.run_at"
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

    @staticmethod
    def _copy(conn: Conn, jobs: Sequence[NewJob], now: float | None) -> None:
        """Many jobs: COPY, about twice the rate of INSERT (the statement trigger
        fires for COPY too, so the history is written all the same)."""
        if now is None:
            row = conn.execute(f"SELECT {_DB_NOW}").fetchone()
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

    def _first_existing(self, ids: list[str]) -> str | None:
        seen: set[str] = set()
        for job_id in ids:
            if job_id in seen:
                return job_id
            seen.add(job_id)
        rows = self._read(
            "SELECT u.id FROM unnest(%s::text[]) WITH ORDINALITY AS u(id, n)"
            " WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.id) ORDER BY u.n LIMIT 1",
            (ids,),
        )
        return str(rows[0][0]) if rows else None

    def get(self, job_id: str) -> Job | None:
        rows = self._read(f"SELECT {_COLS} FROM jobs WHERE id = %s", (job_id,))
        return Job.from_tuple(rows[0]) if rows else None

    def history(self, job_id: str) -> list[Event]:
        rows = self._read(f"SELECT {_EVENT_COLS} FROM job_events WHERE job_id = %s ORDER BY seq", (job_id,))
        return [Event.from_tuple(r) for r in rows]

    def list_jobs(self, state: JobState | None = None, limit: int | None = None) -> list[Job]:
        lim = None if limit is None else int(limit)
        if state is None:
            rows = self._read(f"SELECT {_COLS} FROM jobs ORDER BY created_at, id LIMIT %s", (lim,))
        else:
            rows = self._read(
                f"SELECT {_COLS} FROM jobs WHERE state = %s ORDER BY created_at, id LIMIT %s",
                (state.value, lim),
            )
        return [Job.from_tuple(r) for r in rows]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in JobState}
        for state, n in self._read("SELECT state, count(*) FROM jobs GROUP BY state"):
            out[str(state)] = int(n)
        return out

    def fold_counts(self) -> None:
        """Nothing to fold: counts() counts the jobs table itself here, with no
        snapshot to keep (SQLite keeps one, schema v7)."""

    def claim(self, worker_id: str, now: float | None = None) -> Job | None:
        return self._run(lambda conn: _claim(conn, worker_id, now))

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
        params = _finish_params(job_id, lease, state, next_run_at, exit_code, error, stdout, stderr, now)
        return self._run(lambda conn: _finish(conn, params))

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
        params = _finish_params(job_id, lease, state, next_run_at, exit_code, error, stdout, stderr, now)

        def both(conn: Conn) -> tuple[bool, Job | None]:
            # One transaction, one commit per job; the finish stays fenced by the lease.
            with conn.transaction():
                return _finish(conn, params), _claim(conn, worker_id, now)

        return self._run(both)

    def next_due(self) -> float | None:
        rows = self._read("SELECT min(next_run_at) FROM jobs WHERE state IN ('pending', 'failed')")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def dlq_retry(self, job_ids: Iterable[str] | None, now: float | None = None) -> list[str]:
        # DEAD -> PENDING, attempts reset: the job gets a fresh set of retries.
        update = (
            f"UPDATE jobs SET state = 'pending', attempts = 0, next_run_at = {_T},"
            f" updated_at = {_T}, worker_id = NULL, exit_code = NULL, error = NULL,"
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
                    conn.execute("SELECT pg_notify(%s, 'dlq_retry')", (self._channel,))
            return moved

        moved = self._run(retry)
        if ids is None:
            return moved
        done = set(moved)
        return [i for i in ids if i in done]

    def purge(self, states: Sequence[JobState], before: float | None = None) -> int:
        allowed = {JobState.COMPLETED, JobState.DEAD}
        if not states or any(s not in allowed for s in states):
            raise InvalidInput("only completed and dead jobs can be purged")
        # One statement: the jobs and their history go together, or not at all.
        query = (
            "WITH gone AS (DELETE FROM jobs WHERE state = ANY(%(states)s::text[])"
            " AND (%(before)s::float8 IS NULL OR updated_at < %(before)s::float8) RETURNING id),"
            " events AS (DELETE FROM job_events WHERE job_id IN (SELECT id FROM gone))"
            " SELECT count(*) FROM gone"
        )
        params = {"states": [s.value for s in states], "before": before}
        return self._run(lambda conn: int(conn.execute(query, params).fetchall()[0][0]))

    def purgeable(self, states: Sequence[JobState], before: float | None = None) -> int:
        query = (
            "SELECT count(*) FROM jobs WHERE state = ANY(%(states)s::text[])"
            " AND (%(before)s::float8 IS NULL OR updated_at < %(before)s::float8)"
        )
        return int(self._read(query, {"states": [s.value for s in states], "before": before})[0][0])

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
        attempts = "attempts - 1" if g.give_back else "attempts"
        # PROCESSING -> FAILED / DEAD (or PENDING, the attempt given back) on the
        # worker's behalf, fenced by the lease and by what the guard requires
        query = (
            f"UPDATE jobs SET state = %(state)s, attempts = {attempts}, next_run_at = %(next)s,"
            " exit_code = NULL, error = %(error)s, finished_at = %(now)s, updated_at = %(now)s,"
            " reason = %(reason)s WHERE id = %(id)s AND state = 'processing' AND lease = %(lease)s"
        )
        params: dict[str, Any] = {
            "state": JobState.PENDING.value if g.give_back else state.value,
            "next": next_run_at,
            "error": _clean(error),
            "reason": reason,
            "id": job_id,
            "lease": lease,
            "audit": audit,
        }
        if g.holder is not None:
            query += (
                " AND EXISTS (SELECT 1 FROM leases WHERE name = %(lease_name)s"
                " AND holder = %(holder)s AND expires_at > %(now)s)"
            )
            params.update(lease_name=MONITOR_LEASE, holder=g.holder)
        if g.worker_id is not None:
            # The worker is still silent: no heartbeat since the one the verdict saw.
            query += " AND NOT EXISTS (SELECT 1 FROM workers WHERE id = %(wid)s AND heartbeat_at > %(seen)s)"
            seen = float("-inf") if g.heartbeat_seen is None else g.heartbeat_seen
            params.update(wid=g.worker_id, seen=seen)

        def take_back(conn: Conn) -> bool:
            with conn.transaction():
                # The job's row first, then the time: a wait for the row (its worker's
                # finish) comes before the clock is read.
                conn.execute("SELECT 1 FROM jobs WHERE id = %(id)s FOR UPDATE", params)
                params["now"] = self._clock(conn) if now is None else now
                changed = conn.execute(query, params).rowcount > 0
                if changed and audit is not None:
                    conn.execute(
                        "INSERT INTO audit_outbox (record, created_at) VALUES (%(audit)s, %(now)s)", params
                    )
            return changed

        return self._run(take_back)

    @staticmethod
    def _clock(conn: Conn) -> float:
        row = conn.execute(_CLOCK).fetchone()
        assert row is not None
        return float(row[0])

    def audit_pending(self) -> list[tuple[int, str]]:
        rows = self._read("SELECT id, record FROM audit_outbox ORDER BY id")
        return [(int(i), str(r)) for i, r in rows]

    def audit_clear(self, ids: Sequence[int]) -> None:
        if ids:
            self._run(lambda conn: conn.execute("DELETE FROM audit_outbox WHERE id = ANY(%s)", (list(ids),)))

    # --- workers -------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO workers (id, host, pid, proc_start, started_at, heartbeat_at, home, holding)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                " proc_start = excluded.proc_start, started_at = excluded.started_at,"
                " heartbeat_at = excluded.heartbeat_at, home = excluded.home,"
                " holding = excluded.holding",
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

        return self._run(beat)

    def unregister_worker(self, worker_id: str) -> None:
        self._run(
            lambda conn: conn.execute(
                "DELETE FROM workers WHERE id = %(w)s AND NOT EXISTS"
                " (SELECT 1 FROM jobs WHERE state = 'processing' AND worker_id = %(w)s)",
                {"w": worker_id},
            )
        )

    def workers(self) -> list[WorkerInfo]:
        rows = self._read(
            "SELECT w.id, w.host, w.pid, w.proc_start, w.started_at, w.heartbeat_at,"
            " (SELECT j.id FROM jobs j WHERE j.worker_id = w.id AND j.state = 'processing'"
            "  ORDER BY j.id LIMIT 1), w.holding, w.home"
            " FROM workers w ORDER BY w.started_at, w.id"
        )
        return [WorkerInfo.from_tuple(r) for r in rows]

    def remove_worker(self, worker_id: str, heartbeat_at: float) -> bool:
        return self._run(
            lambda conn: (
                conn.execute(
                    "DELETE FROM workers WHERE id = %(w)s AND heartbeat_at = %(hb)s::float8"
                    " AND NOT EXISTS (SELECT 1 FROM jobs WHERE state = 'processing' AND worker_id = %(w)s)",
                    {"w": worker_id, "hb": heartbeat_at},
                ).rowcount
                > 0
            )
        )

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
                params["now"] = t = self._clock(conn) if now is None else now
                if conn.execute(query, params).rowcount == 0:
                    return None
            previous, resumed = before if before else (None, None)
            return LeaseGrant(at=t, previous=previous, resumed_at=resumed)

        return self._run(take)

    def mark_resumed(self, name: str, holder: str, at: float) -> None:
        self._run(
            lambda conn: conn.execute(
                "UPDATE leases SET resumed_at = %s WHERE name = %s AND holder = %s", (at, name, holder)
            )
        )

    def keep_due(self, was: float, now: float) -> int:
        return self._run(
            lambda conn: (
                conn.execute(
                    "UPDATE jobs SET next_run_at = %(now)s WHERE state IN ('pending', 'failed')"
                    " AND next_run_at > %(now)s AND next_run_at <= %(was)s",
                    {"now": now, "was": was},
                ).rowcount
            )
        )

    def release_lease(self, name: str, holder: str, passed: bool, now: float | None = None) -> bool:
        query = (
            f"UPDATE leases SET expires_at = {_T},"
            f" last_pass_at = CASE WHEN %(passed)s THEN {_T} ELSE last_pass_at END,"
            " last_pass_by = CASE WHEN %(passed)s THEN holder ELSE last_pass_by END,"
            " last_pass_kind = CASE WHEN %(passed)s THEN kind ELSE last_pass_kind END,"
            f" last_monitor_pass_at = CASE WHEN %(passed)s AND kind = 'monitor' THEN {_T}"
            "                        ELSE last_monitor_pass_at END"
            " WHERE name = %(name)s AND holder = %(holder)s"
        )
        params = {"now": now, "passed": bool(passed), "name": name, "holder": holder}
        return self._run(lambda conn: conn.execute(query, params).rowcount > 0)

    def lease_info(self, name: str) -> LeaseInfo | None:
        rows = self._read(
            "SELECT name, holder, kind, acquired_at, expires_at, last_pass_at, last_pass_by,"
            " last_pass_kind, last_monitor_pass_at, resumed_at FROM leases WHERE name = %s",
            (name,),
        )
        return LeaseInfo(*rows[0]) if rows else None

    # --- config --------------------------------------------------------------------

    def config_items(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._read("SELECT key, value FROM config")}

    def config_set(self, items: dict[str, str]) -> None:
        def store(conn: Conn) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO config (key, value) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    list(items.items()),
                )

        self._run(store)

    # --- waiting -------------------------------------------------------------------

    def wait_for_change(self, timeout: float, wakeup_fd: int | None = None) -> None:
        """Wait for a NOTIFY on this queue's channel, the timeout, or wakeup_fd.

        Never raises: without a listening connection it just waits (the caller polls).
        A listener that was (re)opened just now returns at once, because whatever was
        enqueued before its LISTEN took effect sent no notification it could see."""
        deadline = time.monotonic() + max(0.0, timeout)
        listener, fresh = self._listen()
        if fresh:
            return
        fds = [] if wakeup_fd is None else [wakeup_fd]
        if listener is not None:
            fds.append(listener.fileno())
        while (left := deadline - time.monotonic()) > 0:
            if not fds:
                time.sleep(left)
                return
            ready, _, _ = select.select(fds, [], [], left)
            if not ready or wakeup_fd in ready:
                return
            if listener is None or self._drained(listener):
                return

    def _listen(self) -> tuple[Conn | None, bool]:
        if self._listener is not None and not self._listener.closed:
            return self._listener, False
        self._close_listener()
        try:
            conn = self._connect(tries=1)
        except QueuectlError:
            return None, False
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except psycopg.Error:
            conn.close()
            return None, False
        self._listener = conn
        return conn, True

    def _drained(self, listener: Conn) -> bool:
        """Read what arrived on the listener; True if it holds a notification (or the
        connection went, which is worth a look at the queue too)."""
        try:
            return any(True for _ in listener.notifies(timeout=0))
        except psycopg.Error:
            self._close_listener()
            return True

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- maintenance ---------------------------------------------------------------

    def integrity_check(self) -> str:
        """PostgreSQL checks its own pages; this only proves the schema answers."""
        self._read("SELECT count(*) FROM jobs WHERE false")
        return "ok"

    def optimize(self) -> None:
        """Autovacuum keeps statistics fresh; refresh the jobs table's at most hourly."""
        if self._analyzed_at and time.monotonic() - self._analyzed_at < 3600:
            return
        self._analyzed_at = time.monotonic()
        with contextlib.suppress(QueuectlError):
            self._run(lambda conn: conn.execute("ANALYZE jobs"))

    def close(self) -> None:
        self.set_call_timeout(None)
        self._close_listener()
        self._drop()
