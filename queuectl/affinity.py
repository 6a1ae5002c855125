"""CPU placement of workers and their jobs (config `cpu_affinity=auto`).

A worker keeps to one CPU, so the shell it spawns starts there (posix_spawn has no
affinity attribute: the child inherits the worker's mask) while the worker blocks on
it, instead of on the other CPU behind the other worker.  The shell is then allowed
on every CPU the worker was (`widen_one`, and `widen` for its tree).  Which CPU a
worker takes is decided by lock files in the home's run/ folder (`take_cpu`):
race-free between workers that start together, and released by the kernel when a
worker dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

#: Workers per CPU that take a lock of their own; beyond that, they share the last.
MAX_SLOTS = 64


class CpuSlot:
    """The lock a worker holds on (cpu, slot) for as long as it runs."""

    def __init__(self, cpu: int, fd: int) -> None:
        self.cpu = cpu
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def take_cpu(lock_dir: Path, cpus: list[int]) -> CpuSlot | None:
    """Lock the first free (slot, CPU) in the order slot 0 of every CPU, then slot 1 of
    every CPU, ...: N workers on one host spread over the CPUs one each, then two each.
    None if the folder cannot hold the locks (read-only home: the worker stays free)."""
    try:
        lock_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    for slot in range(MAX_SLOTS):
        for cpu in cpus:
            try:
                fd = os.open(
                    lock_dir / f"cpu-{cpu}.{slot}.lock",
                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                    0o600,
                )
            except OSError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by another worker
                os.close(fd)
                continue
            return CpuSlot(cpu, fd)
    return None


def widen_one(pid: int, cpus: frozenset[int]) -> bool:
    """Allow the single thread `pid` (a process right after its exec has no other) to
    run on `cpus`; False if it has exited.  What it forks from now on inherits the wide
    mask, so that a daemon the job detaches at once (`setsid -f`, a double fork), which
    no later walk of the job's tree finds, is not left on the worker's CPU for good."""
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return False
    return True


def widen(pid: int, cpus: frozenset[int]) -> int:
    """Allow `pid` and every descendant it has now, every thread of each, to run on
    `cpus`; return how many threads were widened.

    Each thread is widened first and its children are listed after: a child forked
    after the widening inherits the wide mask, and one forked before is in the list,
    so none is missed, except a fork still in flight (its child copied the mask but is
    not listed yet) and an orphan re-parented away in that instant.
    """
    todo = [pid]
    widened = 0
    while todo:
        p = todo.pop()
        for tid in _threads(p):
            if not widen_one(tid, cpus):  # exited already
                continue
            widened += 1
            todo.extend(_children(p, tid))
    return widened


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # exited, or no /proc: the process itself is all we can reach
        return [pid]


def _children(pid: int, tid: int) -> list[int]:
    # os.open/os.read, not open(): a buffered file costs an fstat, an isatty ioctl and
    # two lseeks more, in every walk.
    try:
        fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    except OSError:
        return []
    finally:
        os.close(fd)
    return [int(c) for c in data.split()]
