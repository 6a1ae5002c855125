"""The audit trail's files: logs/audit-<UTC date>.jsonl, and bringing them up to date.

`flush` seals what waits in the database (trail.seal: the store keeps the lines and
the head) and then appends to this home's files every line they do not have yet,
in seq order, under logs/audit.lock, so two processes never interleave a chain.

Nothing is lost or doubled: the files' last whole line says where they end (a line
cut by a crash mid-write is dropped and written again), so a process killed between
its append and its record of it (Store.trail.set_home) makes the next writer start
after what the files hold.  The recorded end never moves back, and a writer starts
after it even when the files end before it: a tail cut from the files stays a gap
that `audit verify` reports, never silently refilled.

Files are created 0600 with O_NOFOLLOW (a symlink planted in logs/ is refused), in
the owner-only logs/ folder; a file once left for the next day is never written
again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queuectl import failpoints
from queuectl.errors import TrailBusy
from queuectl.store import Store
from queuectl.trail import GENESIS, Sealed, parse, seal

#: A trail file's name: its lines were appended on that UTC date (or later, once a
#: clock stepped back: a file is never reopened after a newer one exists).
FILE_RE = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})\.jsonl$")
#: Events sealed per transaction, and lines appended per read.
BATCH = 2000
#: The lock two writers of one home take turns on.
LOCK_NAME = "audit.lock"
#: How often a worker or the monitor brings the trail up to date (seconds): the
#: longest an event waits for its line while they run.
FLUSH_INTERVAL = 1.0
#: Lines a flush appends from memory, as it sealed them, without reading them back
#: (a second of a fast drain's events; a larger backlog is read from the database).
KEPT_IN_MEMORY = 10_000
#: How long a command waits for logs/audit.lock before TrailBusy (workers and the
#: monitor never wait: they try again at their next flush).
LOCK_WAIT = 5.0
#: How long a worker or the monitor tries for the lock as it stops (seconds).
STOP_WAIT = 1.0
#: How long a worker or the monitor finds the lock held before it says so, once.
BUSY_WARNING = 30.0
#: How long the database keeps a line every home has appended (seconds).
LINES_KEPT_FOR = 86400.0


@dataclass(frozen=True)
class End:
    """The last whole line of the files: its seq and hash, where it is."""

    seq: int
    hash: str
    file: Path | None = None


def files(logs_dir: Path) -> list[Path]:
    """The trail's files in `logs_dir`, oldest first (their names sort by date)."""
    try:
        names = os.listdir(logs_dir)
    except FileNotFoundError:
        return []
    return [logs_dir / n for n in sorted(names) if FILE_RE.match(n)]


def home_key(logs_dir: Path) -> str:
    """The name a home's files go by in the database: its logs folder's real path."""
    return str(Path(logs_dir).resolve())


def seal_pending(store: Store, limit: int = BATCH, sealed_lines: list[Sealed] | None = None) -> int:
    """Seal every event waiting in the database; the number this process sealed.
    The first KEPT_IN_MEMORY of the lines it sealed are added, in order, to
    `sealed_lines` when given (a backlog, e.g. a whole history after the upgrade, is
    not held in memory: the database serves the rest).  When another process seals
    at the same time, this one stops at its first lost batch: the other, or the next
    flush, seals what is left, and nothing is lost."""
    sealed = 0
    while True:
        head, token, sources = store.trail.pending(limit)
        if not sources:
            old, new = token
            if new != old:  # PostgreSQL: xmin moved past transactions that wrote none
                store.trail.commit(head, token, [])
            return sealed
        lines = seal(sources, *head)
        if not store.trail.commit(head, token, lines):
            # Another sealer moved the head, or holds it: what waits is its to seal
            # (or the next flush's), and no loop spins on a sealer that is stopped.
            return sealed
        sealed += len(lines)
        if sealed_lines is not None and len(sealed_lines) < KEPT_IN_MEMORY:
            sealed_lines.extend(lines[: KEPT_IN_MEMORY - len(sealed_lines)])
        if len(sources) < limit:
            return sealed


def acquire(fd: int, op: int, path: Path, wait: float) -> None:
    """flock(fd, op), trying for `wait` seconds (0: once): a writer holds the lock
    for milliseconds, but one stopped (SIGSTOP) while writing holds it until it
    resumes, and no recovery, drain or command may wait for that.  TrailBusy then."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TrailBusy(
                    f"{path} is held by another process (waited {wait:g} s; one stopped while"
                    " writing the audit trail?): the events wait in the database; try again"
                ) from None
            time.sleep(0.01)


@contextlib.contextmanager
def locked(logs_dir: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold logs/audit.lock (created 0600, never through a symlink)."""
    logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = logs_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        acquire(fd, fcntl.LOCK_EX, path, wait)
        yield
    finally:
        os.close(fd)


def last_line(logs_dir: Path, *, repair: bool = False) -> End:
    """Where the files end: the newest file's last whole line (seq 0: no line yet;
    -1: a line that is not an event).  `repair` (under the lock): cut a last line
    that a crash left without its newline."""
    for path in reversed(files(logs_dir)):
        end = file_end(path, repair=repair)
        if end is not None:
            return end
    return End(0, GENESIS)


def file_end(path: Path, *, repair: bool = False) -> End | None:
    """The last whole line of one file (None: it has none)."""
    fd = os.open(path, (os.O_RDWR if repair else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        tail = _tail(fd, size)
        if tail and not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1
            if repair:
                os.ftruncate(fd, size - (len(tail) - cut))
            tail = tail[:cut]
        lines = tail.splitlines()
        if not lines:
            return None
        event = parse(lines[-1].decode("utf-8", "replace"))
        if isinstance(event, str):
            return End(-1, "", path)  # not ours to mend: verify reports it
        # Only the tail is read: a flush costs the same on the first line of the
        # day as on the millionth.
        return End(int(event["seq"]), str(event["hash"]), path)
    finally:
        os.close(fd)


def _tail(fd: int, size: int) -> bytes:
    """The file's last lines: enough bytes to hold the last whole one."""
    chunk = 65536
    while True:
        start = max(0, size - chunk)
        data = os.pread(fd, size - start, start)
        if start == 0 or data.count(b"\n") >= 2:
            return data
        chunk *= 4


def _append(path: Path, texts: list[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        data = "".join(t + "\n" for t in texts).encode("utf-8")
        if failpoints.armed("trail_mid_append"):
            os.write(fd, data[: len(data) // 2 + 1])  # a line cut in the middle
            os._exit(137)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _target(logs_dir: Path, end: End, now: float) -> Path:
    """Today's file (UTC), or the newest file when a clock step makes today older."""
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    if end.file is not None:
        match = FILE_RE.match(end.file.name)
        if match and match.group(1) > today:
            return end.file
    return logs_dir / f"audit-{today}.jsonl"


def write(store: Store, logs_dir: Path, now: float | None = None, wait: float = LOCK_WAIT) -> int:
    """Append to this home's files every sealed line they lack; the number appended."""
    with locked(logs_dir, wait):
        return _write_locked(store, logs_dir, now)


def _joined(store: Store, key: str, first: str) -> None:
    """A home whose first line is past seq 1 (it joined after the database dropped
    the lines before): a checkpoint where its files start, so they verify."""
    event = parse(first)
    if isinstance(event, dict):
        store.trail.add_checkpoint(int(event["seq"]) - 1, str(event["prev_hash"]))


def flush(store: Store, logs_dir: Path, now: float | None = None, wait: float = LOCK_WAIT) -> int:
    """Seal what waits, then append it to this home's files; the lines appended.
    Sealing under the home's lock too: the processes of one home take turns, and
    none computes a batch that another's compare-and-set then throws away."""
    with locked(logs_dir, wait):
        sealed: list[Sealed] = []
        if seal_pending(store, sealed_lines=sealed):
            failpoints.hit("trail_after_seal")
        return _write_locked(store, logs_dir, now, sealed)


def _write_locked(store: Store, logs_dir: Path, now: float | None, sealed: list[Sealed] | None = None) -> int:
    """Append what this home lacks; `sealed`: lines this process just sealed, which
    need not be read back from the database when they are next (another home's
    sealer may have taken the seqs between two of them: only the run that follows
    on is used)."""
    key = home_key(logs_dir)
    written = 0
    end = last_line(logs_dir, repair=True)
    mark = store.trail.home(key)
    # A last line that is not an event (damaged by hand) is not ours to mend: the
    # lines go on after it from the recorded end, and verify reports it.
    after = max(end.seq, mark.seq if mark is not None else 0)
    fresh = sealed or []
    while True:
        rows = _following(fresh, after)
        if not rows:
            fresh = []
            rows = store.trail.lines(after, BATCH)
        if not rows:
            return written
        if after == 0 and rows[0][0] > 1:
            _joined(store, key, rows[0][1])
        target = _target(logs_dir, end, time.time() if now is None else now)
        _append(target, [text for _, text in rows])
        failpoints.hit("trail_after_append")
        written += len(rows)
        after = rows[-1][0]
        last = parse(rows[-1][1])
        digest = str(last["hash"]) if isinstance(last, dict) else ""
        end = End(after, digest, target)
        store.trail.set_home(key, after, digest)


def _following(lines: list[Sealed], after: int) -> list[tuple[int, str]]:
    """The lines of `lines` that follow on from seq `after` without a gap."""
    start = next((i for i, ln in enumerate(lines) if ln.seq == after + 1), None)
    if start is None:
        return []
    out: list[tuple[int, str]] = []
    for ln in lines[start : start + BATCH]:
        if ln.seq != after + 1 + len(out):
            break
        out.append((ln.seq, ln.line))
    return out


class Flusher:
    """flush() for a long-running process (a worker, the monitor): a failure is
    logged once, when it first happens and when it clears, and never raised (the
    events wait in the database for the next flush, lost by none)."""

    def __init__(self, store: Store, logs_dir: Path, log: Any) -> None:
        self.store, self.logs_dir, self.log = store, logs_dir, log
        self._failing: str | None = None
        self._busy_since: float | None = None

    def __call__(self, wait: float = 0.0) -> int:
        """A flush; `wait`: how long to try for the lock (0 between jobs: another
        process of the home holds it while it writes, or is stopped holding it; a
        stopping process tries a little longer, STOP_WAIT, as nobody may come after
        it to seal its last events)."""
        try:
            n = flush(self.store, self.logs_dir, wait=wait)
        except TrailBusy as exc:
            now = time.monotonic()
            if self._busy_since is None:
                self._busy_since = now
            elif now - self._busy_since >= BUSY_WARNING and self._failing is None:
                self.log.warning("audit_trail_not_written", error=str(exc))
                self._failing = "busy"
            return 0
        except Exception as exc:  # the events wait in the database: never stop the process
            error = f"{type(exc).__name__}: {exc}"
            if error != self._failing:
                self.log.warning("audit_trail_not_written", error=error)
            self._failing = error
            return 0
        self._busy_since = None
        if self._failing is not None:
            self.log.info("audit_trail_written_again")
            self._failing = None
        return n
