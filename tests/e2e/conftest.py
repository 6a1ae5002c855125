"""End-to-end fixtures: a real queuectl home in a short temporary path, the real CLI
in subprocesses, real supervisord; teardown stops whatever a test left running."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queuectl import procs
from tests.helpers import FAST, wait_until

__all__ = ["FAST", "Home", "wait_until"]


class Home:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {**os.environ, "QUEUECTL_HOME": str(path)}
        self.env.pop("QUEUECTL_DB", None)
        self.env.pop("QUEUECTL_FAILPOINT", None)
        self.background: list[subprocess.Popen[str]] = []

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "queuectl", *args]

    def run(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.cmd(*args), env=self.env, capture_output=True, text=True, input=input, timeout=120
        )
        if check and proc.returncode != 0:
            pytest.fail(f"queuectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def spawn(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.cmd(*args),
            env=kw.pop("env", self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )
        self.background.append(proc)
        return proc

    def configure(self, **values: str) -> None:
        for key, value in values.items():
            self.run("config", "set", key, value)

    def fast(self) -> None:
        self.configure(**FAST)

    def enqueue(self, command: str, *opts: str) -> str:
        return self.run("enqueue", command, *opts).stdout.strip()

    def job(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.json("inspect", job_id)
        return data

    def status(self) -> dict[str, int]:
        data: dict[str, int] = self.json("status")
        return data

    def sv_processes(self) -> dict[str, dict[str, Any]]:
        """supervisord's view, through queuectl's own client."""
        from queuectl.config import resolve_paths
        from queuectl.supervisor import Supervisor

        sv = Supervisor(resolve_paths(str(self.path)))
        return {p.full_name: {"state": p.state, "pid": p.pid} for p in sv.processes()}

    def running_workers(self) -> dict[str, int]:
        return {
            n: p["pid"]
            for n, p in self.sv_processes().items()
            if n.startswith("workers_") and p["state"] == "RUNNING"
        }

    def recovery_logs(self) -> list[dict[str, Any]]:
        out = []
        for f in sorted((self.path / "logs").glob("recovered_jobs_*.json")):
            out.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
        return out

    def job_pids(self) -> list[int]:
        from queuectl.config import resolve_paths

        key = procs.queue_key(resolve_paths(str(self.path)).db_url)
        return [p.pid for p in procs.job_processes(key)]

    def cleanup(self) -> None:
        for p in self.background:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.communicate(timeout=10)
        pidfile = self.path / "run" / "supervisord.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                pid = int(pidfile.read_text().strip())
                _kill_tree(pid)
        for pid in self.job_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it (supervisord and its workers)."""
    children = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            ppid = int(data[data.rfind(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            children.append(int(name))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for child in children:
        _kill_tree(child)


@pytest.fixture
def home() -> Iterator[Home]:
    # supervisord's unix socket path must stay short: a short folder under /tmp.
    path = Path(tempfile.mkdtemp(prefix="qe", dir="/tmp"))
    h = Home(path)
    try:
        yield h
    finally:
        h.cleanup()
        shutil.rmtree(path, ignore_errors=True)
