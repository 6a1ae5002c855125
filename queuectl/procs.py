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


#: What /proc/<pid>/fd/0 reads for a job's stdin marker (executor.MARKER_NAME).
_MARKER_LINK = "/memfd:queuectl-attempt"
#: The name of a worker's job cgroup starts with this (contain.CGROUP_PREFIX).
_CGROUP_PREFIX = "queuectl."


@dataclass
class _Seen:
    """One process as /proc shows it, and what it says of its attempt (if anything)."""

    pid: int
    pgid: int
    sid: int
    start: int
    cgroup: str | None
    #: The QUEUECTL_* variables of its environment, or of its stdin marker.
    values: dict[bytes, bytes] | None


def job_processes(queue: str) -> list[JobProcess]:
    """Every process on this host that runs (part of) a job of `queue`: found by the
    QUEUECTL_* variables the worker put in its environment, or by its stdin marker
    (executor.OutputFiles: an `env -i` keeps the descriptor), and then, for a process
    that shows neither, by the session of its attempt (its shell's, recorded in the
    marker; or one a process of the attempt made) or by its worker's job cgroup
    (contain.py), whose label names the attempt that last ran in it."""
    seen = [p for p in map(_look, _pids()) if p is not None]
    by_sid: dict[int, dict[bytes, bytes]] = {}
    labels: dict[str, dict[bytes, bytes]] = {}
    pids = {p.pid: p for p in seen}
    for p in seen:
        if p.values is None or p.values.get(b"QUEUECTL_QUEUE", b"").decode() != queue:
            continue
        if p.sid == p.pid:  # a session a process of the attempt made
            by_sid.setdefault(p.sid, p.values)
        sid = _int(p.values.get(b"QUEUECTL_SID"))
        if sid is not None and _attempts_session(p.values, pids.get(sid)):
            by_sid.setdefault(sid, p.values)
    found = []
    for p in seen:
        values = p.values
        if values is None:
            values = by_sid.get(p.sid) or (_cgroup_values(p.cgroup, labels) if p.cgroup else None)
            if values is not None and p.start < (_int(values.get(b"QUEUECTL_SID_START")) or 0):
                values = None  # older than the attempt: not one of its processes
        if values is not None and values.get(b"QUEUECTL_QUEUE", b"").decode() == queue:
            found.append(_job_process(p, values, queue))
    return found


def _pids() -> list[int]:
    me = os.getpid()
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != me]


def _look(pid: int) -> _Seen | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2 :].split()
        pgid, sid, start = int(fields[2]), int(fields[3]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return _Seen(pid, pgid, sid, start, _job_cgroup(pid), _environ_values(pid) or _marker_values(pid))


def _environ_values(pid: int) -> dict[bytes, bytes] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    if b"QUEUECTL_JOB_ID=" not in env:
        return None
    values = _parse(env)
    marker = _marker_values(pid)
    if marker is not None and marker.get(b"QUEUECTL_JOB_ID") == values.get(b"QUEUECTL_JOB_ID"):
        values.update(marker)  # the attempt's session
    return values


def _marker_values(pid: int) -> dict[bytes, bytes] | None:
    try:
        if not os.readlink(f"/proc/{pid}/fd/0").startswith(_MARKER_LINK):
            return None
        with open(f"/proc/{pid}/fd/0", "rb") as f:
            text = f.read(4096)
    except OSError:
        return None
    values = _parse(text)
    return values if b"QUEUECTL_JOB_ID" in values else None


def _job_cgroup(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            for line in f:
                if line.startswith(b"0::"):
                    path = line[3:].strip().decode("utf-8", "replace")
                    return path if path.rsplit("/", 1)[-1].startswith(_CGROUP_PREFIX) else None
    except OSError:
        return None
    return None


def _cgroup_values(path: str, labels: dict[str, dict[bytes, bytes]]) -> dict[bytes, bytes] | None:
    """The attempt a job cgroup's label names (contain.LABEL), read once per pass."""
    if path not in labels:
        from queuectl import contain

        mount = contain.cgroup2_mount()
        try:
            label = os.getxattr(f"{mount}/{path.lstrip('/')}", contain.LABEL) if mount else b""
        except OSError:
            label = b""
        labels[path] = _parse(label)
    values = labels[path]
    return values if b"QUEUECTL_JOB_ID" in values else None


def _parse(data: bytes) -> dict[bytes, bytes]:
    return dict(item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)


def _int(text: bytes | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _attempts_session(values: dict[bytes, bytes], leader: _Seen | None) -> bool:
    """Whether the session the marker `values` names (its shell's pid) is still the
    attempt's: while its leader runs, if that is the same process (by the start time
    the marker holds, or, before it holds one, by the leader's own marker); once the
    leader is gone, always: a pid stays taken while its session has members."""
    if leader is None:
        return True
    start = _int(values.get(b"QUEUECTL_SID_START"))
    if start is not None:
        return leader.start == start
    mine = (b"QUEUECTL_JOB_ID", b"QUEUECTL_LEASE")
    return leader.values is not None and all(leader.values.get(k) == values.get(k) for k in mine)


def _job_process(p: _Seen, values: dict[bytes, bytes], queue: str) -> JobProcess:
    lease_text = values.get(b"QUEUECTL_LEASE", b"")
    attempt_text = values.get(b"QUEUECTL_ATTEMPT", b"")
    return JobProcess(
        pid=p.pid,
        pgid=p.pgid,
        job_id=values.get(b"QUEUECTL_JOB_ID", b"").decode("utf-8", "replace"),
        lease=int(lease_text) if lease_text.isdigit() else None,
        queue=queue,
        attempt=int(attempt_text) if attempt_text.isdigit() else None,
    )


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
