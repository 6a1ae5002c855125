"""Run one shell command in its own session and report how it ended.

The job gets a new session (so its whole tree is one process group the worker can
kill, and a Ctrl+C or supervisord's stop signal reaches the worker, not the job),
an empty stdin that names the attempt, and files of its own for stdout and stderr
(pipes would deadlock on large output).
The wait is a pidfd in select(): one thread, an exact wake-up when the job exits,
and a tick every `tick_interval` seconds for heartbeats.  Knows nothing of the store.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from queuectl import contain
from queuectl.affinity import widen, widen_one
from queuectl.models import Outcome
from queuectl.procs import proc_start
from queuectl.settings import SETTINGS

#: The variables of a job's environment its stdin marker repeats (procs.job_processes).
MARKED = ("QUEUECTL_JOB_ID", "QUEUECTL_LEASE", "QUEUECTL_ATTEMPT", "QUEUECTL_QUEUE")
#: The name of every attempt's stdin marker (`/memfd:<name> (deleted)` in /proc).
MARKER_NAME = "queuectl-attempt"
#: The marker's text stays below this offset, where the job's stdin starts: the job
#: reads an empty stdin.
MARKER_SIZE = 4096


class OutputFiles:
    """The descriptors of one attempt: its stdout and stderr (memfds), and its stdin,
    an empty read-only memfd whose text, past the job's reach, names the attempt:
    the QUEUECTL_* variables of its environment, its session id (its shell's pid)
    and, once it has run a moment, its shell's start time.  A process that scrubs its
    environment (`env -i`) keeps the descriptor, so procs finds it by that.

    No process left by one attempt may write into another's output, so an attempt
    gets descriptors no process of an earlier one holds: new ones, unless the caller
    knows that no process of the last attempt is left (`reusable`: a worker that
    contains its jobs, contain.py, after it reaped them all); then the same ones,
    emptied.  Only the last `limit` bytes of each output are kept (trim()) and read
    back."""

    def __init__(self) -> None:
        self.out = self.err = self.null = self._marker = -1
        self._marker_end = 0
        self._started = False
        #: Whether the outputs may hold something: only tails() clears it, having found
        #: both empty (most jobs print nothing: nothing to truncate for the next).
        self._dirty = True
        #: Whether the next attempt may have these descriptors (see above).
        self.reusable = False
        #: What names the attempt (also the label of a job cgroup, contain.py).
        self.label = b""

    def open(self, env: Mapping[str, str]) -> None:
        self._started = False
        self.label = "".join(f"{k}={env[k]}\0" for k in MARKED if k in env).encode()[: MARKER_SIZE // 2]
        self._marker_end = len(self.label)
        if self.reusable and self._marker >= 0:
            self.reusable = False
            if self._dirty:
                for fd in (self.out, self.err):
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
            self._dirty = True
            os.ftruncate(self._marker, 0)
            os.pwrite(self._marker, self.label, 0)
            os.lseek(self.null, MARKER_SIZE, os.SEEK_SET)  # the last job may have moved it
            return
        self.close()
        self.out = os.memfd_create("queuectl-out", os.MFD_CLOEXEC)
        self.err = os.memfd_create("queuectl-err", os.MFD_CLOEXEC)
        self._dirty = True
        self._marker = os.memfd_create(MARKER_NAME, os.MFD_CLOEXEC)
        os.pwrite(self._marker, self.label, 0)
        #: The job's stdin: the same memfd, read-only, at an offset past its text.
        self.null = os.open(f"/proc/self/fd/{self._marker}", os.O_RDONLY | os.O_CLOEXEC)
        os.lseek(self.null, MARKER_SIZE, os.SEEK_SET)

    def mark(self, text: str) -> None:
        """Add `text` (NAME=value pairs, NUL-terminated) to the marker."""
        data = text.encode()
        os.pwrite(self._marker, data, self._marker_end)
        self._marker_end += len(data)

    def tick(self, pid: int, limit: int) -> None:
        """While the attempt runs, at each tick: the first time, add its shell's
        start time to the marker (a job that ends sooner, as most do, costs no read of
        /proc); every time, trim its output."""
        if not self._started:
            self._started = True
            self.mark(f"QUEUECTL_SID_START={proc_start(pid)}\0")
        self.trim(limit)

    def trim(self, limit: int) -> None:
        """Give back the memory of what lies before the last `limit` bytes of each
        output, once there is at least TRIM_SLACK of it (the file keeps its size:
        the job's writes go on at its offset)."""
        for fd in (self.out, self.err):
            size = os.fstat(fd).st_size
            drop = (size - max(limit, 0)) // _PAGE * _PAGE
            if drop >= TRIM_SLACK:
                _punch_hole(fd, drop)

    def sizes(self) -> tuple[int, int]:
        """How many bytes the attempt has written to stdout and to stderr so far (a
        trimmed file keeps its size): two fstat calls, no read."""
        return os.fstat(self.out).st_size, os.fstat(self.err).st_size

    def peek(self, limit: int) -> tuple[str, str]:
        """The last `limit` bytes of each output, read while the attempt runs."""
        return _tail(self.out, limit)[0], _tail(self.err, limit)[0]

    def tails(self, limit: int) -> tuple[str, str]:
        out, out_size = _tail(self.out, limit)
        err, err_size = _tail(self.err, limit)
        self._dirty = bool(out_size or err_size)
        return out, err

    def close(self) -> None:
        self.reusable = False
        for name in ("out", "err", "null", "_marker"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)


#: Output before the kept tail is given back in pieces of at least this many bytes.
TRIM_SLACK = 1 << 20
_PAGE = 4096
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_fallocate: Any = None


def _punch_hole(fd: int, length: int) -> None:
    """Free [0, length) of a memfd; it reads as zeros afterwards."""
    global _fallocate
    if _fallocate is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _fallocate = libc.fallocate
        _fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, length)


def _tail(fd: int, limit: int) -> tuple[str, int]:
    """The last `limit` bytes of the file as text, and the file's size."""
    size = os.fstat(fd).st_size
    if size == 0 or limit <= 0:
        return "", size
    n = min(size, limit)
    data = os.pread(fd, n, size - n)
    return data.decode("utf-8", errors="replace"), size


#: Seconds after a job's start at which its whole tree (every thread of every process)
#: is walked and allowed onto every CPU of `Command.cpus`.  Right after the spawn only the
#: shell is widened (one system call), so what it forks inherits the wide mask; the
#: walks find what it forked before that, and threads.  A job that ends before the
#: first walk (the `true`s and `echo`s of a busy queue) costs no walk of /proc.  The
#: second finds what the first could not (a fork in flight: its child has the narrow
#: mask but is not listed yet).
WIDEN_AFTER = (0.005, 0.25)
#: Seconds after a job's start at which it is first looked after (its start time
#: recorded, its tree moved into the worker's job cgroup): a job that ends sooner,
#: as most do, costs none of it.
FIRST_TICK = 0.005
#: The least time between two walks.
_WALK_GAP = 0.005


@dataclass(frozen=True)
class Command:
    """What to run for one attempt: a shell command line, its time limit and its
    environment (a models.Job's attempt, as the worker hands it over)."""

    command: str
    timeout: float
    env: Mapping[str, str]
    kill_grace: float = SETTINGS["kill_grace"].default
    #: Bytes (the setting is in KiB).
    output_limit: int = SETTINGS["output_limit"].default * 1024
    #: The CPUs the job may use, when the worker keeps itself to one (cpu_affinity).
    cpus: frozenset[int] | None = None
    #: The directory the shell starts in (None: the worker's own).
    cwd: str | None = None


#: Signals the child gets back at their defaults: Python ignores SIGPIPE and SIGXFSZ,
#: and the worker handles SIGTERM/SIGINT (an ignored signal would stay ignored).
_DEFAULT_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
)


class _Child:
    """A job's shell, started with posix_spawn in a session of its own.

    posix_spawn (vfork + exec in glibc) does what `subprocess.Popen(start_new_session=
    True, stdin=DEVNULL, close_fds=True)` does here at a fraction of the Python work
    per job: every descriptor queuectl opens is close-on-exec already (PEP 446;
    SQLite and libpq set it too), so only stdin/stdout/stderr reach the job.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    @classmethod
    def spawn(cls, command: str, env: Mapping[str, str], files: OutputFiles) -> _Child:
        pid = os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", "-c", command],
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, files.null, 0),
                (os.POSIX_SPAWN_DUP2, files.out, 1),
                (os.POSIX_SPAWN_DUP2, files.err, 2),
            ],
            setsid=True,
            setsigdef=_DEFAULT_SIGNALS,
            setsigmask=(),
        )
        return cls(pid)

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False if it is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def run(
    cmd: Command,
    files: OutputFiles,
    *,
    check: Callable[[], str | None] | None = None,
    check_interval: float = 0.5,
    wakeup_fd: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_exit: Callable[[], object] | None = None,
) -> Outcome:
    """Run `cmd.command` with /bin/sh -c and wait for it.

    `check()` is called every `check_interval` seconds while the job runs and
    whenever `wakeup_fd` becomes readable (a signal arrived); a non-None answer is
    the error to record, and the job's group is killed at once.  A timeout sends
    SIGTERM to the group, then SIGKILL after `cmd.kill_grace` seconds.
    `on_start(pid)` is called once the shell (the group's leader) runs, `on_exit()`
    once the wait is over, before the group is killed and reaped.
    """
    box = contain.active()
    try:
        back = _enter(cmd.cwd)
    except _NoDirectory as exc:
        return Outcome(exit_code=None, error=str(exc))
    try:
        proc = _start(cmd, files, box)
    except OSError as exc:
        files.close()
        return Outcome(exit_code=None, error=f"cannot start /bin/sh: {exc.strerror or exc}")
    finally:
        if back >= 0:
            os.fchdir(back)
    if cmd.cpus is not None:
        # Started on the worker's CPU (posix_spawn has no affinity attribute).
        widen_one(proc.pid, cmd.cpus)
    if on_start is not None:
        on_start(proc.pid)
    error: str | None = None
    timed_out = False
    try:
        error, timed_out = _wait(
            proc, cmd, lambda: _tick(proc, cmd, files, box), check, check_interval, wakeup_fd
        )
    finally:
        if on_exit is not None:
            on_exit()
        # The job is over once its shell exits: anything it left in its session
        # (background children, daemons) would outlive the attempt, so it goes too,
        # and so does what left the session (the containment of a worker process).
        kill_group(proc.pid, signal.SIGKILL)
        stdout, stderr = _end(proc, files, box, cmd.output_limit)
    code = proc.wait()
    exit_code: int | None
    if code < 0:
        exit_code = 128 - code
        if error is None:
            error = f"killed by signal {_signame(-code)}"
    else:
        exit_code = code
        if error is None and code != 0:
            error = f"exited with code {code}{_HINTS.get(code, '')}"
    return Outcome(exit_code=exit_code, error=error, stdout=stdout, stderr=stderr, timed_out=timed_out)


class _NoDirectory(Exception):
    """The attempt's directory cannot be entered: the attempt fails before it starts."""


_REASONS = {errno.ENOENT: "no such directory", errno.ENOTDIR: "not a directory"}
#: The worker's own directory, held open so that it is found again after a job's
#: spawn even if its path was removed or renamed meanwhile.
_home_fd = -1


def _enter(path: str | None) -> int:
    """Enter `path` for the spawn (posix_spawn has no directory attribute, and the
    child inherits the caller's) and return the descriptor of the worker's own
    directory to go back to with fchdir, or -1 when `path` is None (nothing
    entered).  The worker runs one attempt at a time and nothing else of it uses
    relative paths, so the change is seen by no one else.  Plain calls, not a
    context manager: this runs once per job on the drain's path."""
    global _home_fd
    if path is None:
        return -1
    if _home_fd < 0:
        _home_fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(path)
    except OSError as exc:
        reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
        raise _NoDirectory(f"cannot run in {path}: {reason}") from None
    return _home_fd


def _start(cmd: Command, files: OutputFiles, box: contain.Containment | None) -> _Child:
    files.open(cmd.env)
    proc = _Child.spawn(cmd.command, cmd.env, files)
    files.mark(f"QUEUECTL_SID={proc.pid}\0")
    if box is not None:
        box.start_attempt(proc.pid, files.label)
    return proc


def _tick(proc: _Child, cmd: Command, files: OutputFiles, box: contain.Containment | None) -> None:
    """While the attempt runs: FIRST_TICK after its start, then every check interval."""
    files.tick(proc.pid, cmd.output_limit)
    if box is not None:
        box.tick()


def _end(proc: _Child, files: OutputFiles, box: contain.Containment | None, limit: int) -> tuple[str, str]:
    """Reap the shell (its group killed), kill and reap what it left, and read the
    attempt's output; its descriptors are closed unless no process of it is left."""
    clean = False
    try:
        if proc.returncode is None:
            proc.wait()
        clean = box is not None and box.end_attempt()
        return files.tails(limit)
    finally:
        if clean:
            files.reusable = True
        else:
            files.close()


_HINTS = {126: " (command not executable)", 127: " (command not found)"}


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _wait(
    proc: _Child,
    cmd: Command,
    tick: Callable[[], None],
    check: Callable[[], str | None] | None,
    check_interval: float,
    wakeup_fd: int | None,
) -> tuple[str | None, bool]:
    """Wait for proc; returns (error, timed_out)."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        start = time.monotonic()
        next_tick = start + min(check_interval, FIRST_TICK)
        # Each timer below is None once it has nothing left to do: no check once the
        # job is being killed; SIGTERM at the timeout, then SIGKILL kill_grace later.
        next_check: float | None = start + check_interval if check is not None else None
        term_at: float | None = start + cmd.timeout
        kill_at: float | None = None
        error: str | None = None
        timed_out = False
        # When the job's tree is walked onto every CPU the worker was (cmd.cpus): never,
        # if the job ends before the first walk (most do).
        widen_at = [start + after for after in WIDEN_AFTER] if cmd.cpus is not None else []
        fds = [pidfd] if wakeup_fd is None else [pidfd, wakeup_fd]
        while True:
            now = time.monotonic()
            wake = min([next_tick, *widen_at, *(t for t in (next_check, term_at, kill_at) if t is not None)])
            ready, _, _ = select.select(fds, [], [], max(0.0, wake - now))
            if pidfd in ready:
                proc.wait()
                return error, timed_out
            now = time.monotonic()
            widen_at = _widen_when_due(proc, cmd, widen_at, now)
            if now >= next_tick:
                next_tick = now + check_interval
                tick()
            woken = wakeup_fd is not None and wakeup_fd in ready
            if woken:
                _drain(wakeup_fd)  # type: ignore[arg-type]
            if check is not None and next_check is not None and (woken or now >= next_check):
                next_check = now + check_interval
                error = check()
                if error is not None:
                    kill_group(proc.pid, signal.SIGKILL)
                    # Nothing left to do but wait for the exit (and tick).
                    next_check = term_at = kill_at = None
                    widen_at = []
            if term_at is not None and now >= term_at:
                timed_out = True
                error = f"timeout after {cmd.timeout:g}s"
                kill_group(proc.pid, signal.SIGTERM)
                term_at, kill_at, next_check = None, now + cmd.kill_grace, None
                widen_at = []  # the group is being killed: nothing left to widen
            elif kill_at is not None and now >= kill_at:
                kill_group(proc.pid, signal.SIGKILL)
                kill_at = None
    finally:
        os.close(pidfd)


def _widen_when_due(proc: _Child, cmd: Command, widen_at: list[float], now: float) -> list[float]:
    """Walk the job's tree onto its CPUs if the next walk is due; the walks left."""
    if not widen_at or now < widen_at[0]:
        return widen_at
    widen(proc.pid, cmd.cpus)  # type: ignore[arg-type]
    # After a late wake-up the next walk still comes a while after this one: it is
    # there for what was in flight during this one.
    return [max(t, now + _WALK_GAP) for t in widen_at[1:]]


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(fd, 512):
            pass
