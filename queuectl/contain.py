"""Nothing a job starts outlives its attempt: a worker process contains its jobs.

A worker is the child subreaper of its jobs (PR_SET_CHILD_SUBREAPER): whatever a
job leaves behind when its shell exits (a background child, a `setsid -f` daemon, a
double fork) is re-parented to the worker, however it scrubbed its environment or
left its session.  When an attempt ends, whether it succeeded, failed, timed out
or was stopped, its shell is reaped and the worker kills every child it still has
(it runs one job at a time and starts nothing else, so each is what the attempt
left) and reaps them, until it has no child left.

Where the machine delegates a cgroup v2 subtree to the worker (its own cgroup can
have children it may write), the worker also has a job cgroup: each attempt's tree
is moved into it shortly after its start, the cgroup is labelled with the attempt,
and killed whole with `cgroup.kill` at the attempt's end; after a worker was
SIGKILLed, a monitor finds by that label whatever of its job is left in it.

Only `queuectl worker run` makes its process a container (start() + install()):
a library caller's process (tests, embedding programs) may have children of its
own that are none of a job's business.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from pathlib import Path

#: prctl(2) option: orphaned descendants are re-parented to this process.
PR_SET_CHILD_SUBREAPER = 36
#: The name every worker's job cgroup starts with (then the worker's id).
CGROUP_PREFIX = "queuectl."
#: The extended attribute of a job cgroup that names the attempt running in it (the
#: text of executor.OutputFiles' stdin marker): procs reads it for a process that
#: shows nothing else.
LABEL = "user.queuectl"
#: At most this many walks of an attempt's tree move it into its cgroup.
ADOPT_WALKS = 8
#: The longest a worker waits for what it killed at an attempt's end to exit (a
#: process in uninterruptible sleep takes its time; SIGKILL is never lost).
REAP_TIMEOUT = 5.0


def set_subreaper() -> bool:
    """Make this process the child subreaper of its descendants; False if the
    kernel refused (or this is not Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted in this mount namespace."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        return None
    return None


def cgroup_home() -> Path | None:
    """This process's cgroup v2 folder, if this process may make cgroups under it
    (a delegated subtree, or root on a cgroup v2 mount) and kill them whole."""
    mount = cgroup2_mount()
    if mount is None:
        return None
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
            own = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    if own is None or own.endswith(" (deleted)"):
        return None
    home = Path(mount) / own.lstrip("/")
    if not (home / "cgroup.procs").exists() or not os.access(home, os.W_OK):
        return None
    if not os.access(home / "cgroup.procs", os.W_OK):
        return None
    return home


class Cgroup:
    """One worker's job cgroup, a child of the worker's own.  The worker itself never
    enters it (cgroup.kill would kill it too): an attempt's processes are moved in,
    the whole tree of them, FIRST_TICK after its start (executor.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        mount = cgroup2_mount()
        #: What /proc/<pid>/cgroup names this cgroup by (its path under the mount).
        self.name = "/" + str(path.relative_to(mount)) if mount else ""
        self._procs = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        try:
            self._events = os.open(path / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self._procs)
            raise

    @classmethod
    def make(cls, home: Path, worker_id: str) -> Cgroup | None:
        sweep(home)
        path = home / f"{CGROUP_PREFIX}{_safe(worker_id)}"
        try:
            path.mkdir(mode=0o755)
        except FileExistsError:
            pass  # a worker of the same id: its pid was reused after it died
        except OSError:
            return None
        if not (path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        try:
            return cls(path)
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None

    def label(self, text: bytes) -> None:
        with contextlib.suppress(OSError):  # no user xattrs on cgroupfs before Linux 5.7
            os.setxattr(self.path, LABEL, text)

    def holds(self, pid: int) -> bool:
        """Whether process `pid` is in this cgroup (a gone one counts as held)."""
        try:
            with open(f"/proc/{pid}/cgroup", "rb") as f:
                for line in f:
                    if line.startswith(b"0::"):
                        return line[3:].strip().decode("utf-8", "replace") == self.name
        except OSError:
            return True
        return True

    def move(self, pid: int) -> None:
        with contextlib.suppress(OSError):  # gone, or a zombie
            os.write(self._procs, str(pid).encode())

    def populated(self) -> bool:
        return b"populated 1" in os.pread(self._events, 256, 0)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            (self.path / "cgroup.kill").write_text("1")

    def close(self) -> None:
        for fd in (self._procs, self._events):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.path.rmdir()  # refused while a process is still in it


def sweep(home: Path) -> None:
    """Remove the job cgroups of workers that are gone (a SIGKILLed worker leaves
    its own behind): only those whose name holds a worker id (`host-pid-hex`,
    worker.new_worker_id) whose pid runs no more.  A cgroup that still holds a
    process is refused by rmdir."""
    try:
        names = [d.name for d in home.iterdir() if d.name.startswith(CGROUP_PREFIX)]
    except OSError:
        return
    for name in names:
        parts = name.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit() or os.path.exists(f"/proc/{parts[1]}"):
            continue
        with contextlib.suppress(OSError):
            (home / name).rmdir()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:200]


class Containment:
    """What one worker process does to contain each of its jobs' attempts."""

    def __init__(self, *, subreaper: bool, cgroup: Cgroup | None) -> None:
        self.subreaper = subreaper
        self.cgroup = cgroup
        self._shell = 0
        self._label = b""
        self._adopted = False

    @classmethod
    def start(cls, worker_id: str, *, cgroup: bool, subreaper: bool = True) -> Containment:
        """Become the subreaper (unless told not to: it is for good, for this whole
        process) and, with `cgroup` and where the machine allows it, make the
        worker's job cgroup."""
        home = cgroup_home() if cgroup else None
        group = Cgroup.make(home, worker_id) if home is not None else None
        return cls(subreaper=subreaper and set_subreaper(), cgroup=group)

    @property
    def mode(self) -> str:
        if self.cgroup is not None:
            return "cgroup"
        return "subreaper" if self.subreaper else "group"

    def start_attempt(self, shell: int, label: bytes) -> None:
        """An attempt started: its shell, and the text that names it."""
        self._shell, self._label, self._adopted = shell, label, False

    def tick(self) -> None:
        """While the attempt runs (executor: FIRST_TICK after its start, then every
        check interval): label the job cgroup and move the attempt's processes into
        it, and reap what it left that has exited since.  Every tick moves what is
        not in the cgroup yet: a walk of /proc can miss a process in flight (forked
        during the walk, or re-parented to this worker between two reads of it), and
        such a process and what it forks would otherwise stay outside for good."""
        if self.cgroup is not None:
            if not self._adopted:
                self._adopted = True
                self.cgroup.label(self._label)
            adopt(self.cgroup)
        self.reap_exited()

    def reap_exited(self) -> None:
        """Reap what the running attempt left that has exited (it is this worker's
        child), but not its shell, whose exit ends the executor's wait."""
        if not self.subreaper:
            return
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == self._shell:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, 0)

    def end_attempt(self) -> bool:
        """Kill and reap every process left of the attempt that just ended (its shell
        already reaped).  True if none is left (so nothing of it holds its
        descriptors any more)."""
        if self.cgroup is not None and self._adopted:
            try:
                if self.cgroup.populated():
                    self.cgroup.kill()
            except OSError:  # removed under this worker: go on with the subreaper alone
                self.cgroup.close()
                self.cgroup = None
        self._adopted = False
        if not self.subreaper:
            return False
        return reap_all(time.monotonic() + REAP_TIMEOUT)

    def close(self) -> None:
        if self.cgroup is not None:
            self.end_attempt()
            self.cgroup.close()
            self.cgroup = None


def children(pid: int | None = None) -> list[int]:
    """The live children (of any thread) of process `pid` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(p) for p in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def reap_all(deadline: float) -> bool:
    """SIGKILL every child of this process and reap them, and then what they leave
    (re-parented here in turn), until none is left (True) or `deadline` (monotonic)
    passes (False)."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return True  # no child at all: the common case, one system call
        if info is not None:
            continue  # reaped one that had exited
        for pid in children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            return False
        # Wait for the next exit (or a child re-parented in the meantime).
        with contextlib.suppress(ChildProcessError):
            _wait_any(min(0.05, max(0.0, deadline - time.monotonic())))


def descendants() -> list[int]:
    """Every live descendant of this process, parents before their children."""
    found = children()
    i = 0
    while i < len(found):
        found.extend(children(found[i]))
        i += 1
    return found


def adopt(group: Cgroup) -> None:
    """Move every descendant of this worker (all of them its current attempt's)
    that is not in `group` yet into it.  What they fork from then on starts there;
    a walk finds what forked during the one before, until one finds nothing to
    move."""
    for _ in range(ADOPT_WALKS):
        outside = [pid for pid in descendants() if not group.holds(pid)]
        if not outside:
            return
        for pid in outside:
            group.move(pid)


def _wait_any(timeout: float) -> None:
    """Block up to `timeout` seconds until some child can be reaped."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return
        select.select([], [], [], 0.002)


_active: Containment | None = None


def install(box: Containment) -> None:
    """Make `box` the containment every job this process runs gets."""
    global _active
    _active = box


def active() -> Containment | None:
    return _active


def uninstall() -> None:
    global _active
    box, _active = _active, None
    if box is not None:
        box.close()
