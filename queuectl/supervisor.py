"""Talks to this home's supervisord: start it, scale the workers, stop it.

supervisord runs `[program:monitor]` from HOME/conf/supervisord.conf and one
`[program:workers_NN]` per worker asked for, from conf/workers.conf, which queuectl
writes (workers_conf.py).  Scaling rewrites that file, has supervisord reread it and
adds or removes the changed programs one by one (what `supervisorctl update` does), so
the workers that stay are never restarted and supervisorctl lists only the workers
meant to run.  The asked-for count is kept in run/workers.count and in workers.conf
itself, so a restarted supervisord, or a later `worker start` without --count,
restores it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queuectl import home, workers_conf
from queuectl.config import MAX_SOCKET_PATH, Paths
from queuectl.errors import InvalidInput, SupervisorError

RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF")
DOWN_STATES = ("STOPPED", "EXITED", "FATAL", "UNKNOWN")


def default_conf_dir() -> Path:
    """The configuration shipped with queuectl (package data: a home's conf/ is
    copied from it, never tracked in a repository, where a clone would give it the
    cloner's umask)."""
    here = Path(__file__).resolve().parent / "_conf"
    if (here / "supervisord.conf").is_file():
        return here
    raise SupervisorError("queuectl's default _conf/supervisord.conf is missing from the installation")


def conf_file(paths: Paths) -> Path:
    return paths.conf / "supervisord.conf"


def socket_path(paths: Paths) -> Path:
    # As the conf names it: %(here)s/../run/sv.sock
    return paths.conf / ".." / "run" / "sv.sock"


def prepare_home(paths: Paths) -> Path:
    """Create conf/ (from the defaults), run/ and logs/ as needed; return the conf file."""
    if not paths.home.is_dir():
        raise InvalidInput(f"queuectl home {paths.home} does not exist or is not a folder")
    # Before supervisord starts: it opens its logs, pid file and socket following
    # symlinks, so nothing may be planted where they go, and no one else may plant later.
    home.secure(str(paths.home), writers=True)
    sock = socket_path(paths)
    if len(str(sock)) > MAX_SOCKET_PATH:
        raise InvalidInput(
            f"home path too long for supervisord's socket ({len(str(sock))} > {MAX_SOCKET_PATH} bytes): "
            f"use a shorter --home"
        )
    for d in (paths.run, paths.logs):
        d.mkdir(mode=0o700, exist_ok=True)
    conf = conf_file(paths)
    data = (default_conf_dir() / "supervisord.conf").read_bytes()
    if not conf.is_file():
        # Owner-only whatever the umask: whoever can edit the conf runs commands as us.
        paths.conf.mkdir(mode=0o700, exist_ok=True)
        fd = home.open_private(str(conf), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    else:
        workers_conf.upgrade_legacy(conf, data)
    return conf


@dataclass(frozen=True)
class Proc:
    name: str  # e.g. workers_03
    group: str
    state: str
    pid: int
    description: str

    @property
    def full_name(self) -> str:
        return f"{self.group}:{self.name}"

    @property
    def label(self) -> str:
        """The name supervisorctl shows: a program's own group has its name alone."""
        return self.name if self.group == self.name else self.full_name

    @property
    def up(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def is_worker(self) -> bool:
        return self.group == self.name and workers_conf.is_worker(self.name)


class Supervisor:
    """One home's supervisord, reached over its unix socket."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.sock = socket_path(paths)

    def call(self, method: str, *args: Any) -> Any:
        """One XML-RPC call over the unix socket (a fresh connection, closed after)."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.sock}")
        target: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        for part in method.split("."):
            target = getattr(target, part)
        try:
            return target(*args)
        except xmlrpc.client.Fault as exc:
            raise SupervisorError(f"supervisord refused {method}: {exc.faultString}") from None
        except OSError as exc:
            raise SupervisorError(f"supervisord for {self.paths.home} is not reachable: {exc}") from None
        finally:
            transport.close()

    def is_running(self) -> bool:
        if not self.sock.exists():
            return False
        try:
            return bool(self.call("supervisor.getState")["statename"] == "RUNNING")
        except SupervisorError:
            return False

    def pid(self) -> int | None:
        try:
            return int(self.call("supervisor.getPID"))
        except SupervisorError:
            return None

    def processes(self) -> list[Proc]:
        return [
            Proc(
                name=p["name"],
                group=p["group"],
                state=p["statename"],
                pid=int(p["pid"]),
                description=p["description"],
            )
            for p in self.call("supervisor.getAllProcessInfo")
        ]

    def workers(self) -> list[Proc]:
        return sorted((p for p in self.processes() if p.is_worker), key=lambda p: p.name)

    def shortfall(self) -> str | None:
        """None when exactly the workers asked for (run/workers.count) are RUNNING under
        this supervisord; otherwise one line saying how they differ."""
        asked = self.saved_count() or 0
        if not self.is_running():
            return f"asked for {asked} worker(s), but supervisord is not running" if asked else None
        workers = self.workers()
        running = sum(p.state == "RUNNING" for p in workers)
        if running == asked == len(workers):
            return None
        others = ", ".join(f"{p.group} {p.state}" for p in workers if p.state != "RUNNING")
        return f"asked for {asked} worker(s), {running} running" + (f" ({others})" if others else "")

    # --- lifecycle -----------------------------------------------------------------

    def launch(self, *, foreground: bool, db_url: str | None, count: int) -> subprocess.Popen[bytes]:
        """Start supervisord for this home with `count` workers.  In the foreground it
        stays our child (and gets SIGTERM, a graceful shutdown, if we die); detached it
        daemonizes."""
        conf = prepare_home(self.paths)
        # Before supervisord reads it: it starts exactly these, no more.
        self.save_count(count)
        workers_conf.write(conf, count)
        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        # Named outright: with only QUEUECTL_DB set, a database at DIR/db/FILE would
        # name DIR as the home (rules.resolve_locations), not the conf's directory=.
        env["QUEUECTL_HOME"] = str(self.paths.home)
        if db_url:
            env["QUEUECTL_DB"] = db_url
        args = [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)]
        if foreground:
            args.insert(3, "-n")
        err_path = self.paths.run / "supervisord.err"
        err_fd = home.open_private(str(err_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(err_fd, "wb") as err:
            proc = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=_child_setup(foreground),
            )
        if not foreground:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.returncode != 0:
                raise SupervisorError(f"supervisord did not start: {_last_line(err_path)}")
        try:
            self.wait_ready(proc if foreground else None)
        except SupervisorError:
            if foreground and proc.poll() is None:
                proc.terminate()
            detail = _last_line(err_path)
            raise SupervisorError(f"supervisord did not start: {detail}") from None
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_running():
                return
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
        log = self.paths.logs / "supervisord.log"
        raise SupervisorError(f"supervisord did not come up within {timeout:g}s (see {log})")

    def scale(self, count: int, *, wait: float = 30.0) -> tuple[list[str], list[str]]:
        """Run exactly `count` workers: add the missing programs, stop (gracefully) and
        remove the extra ones, leave the others alone (a worker stopped by hand that is
        still asked for is started again).  Returns (started, stopping).  Waits until
        the wanted ones are RUNNING, or until another command has asked for another
        count (a `worker stop` meanwhile: they will never be RUNNING); SupervisorError
        naming those that are not RUNNING after `wait` seconds, or FATAL."""
        workers_conf.check_count(count)
        with self._scaling():
            return self._scale(count, wait)

    @contextlib.contextmanager
    def _scaling(self) -> Iterator[None]:
        """The home's scaling lock (run/scale.lock): two `worker start --count` take
        turns, each acting on the pool the one before left, never both removing and
        adding the same program.  `worker stop` does not take it: it must end a
        foreground start at once, and a scale seeing the count changed stops waiting."""
        self.paths.run.mkdir(mode=0o700, exist_ok=True)
        fd = home.open_private(str(self.paths.run / "scale.lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
            yield
        finally:
            os.close(fd)

    def _scale(self, count: int, wait: float) -> tuple[list[str], list[str]]:
        conf = conf_file(self.paths)
        before = self.saved_count()
        # The conf first (it checks the worker template), the count once supervisord
        # has taken the conf: a refused scale leaves the asked-for count as it was.
        workers_conf.write(conf, count)
        try:
            self.call("supervisor.reloadConfig")
        except SupervisorError:
            with contextlib.suppress(InvalidInput, OSError):
                workers_conf.write(conf, before or 0)
            raise
        self.save_count(count)
        want = workers_conf.wanted(count)
        present = {p.group: p for p in self.workers()}
        started = []
        for group in want:
            p = present.get(group)
            if p is None:
                self.call("supervisor.addProcessGroup", group)  # autostart=true starts it
                started.append(group)
            elif not p.up:
                self.call("supervisor.startProcess", p.full_name, False)
                started.append(group)
        extra = [p for g, p in present.items() if g not in want]
        stopping = [p.group for p in extra]
        self._retire(extra, wait=None)
        deadline = time.monotonic() + wait
        while self.saved_count() == count:
            states = {p.group: p.state for p in self.workers()}
            if all(states.get(n) == "RUNNING" for n in want):
                break
            bad = [n for n in want if states.get(n) == "FATAL"]
            if bad:
                raise SupervisorError(f"{', '.join(bad)} could not start (see logs/ in {self.paths.home})")
            if time.monotonic() >= deadline:
                late = ", ".join(
                    f"{n} {states.get(n, 'missing')}" for n in want if states.get(n) != "RUNNING"
                )
                raise SupervisorError(
                    f"workers not running after {wait:g}s: {late} (see logs/ in {self.paths.home})"
                )
            time.sleep(0.05)
        return started, stopping

    def _retire(self, procs: list[Proc], *, wait: float | None) -> None:
        """Stop `procs` gracefully (each finishes its job), then remove their programs
        from supervisord, which only a stopped program allows.  Waits for them up to
        `wait` seconds (None: as long as supervisord's own stop takes, which ends in
        SIGKILL after the template's stopwaitsecs)."""
        for p in procs:
            if p.up:
                with contextlib.suppress(SupervisorError):
                    self.call("supervisor.stopProcess", p.full_name, False)
        deadline = time.monotonic() + (wait if wait is not None else 3600.0)
        left = {p.group for p in procs}
        while left and time.monotonic() < deadline:
            states = {p.group: p.state for p in self.workers()}
            for group in list(left):
                if states.get(group, "STOPPED") in DOWN_STATES:
                    with contextlib.suppress(SupervisorError):
                        self.call("supervisor.removeProcessGroup", group)
                    left.discard(group)
            if left:
                time.sleep(0.05)

    def stop_workers(self, *, wait: float | None = None) -> list[str]:
        """Stop every worker gracefully (each finishes its job); wait until they are
        down and their programs removed."""
        self.save_count(0)
        workers_conf.write(conf_file(self.paths), 0)
        pid = self.pid()
        limit = wait if wait is not None else 120.0
        up: list[Proc] = []
        try:
            self.call("supervisor.reloadConfig")
            up = [p for p in self.workers() if p.up]
            self._retire(self.workers(), wait=limit)
        except SupervisorError:
            # supervisord is shutting down (SHUTDOWN_STATE) or gone: a foreground
            # `worker start` ends it once its workers are stopped, and its shutdown
            # stops them the same graceful way.  Done when it has exited.
            deadline = time.monotonic() + limit
            while pid is not None and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        return [p.full_name for p in up]

    def forget_workers(self) -> None:
        """Ask for no workers while supervisord is not running: run/workers.count 0 and,
        if the home has a conf, an empty workers.conf (so a supervisord started by
        other means starts none)."""
        self.save_count(0)
        if conf_file(self.paths).is_file():
            workers_conf.write(conf_file(self.paths), 0)

    def signal_workers(self, sig: str) -> None:
        """Send a signal to every running worker (a second TERM is a cold stop)."""
        with contextlib.suppress(SupervisorError):
            for p in self.workers():
                if p.up:
                    self.call("supervisor.signalProcessGroup", p.group, sig)

    def shutdown(self, *, wait: float = 120.0) -> None:
        pid = self.pid()
        with contextlib.suppress(SupervisorError):
            self.call("supervisor.shutdown")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not self.is_running() and (pid is None or not _alive(pid)):
                return
            time.sleep(0.1)
        raise SupervisorError(f"supervisord (pid {pid}) did not exit within {wait:g}s")

    # --- desired count -------------------------------------------------------------

    @property
    def _count_file(self) -> Path:
        return self.paths.run / "workers.count"

    def save_count(self, count: int) -> None:
        self.paths.run.mkdir(mode=0o700, exist_ok=True)
        tmp = self._count_file.with_suffix(".tmp")
        with os.fdopen(home.open_private(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
            f.write(f"{count}\n")
        os.replace(tmp, self._count_file)  # replaces a symlink itself, never its target

    def saved_count(self) -> int | None:
        try:
            return int(self._count_file.read_text().strip())
        except (OSError, ValueError):
            return None


def exec_supervisorctl(conf: Path, args: list[str]) -> None:
    """Replace this process with supervisorctl on `conf` (its output and exit code are
    the command's own)."""
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _child_setup(foreground: bool) -> Any:
    def setup() -> None:
        # Everything supervisord creates (socket, logs, pid file) is owner-only.
        os.umask(0o077)
        if foreground:
            # SIGTERM (supervisord's graceful shutdown) when the `worker start` that
            # launched it dies, even by SIGKILL.
            from queuectl.signals import die_with_parent

            die_with_parent(signal.SIGTERM)

    return setup


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output (see logs/supervisord.log)"


def run_foreground(sv: Supervisor, count: int, db_url: str | None, say: Any) -> int:
    """`worker start` in the foreground: supervisord as our child with `count` workers.

    First SIGINT/SIGTERM: stop the workers gracefully, then supervisord, exit 0.
    Second: a cold stop (workers kill their jobs and record the attempts).
    `worker stop` from elsewhere sets the count to 0: we notice and shut down too.
    If supervisord dies, its workers and monitor stop by themselves (they watch
    their parent); we wait until they have, then return 6 (SupervisorError).
    """
    import select
    import threading

    from queuectl.signals import StopSignals

    signals = StopSignals()
    signals.install()
    proc = sv.launch(foreground=True, db_url=db_url, count=count)
    sv.scale(count)
    say(f"supervisord running (pid {proc.pid}) with {count} worker(s) and the monitor; Ctrl+C stops")
    stopper: threading.Thread | None = None
    cold_sent = False
    while proc.poll() is None:
        with contextlib.suppress(InterruptedError):
            select.select([signals.fd], [], [], 0.25)
        signals.drain()
        if stopper is None and (signals.warm or sv.saved_count() == 0):
            say("stopping workers gracefully (running jobs finish; Ctrl+C again to kill them)")
            stopper = threading.Thread(target=_stop_all, args=(sv,), daemon=True)
            stopper.start()
        if signals.cold and not cold_sent:
            say("second signal: workers kill their running jobs now")
            sv.signal_workers("TERM")
            cold_sent = True
    rc = proc.wait()
    if stopper is None:
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        say(
            f"supervisord died unexpectedly ({how}): its workers finish their running jobs "
            "(up to stop_timeout), record them and exit; waiting for them (Ctrl+C stops waiting)"
        )
        left = _wait_orphans(sv, signals)
        if left:
            say(f"stopped waiting; {len(left)} process(es) still stopping: {' '.join(map(str, left))}")
        else:
            say("every worker and the monitor stopped; `queuectl worker start` starts them again")
        return SupervisorError.exit_code
    say("stopped")
    return 0


def _wait_orphans(sv: Supervisor, signals: Any) -> list[int]:
    """Wait until the workers and the monitor that the dead supervisord started have
    exited (each stops by itself when it loses its parent); a stop signal ends the
    wait early (they go on stopping alone).  Returns the pids still running then.  Only the
    processes found now count: a supervisord started meanwhile for this home has
    children with the same socket in their environment."""
    import select

    from queuectl.procs import is_alive, proc_start, supervised_processes

    orphans = [(pid, proc_start(pid)) for pid in supervised_processes(str(sv.sock))]
    while left := [pid for pid, start in orphans if is_alive(pid, start)]:
        if signals.warm:
            return left
        with contextlib.suppress(InterruptedError):
            select.select([signals.fd], [], [], 0.1)
        signals.drain()
    return []


def _stop_all(sv: Supervisor) -> None:
    """Stop the workers (waiting while they finish their jobs), then supervisord."""
    with contextlib.suppress(SupervisorError):
        sv.stop_workers(wait=3600)
    with contextlib.suppress(SupervisorError):
        sv.shutdown()
