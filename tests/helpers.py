"""Small helpers shared by the unit and contract tests: polling with a deadline, the
real CLI (in this process through click's CliRunner, or as `python -m queuectl`
subprocesses), a logical dump of a SQLite queue, and /proc look-ups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import apsw
import pytest
from click.testing import CliRunner, Result

from queuectl.cli.root import cli

#: A fixed instant (2023-11-14T22:13:20Z) the store and the worker are driven at.
T0 = 1_700_000_000.0

#: Environment variables that would point a test at another queue or crash it.
QUEUECTL_VARS = ("QUEUECTL_HOME", "QUEUECTL_DB", "QUEUECTL_FAILPOINT", "QUEUECTL_DEBUG", "SUPERVISOR_ENABLED")


#: Short intervals for tests that kill real processes: a same-host crash is
#: recovered in a few hundred ms (the defaults are 3/15/5 s).
FAST = {
    "heartbeat_interval": "0.2",
    "heartbeat_timeout": "2",
    "monitor_interval": "0.3",
    "backoff_base": "1",
    "backoff_max": "0.2",
    "timeout_grace": "1",
    "kill_grace": "1",
    "poll_interval": "0.2",
}


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str = "condition", interval: float = 0.02
) -> Any:
    """Poll `predicate` until it returns something truthy and return that; fail the
    test if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in QUEUECTL_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class QHome:
    """A temporary queuectl home, driven through the real command line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = path / "db" / "queue.db"
        self.env = clean_env()
        self.procs: list[subprocess.Popen[bytes]] = []

    # --- in-process, through click's runner -----------------------------------------

    def invoke(self, *args: str, input: str | bytes | None = None, code: int = 0) -> Result:
        result = CliRunner(env=dict.fromkeys(QUEUECTL_VARS)).invoke(
            cli, ["--home", str(self.path), *args], input=input
        )
        if result.exit_code != code:
            raise AssertionError(
                f"queuectl {' '.join(args)} exited {result.exit_code} (wanted {code}):"
                f" {result.output!r} {result.exception!r}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.invoke(*args, "--json").stdout)

    def enqueue(self, *args: str) -> str:
        return self.invoke("enqueue", *args).stdout.strip()

    def configure(self, **values: Any) -> None:
        for key, value in values.items():
            self.invoke("config", "set", key, str(value))

    # --- real processes --------------------------------------------------------------

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "queuectl", "--home", str(self.path), *args]

    def run(self, *args: str, input: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
        """`python -m queuectl --home HOME args...`: main(), exit codes and all."""
        return subprocess.run(
            self.cmd(*args),
            input=input,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def spawn_worker(self, *args: str, name: str = "worker") -> subprocess.Popen[bytes]:
        """`worker run ARGS` in the background; its log (stderr) goes to a file."""
        n = len(self.procs)
        log = (self.path / f"{name}-{n}.log").open("wb")
        try:
            proc = subprocess.Popen(
                self.cmd("worker", "run", *args),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def worker_log(self, n: int = 0, name: str = "worker") -> str:
        return (self.path / f"{name}-{n}.log").read_text(errors="replace")

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    # --- what is stored ----------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return dump_db(self.db)

    def job(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.json("inspect", job_id)
        return data


def dump_db(path: Path) -> dict[str, Any]:
    """Every row a queue stores, in a stable order (or the raw bytes of a file that
    is not a database, or None when there is no file)."""
    if not path.exists():
        return {"file": None}
    data = path.read_bytes()
    if not data.startswith(b"SQLite format 3\0"):
        return {"file": data}
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        out: dict[str, Any] = {}
        for table, order in (("jobs", "id"), ("job_events", "seq"), ("config", "key"), ("workers", "id")):
            try:
                out[table] = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            except apsw.SQLError:
                out[table] = None
        return out
    finally:
        conn.close()


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert the usual failure shape: exit `code`, nothing on stdout, one line on
    stderr, no traceback; returns that line."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("queuectl: error: "), lines[0]
    assert proc.stdout == ""
    return lines[0]


# --- processes -------------------------------------------------------------------------


def proc_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z, ...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def alive(pid: int) -> bool:
    """True if `pid` runs (a zombie waiting for its parent counts as dead)."""
    return proc_state(pid) not in (None, "Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if os.getpgid(pid) == pgid and alive(pid):
                out.append(pid)
        except OSError:
            continue
    return out


def read_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def jobs_by_id(jobs: list[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {j["id"]: j for j in jobs}
