"""The SQLite connection: how it is opened and configured, how its errors are
translated, and the retry of a write transaction.  Nothing `apsw.*` escapes the
sqlite package: errors are translated at its boundary.

One connection per process, WAL journal, every write transaction BEGIN IMMEDIATE
(a read is never upgraded to a write, which fails at once with
SQLITE_BUSY_SNAPSHOT), and a busy handler that waits up to BUSY_TIMEOUT_MS under a
whole-transaction retry.
"""

from __future__ import annotations

import os
import time

import apsw

from queuectl.errors import DuplicateJob, StoreBusy, StoreCorrupt, StoreError

# A constant of this name means to mypy what typing.TYPE_CHECKING means, without
# importing typing on the `queuectl enqueue` path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
#: Waits for a lock start at BUSY_FIRST_SLEEP and double up to BUSY_MAX_SLEEP.
#: SQLite's own handler (set_busy_timeout) starts at a millisecond, far longer than a
#: worker holds the write lock, so its first sleep would be most of a collision's cost.
BUSY_FIRST_SLEEP = 0.00005
BUSY_MAX_SLEEP = 0.01
#: WAL frames before a commit runs an automatic checkpoint (SQLite's default: 1000).
#: A checkpoint fsyncs the WAL and the database and stalls every worker's commit, so
#: fewer of them keep a busy queue moving.  What a commit guarantees is unchanged:
#: with synchronous=NORMAL a commit survives a crash of any process (not a power
#: loss: use synchronous=full for that, which syncs every commit); the WAL file grows
#: to about 16 MB before it is reused.
WAL_AUTOCHECKPOINT = 4000
#: Whole-transaction retries after the busy timeout ran out, before StoreBusy.
BUSY_RETRIES = 3
#: A WAL file's header; frames follow it.
WAL_HEADER_SIZE = 32


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
    # A cancelled parent's waiting children are cancelled by a trigger, and theirs by
    # the same trigger again (schema v10).
    conn.execute("PRAGMA recursive_triggers=ON")
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
