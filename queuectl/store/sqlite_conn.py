"""The SQLite connection: how it is opened and configured, how its errors are
translated, the write-transaction retry, the job insert (one job or many) and the
job counts' statements.

Kept apart from SQLiteStore (store/sqlite.py, which builds on these functions) so
that it imports only apsw and the standard library's cheapest modules: the
`queuectl enqueue` fast path (cli.py, issue 6) inserts jobs with this module alone,
through the same statements as SQLiteStore.enqueue.  Nothing `apsw.*` escapes.
"""

from __future__ import annotations

import os
import time

import apsw

from queuectl import rules
from queuectl.errors import DuplicateJob, InvalidInput, StoreBusy, StoreCorrupt, StoreError

# Not typing.TYPE_CHECKING, which would import typing (issue 6).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any, TypeVar

    T = TypeVar("T")

#: PRAGMA application_id of a queuectl database ("QCTL").
APPLICATION_ID = 0x5143544C
#: PRAGMA user_version of a database with every migration applied: the number of
#: steps in store/sqlite.py's MIGRATIONS (it checks that the two agree).
SCHEMA_VERSION = 9
BUSY_TIMEOUT_MS = 10_000
#: Waits for a lock start at 50 µs and double up to 10 ms.  SQLite's own handler
#: (set_busy_timeout) sleeps 1 ms, then 2, 5, 10 ... 100 ms; two workers take the
#: write lock thousands of times a second for ~0.1 ms each, so its first sleep alone
#: was most of what a collision cost (bench/: store time per job -15 to -20%).
BUSY_FIRST_SLEEP = 0.00005
BUSY_MAX_SLEEP = 0.01
#: WAL frames before a commit runs an automatic checkpoint (SQLite's default: 1000).
#: A checkpoint fsyncs the WAL and the database, and with 2 workers committing ~15
#: pages per job it came every ~70 jobs and stalled both workers' commits.  What a
#: commit guarantees is unchanged: with synchronous=NORMAL a commit survives a crash
#: of any process (not a power loss: use synchronous=full for that, which syncs every
#: commit); the WAL file grows to about 16 MB before it is reused.
WAL_AUTOCHECKPOINT = 4000
#: Whole-transaction retries after the busy timeout ran out, before StoreBusy.
BUSY_RETRIES = 3
#: A WAL file's header; frames follow it.
WAL_HEADER_SIZE = 32

# None -> PENDING (insert_jobs writes the first events with INSERT_FIRST_EVENTS).  Parameters: id,
# command, max_retries, priority, timeout, created_at, updated_at, run_at, next_run_at.
INSERT_JOB = (
    "INSERT INTO jobs (id, command, state, max_retries, priority, timeout,"
    " created_at, updated_at, run_at, next_run_at)"
    " VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)"
)
#: The first event (what the v1-v5 insert trigger wrote) of every job inserted after
#: the row with rowid ?, in rowid order: the order insert_jobs inserted them.  One
#: statement, not one per job: half the time (bench/enqueue.py).
INSERT_FIRST_EVENTS = (
    "INSERT INTO job_events (job_id, at, from_state, to_state, attempt)"
    " SELECT id, updated_at, NULL, 'pending', 0 FROM jobs WHERE rowid > ? ORDER BY rowid"
)
#: SQLite gives a new row the largest rowid plus one, unless the largest is 2**63-1
#: (then any unused one), so below this bound (a wide safety margin) the rows
#: inserted are exactly those after the largest rowid before.
_ROWID_SAFE = 2**62

# The job counts (schema v7).  job_counts holds every state's count as of event
# job_counts_upto.seq; the events after it are what changed since, so the counts are
# the snapshot plus those events, read in one statement (one read transaction).  A
# worker's claim and finish never touch the snapshot: fold_counts() moves the events
# into it, on every recovery pass and with every bulk insert, so few are left to read.
#: Rows (from_state, to_state, n) of the events since the snapshot.
COUNTS_DELTA = (
    "SELECT from_state, to_state, count(*) FROM job_events"
    " WHERE seq > (SELECT seq FROM job_counts_upto) GROUP BY from_state, to_state"
)
#: The snapshot as rows of the same shape (NULL, state, n), then the events since.
COUNTS = f"SELECT NULL, state, n FROM job_counts UNION ALL {COUNTS_DELTA}"
#: The newest event's seq: what the snapshot is up to after a fold.
COUNTS_UPTO = "UPDATE job_counts_upto SET seq = (SELECT coalesce(max(seq), 0) FROM job_events)"
#: Inserts of at least this many jobs fold the counts in their own transaction, so a
#: queue filled in bulk has its counts ready (a one-job enqueue leaves that to the
#: next recovery pass: a fold would cost it a scan of the events since the last).
FOLD_MIN_ROWS = 500


def prepare_file(path: str) -> None:
    """Create the database file owner-only before SQLite does (its -wal and -shm
    files copy the database file's mode)."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise StoreError(f"cannot open database {path}: folder {folder} does not exist")
    if os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create database {path}: {exc.strerror}") from None


def check_not_cut(path: str) -> None:
    """A database in WAL mode always has its first page in the file (switching to
    WAL writes it there before the WAL exists): an empty file beside a WAL with
    frames was cut, and SQLite would wait for a lock to recover it, then say busy."""
    try:
        size = os.stat(path).st_size
        wal = os.stat(path + "-wal").st_size
    except OSError:
        return
    if size == 0 and wal > WAL_HEADER_SIZE:
        raise StoreCorrupt(
            f"database {path} is corrupt: the file is empty but its write-ahead log is not"
            " (truncated; check it with sqlite3 '.recover')"
        )


def connect(path: str, synchronous: str | None) -> apsw.Connection:
    """A configured connection to the database file `path` (created if missing, with
    no schema yet).  synchronous: 'normal' or 'full'; None reads the stored setting."""
    prepare_file(path)
    check_not_cut(path)
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    except apsw.Error as exc:
        raise translate(exc, path) from None
    try:
        _configure(conn, path, synchronous)
    except apsw.Error as exc:
        conn.close()
        raise translate(exc, path) from None
    except StoreError:
        conn.close()
        raise
    return conn


def _configure(conn: apsw.Connection, path: str, synchronous: str | None) -> None:
    conn.set_busy_handler(busy_handler(BUSY_TIMEOUT_MS / 1000))
    # The first read tells "not a database" apart before any pragma writes.
    conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
    if str(mode).lower() != "wal":
        raise StoreError(f"database {path} cannot use WAL mode (journal_mode={mode})")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
    conn.transaction_mode = "IMMEDIATE"
    if synchronous is None:
        synchronous = _stored_synchronous(conn)
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")


def _stored_synchronous(conn: apsw.Connection) -> str:
    try:
        rows = conn.execute("SELECT value FROM config WHERE key='synchronous'").fetchall()
    except apsw.SQLError:  # no config table yet
        return "normal"
    return str(rows[0][0]) if rows else "normal"


def schema_ids(conn: apsw.Connection) -> tuple[int, int]:
    """(PRAGMA application_id, PRAGMA user_version)."""
    app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
    version = conn.execute("PRAGMA user_version").fetchall()[0][0]
    return int(str(app_id)), int(str(version))


def is_current(conn: apsw.Connection) -> bool:
    """A queuectl database with every migration applied."""
    return schema_ids(conn) == (APPLICATION_ID, SCHEMA_VERSION)


def busy_handler(timeout: float) -> Callable[[int], bool]:
    """What SQLite calls while another connection holds a lock we need, with the number
    of prior calls for this wait: sleep a little and retry, for up to `timeout` seconds
    in all (then SQLITE_BUSY, as set_busy_timeout would)."""
    deadline = 0.0

    def wait(prior: int) -> bool:
        nonlocal deadline
        now = time.monotonic()
        if prior == 0:
            deadline = now + timeout
        elif now >= deadline:
            return False
        time.sleep(min(BUSY_FIRST_SLEEP * 2 ** min(prior, 10), BUSY_MAX_SLEEP, deadline - now))
        return True

    return wait


def translate(exc: apsw.Error, path: str) -> StoreError:
    # Damage first: a damaged file is never reported as busy (retrying cannot help).
    if isinstance(exc, apsw.NotADBError):
        return StoreCorrupt(f"{path} is not a SQLite database (or it is corrupt)")
    if isinstance(exc, apsw.CorruptError):
        return StoreCorrupt(f"database {path} is corrupt (check it with sqlite3 '.recover')")
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        return StoreBusy(f"database busy: another process held {path} locked for too long")
    if isinstance(exc, apsw.ReadOnlyError):
        return StoreError(f"database {path} is read-only")
    if isinstance(exc, apsw.CantOpenError | apsw.PermissionsError):
        return StoreError(f"cannot open database {path}: check the folder exists and is writable")
    if isinstance(exc, apsw.FullError):
        return StoreError(f"database {path} is full: the disk or the size limit is reached")
    if isinstance(exc, apsw.IOError):
        return StoreError(f"I/O error on database {path}: {exc}")
    return StoreError(f"database error on {path}: {exc}")


def write(conn: apsw.Connection, path: str, fn: Callable[[apsw.Connection], T]) -> T:
    """Run fn in one BEGIN IMMEDIATE transaction, retrying it whole when busy."""
    for attempt in range(BUSY_RETRIES + 1):
        try:
            with conn:
                return fn(conn)
        except (apsw.BusyError, apsw.LockedError) as exc:
            if attempt == BUSY_RETRIES:
                raise translate(exc, path) from None
        except apsw.ConstraintError:
            raise DuplicateJob() from None
        except apsw.Error as exc:
            raise translate(exc, path) from None
    raise AssertionError("unreachable")


def read(conn: apsw.Connection, path: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    for attempt in range(BUSY_RETRIES + 1):
        try:
            return conn.execute(sql, params).fetchall()
        except (apsw.BusyError, apsw.LockedError) as exc:
            if attempt == BUSY_RETRIES:
                raise translate(exc, path) from None
        except apsw.Error as exc:
            raise translate(exc, path) from None
    raise AssertionError("unreachable")


def config_items(conn: apsw.Connection, path: str) -> dict[str, str]:
    """The config table's stored values."""
    return {str(k): str(v) for k, v in read(conn, path, "SELECT key, value FROM config")}


def insert_jobs(conn: apsw.Connection, path: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert jobs as PENDING (rows as INSERT_JOB takes them), each with its first
    history event, in one transaction; DuplicateJob names the first id that exists
    (or repeats)."""

    fold = len(rows) >= FOLD_MIN_ROWS

    def insert(c: apsw.Connection) -> None:
        if fold:  # the events since the last fold; the new jobs are counted below
            fold_counts(c)
        before = c.execute("SELECT coalesce(max(rowid), 0) FROM jobs").fetchall()[0][0]
        if not isinstance(before, int) or before >= _ROWID_SAFE:
            raise StoreError("the jobs table has run out of rowids in order")
        c.executemany(INSERT_JOB, rows)
        c.execute(INSERT_FIRST_EVENTS, (before,))
        if fold:  # no other writer between: the snapshot is current but for these
            c.execute("UPDATE job_counts SET n = n + ? WHERE state = 'pending'", (len(rows),))
            c.execute(COUNTS_UPTO)

    try:
        write(conn, path, insert)
    except DuplicateJob:
        raise DuplicateJob(first_existing(conn, path, [str(r[0]) for r in rows])) from None


def net_counts(rows: Iterable[tuple[Any, ...]]) -> dict[str, int]:
    """Net change per state of rows (from_state, to_state, n): n jobs left from_state
    (None for new jobs) and entered to_state."""
    net: dict[str, int] = {}
    for src, dst, n in rows:
        net[dst] = net.get(dst, 0) + n
        if src is not None:
            net[src] = net.get(src, 0) - n
    return net


def fold_counts(c: apsw.Connection) -> None:
    """Add the events since the counts snapshot to it (inside a write transaction);
    with none since, nothing is written."""
    rows = c.execute(COUNTS_DELTA).fetchall()
    if not rows:
        return
    net = net_counts(rows)
    c.executemany("UPDATE job_counts SET n = n + ? WHERE state = ?", [(n, s) for s, n in net.items() if n])
    c.execute(COUNTS_UPTO)


def first_existing(conn: apsw.Connection, path: str, ids: list[str]) -> str | None:
    seen: set[str] = set()
    for job_id in ids:
        if job_id in seen:
            return job_id
        seen.add(job_id)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = read(conn, path, f"SELECT id FROM jobs WHERE id IN ({marks}) LIMIT 1", chunk)
        if rows:
            return str(rows[0][0])
    return None


def enqueue_new(path: str, spec: Mapping[str, Any]) -> str | None:
    """Validate one job and insert it as PENDING into the queue at `path`, as
    SQLiteStore, Queue.enqueue and build_job do it (same statements, same rules, same
    order: open, read the defaults, validate, insert); returns its id.  None, having
    changed nothing, when the database is not a queuectl one at the current schema
    (new, older, newer, or someone else's): SQLiteStore migrates it or says why not."""
    ids = _insert_new(path, [spec], numbered=False)
    return None if ids is None else ids[0]


def enqueue_many_new(path: str, specs: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """enqueue_new for many jobs in one transaction, as SQLiteStore, Queue.enqueue_many
    and build_job do it (the queue's defaults read once, every job validated, its
    errors numbered from 1, then all inserted, or none); their ids, or None."""
    return _insert_new(path, specs, numbered=True)


def _insert_new(path: str, specs: Sequence[Mapping[str, Any]], *, numbered: bool) -> list[str] | None:
    conn = connect(path, None)
    try:
        if not is_current(conn):
            return None
        now = time.time()  # SQLiteStore's clock
        max_retries, timeout = rules.job_defaults(config_items(conn, path))
        check = rules.check_job
        rows = []
        for n, spec in enumerate(specs, 1):
            try:
                job_id, command, retries, priority, job_timeout, run_at = check(
                    spec, max_retries, timeout, now
                )
            except InvalidInput as exc:
                if not numbered:
                    raise
                raise InvalidInput(f"job {n}: {exc}") from None
            rows.append((job_id, command, retries, priority, job_timeout, now, now, run_at, run_at))
        if not rows:
            raise InvalidInput("no jobs given")
        insert_jobs(conn, path, rows)
        return [r[0] for r in rows]
    except apsw.Error as exc:
        raise translate(exc, path) from None
    finally:
        try:  # noqa: SIM105 (contextlib is one more import to pay for, issue 6)
            conn.close()
        except apsw.Error:  # as SQLiteStore.close
            pass
