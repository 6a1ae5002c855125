"""What /proc tells about processes on this host: identity and job ownership."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

_HOST = os.environ.get("QUEUECTL_HOSTNAME") or socket.gethostname()


def hostname() -> str:
    """This host's name (QUEUECTL_HOSTNAME overrides it, so tests can stand for hosts)."""
    return _HOST


def proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22):
    together with the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])  # field 22 is the 20th after the name
    except (IndexError, ValueError):
        return None


def is_alive(pid: int, start: int | None) -> bool:
    """True if the process `pid` that started at `start` still runs (not a zombie)."""
    now_start = proc_start(pid)
    if now_start is None:
        return False
    if start is not None and now_start != start:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        state = data[data.rfind(b")") + 2 :].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


@dataclass(frozen=True)
class JobProcess:
    pid: int
    pgid: int
    job_id: str
    lease: int | None
    queue: str
    #: The attempt the process belongs to (QUEUECTL_ATTEMPT), which a later claim
    #: does not change.
    attempt: int | None = None


def queue_key(db_url: str) -> str:
    """A short name for one queue (its database), put in each job's environment so
    that a monitor touches only its own queue's job processes."""
    import hashlib
    import re

    # Without a password: two spellings of one PostgreSQL URL name one queue.
    bare = re.sub(r"(//[^/@:]*):[^/@]*@", r"\1@", db_url)
    return hashlib.sha256(bare.encode()).hexdigest()[:16]


def job_processes(queue: str) -> list[JobProcess]:
    """Every process on this host that runs (part of) a job of `queue`, found by the
    QUEUECTL_JOB_ID and QUEUECTL_QUEUE the worker put in its environment."""
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if b"QUEUECTL_JOB_ID=" not in env:
            continue
        values = dict(item.split(b"=", 1) for item in env.split(b"\0") if b"=" in item)
        job_id = values.get(b"QUEUECTL_JOB_ID")
        if job_id is None or values.get(b"QUEUECTL_QUEUE", b"").decode() != queue:
            continue
        lease_text = values.get(b"QUEUECTL_LEASE", b"")
        attempt_text = values.get(b"QUEUECTL_ATTEMPT", b"")
        try:
            pgid = os.getpgid(pid)
        except OSError:
            continue
        found.append(
            JobProcess(
                pid=pid,
                pgid=pgid,
                job_id=job_id.decode("utf-8", "replace"),
                lease=int(lease_text) if lease_text.isdigit() else None,
                queue=queue,
                attempt=int(attempt_text) if attempt_text.isdigit() else None,
            )
        )
    return found


def kill_job_processes(procs: list[JobProcess]) -> list[int]:
    """SIGKILL each process's group and the process itself; returns the pids hit."""
    killed = []
    for p in procs:
        hit = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if p.pgid > 1 and p.pgid != os.getpgrp():
                os.killpg(p.pgid, signal.SIGKILL)
                hit = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGKILL)
            hit = True
        if hit:
            killed.append(p.pid)
    return killed


def signal_local_workers(workers: list[Any], sig: int = signal.SIGTERM) -> list[int]:
    """Send `sig` to the registered workers that run on this host (checked by pid and
    start time, so a reused pid is never hit); returns the pids signalled."""
    hit = []
    for w in workers:
        if w.host != hostname() or not is_alive(w.pid, w.proc_start):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(w.pid, sig)
            hit.append(w.pid)
    return hit


def supervised_processes(sock: str) -> list[int]:
    """The processes on this host that the supervisord listening on the unix socket
    `sock` started (its workers and monitor), also after it died: their environment
    names its socket.  Job processes (which inherit it) are left out."""
    # As supervisord spells it: the socket path made absolute, symlinks kept.
    want = b"SUPERVISOR_SERVER_URL=unix://" + os.path.abspath(sock).encode()
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want in env and not any(item.startswith(b"QUEUECTL_JOB_ID=") for item in env):
            found.append(int(name))
    return [pid for pid in found if is_alive(pid, None)]
