"""Chaos scenarios on the SQLite database file itself: the file replaced under
running supervisord (by a copy of itself, made while every queuectl process was
stopped, so the copy is exactly what they had committed).  Every worker and the
monitor notice that the path names another file, stop (exit 5), and supervisord's
restarts carry on with the new file; the checker's invariants hold across the swap.

PostgreSQL has no file to lose (the server owns it): these run on SQLite only.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import apsw

from tests.chaos.harness import Cluster, FaultLog, Workload, wait_until
from tests.chaos.scenarios import Result, _finish, _settle


def _queuectl_pids(c: Cluster) -> dict[str, int]:
    """The running workers and the monitor, by supervisord name."""
    return {n: pid for n, (state, pid) in c.processes().items() if state == "RUNNING" and pid}


def _copy_of(db: Path, dest: Path) -> None:
    """A consistent copy of `db` (its committed pages, the WAL's included) at `dest`,
    owner-only, in one file."""
    dest.unlink(missing_ok=True)
    fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    src = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    out = apsw.Connection(str(dest))
    try:
        with out.backup("main", src, "main") as b:
            b.step()
    finally:
        out.close()
        src.close()


def database_replaced(c: Cluster, *, jobs: int = 60, workers: int = 2, swaps: int = 2) -> Result:
    """Mid-drain, `swaps` times: SIGSTOP every worker and the monitor, replace the
    database file by a copy of itself (os.replace: a new inode at the path), SIGCONT.
    Each stopped process finds the path names another file at its next claim,
    record, heartbeat or pass, and exits 5 (a running job is killed: the new file
    still says processing, and the new monitor recovers it as worker_died)."""
    assert c.is_sqlite
    c.fast()
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, sleep=(0.05, 0.4), fail_every=20))
    started = time.monotonic()
    c.start(workers)
    log = FaultLog()
    db = Path(c.db_url)
    for n in range(swaps):
        target = (n + 1) * jobs // (swaps + 1)
        wait_until(lambda t=target: c.counts()["completed"] >= t, 120, f"{target} jobs done")
        # Our own connection must not open the new file before every old process
        # has gone (it would find their WAL at the path): closed now, opened after.
        c.store.close()
        c._store = None
        before = _queuectl_pids(c)
        assert len(before) == workers + 1, before
        for pid in before.values():
            os.kill(pid, signal.SIGSTOP)
        try:
            _copy_of(db, db.with_name("incoming.db"))
            os.replace(db.with_name("incoming.db"), db)
            log.other.append(time.time())
        finally:
            for pid in before.values():
                os.kill(pid, signal.SIGCONT)
        gone = set(before.values())
        wait_until(
            lambda g=gone: not g & {p for p in _queuectl_pids(c).values()} and _all_dead(g),
            60,
            "every old process to exit",
        )
        wait_until(lambda: len(_queuectl_pids(c)) == workers + 1, 60, "supervisord's restarts")
    _settle(c, 120)
    return _finish(c, w, "database file replaced under running processes", log, started)


def _all_dead(pids: set[int]) -> bool:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if data[data.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X"):
            return False
    return True
