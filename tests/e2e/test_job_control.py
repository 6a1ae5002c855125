"""Job control end to end, on both stores: real `python -m queuectl` processes and a
real worker.  Cancel kills a running job's whole process group within a heartbeat
interval and the job stays cancelled; wait's and enqueue --wait's exit codes; logs
--follow prints a running job's output as it is written."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _postgres_schema
from tests.helpers import QHome, alive, group_members, one_line_error, wait_until

#: The worker's heartbeat interval in these tests (seconds).
BEAT = 0.3


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ctl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QHome]:
    """A home (on SQLite, or on a fresh PostgreSQL schema) with one worker running."""
    path = tmp_path / "h"
    path.mkdir()
    home = QHome(path)
    gen = _postgres_schema() if request.param == "postgres" else None
    if gen is not None:
        home.env["QUEUECTL_DB"] = next(gen)
    try:
        assert home.run("config", "set", "heartbeat_interval", str(BEAT)).returncode == 0
        home.spawn_worker()
        yield home
    finally:
        home.kill_all()
        for _ in gen or ():
            pass


def enqueue(home: QHome, *args: str) -> str:
    proc = home.run("enqueue", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def state(home: QHome, job_id: str) -> str:
    proc = home.run("inspect", job_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["state"])


def test_cancel_kills_the_running_job_group_within_a_heartbeat(ctl: QHome, tmp_path: Path) -> None:
    sh, gc = tmp_path / "sh.pid", tmp_path / "gc.pid"
    command = f"sh -c 'trap \"\" TERM; echo $$ > {gc}; exec sleep 300' & echo $$ > {sh}; sleep 300; wait"
    job_id = enqueue(ctl, command, "--max-retries", "3")
    wait_until(
        lambda: sh.exists() and gc.exists() and gc.read_text(), 20, "the job and its grandchild to run"
    )
    pgid, grandchild = int(sh.read_text()), int(gc.read_text())
    assert group_members(pgid)
    proc = ctl.run("cancel", job_id)
    cancelled = time.monotonic()
    assert (proc.returncode, proc.stdout) == (0, f"cancelled {job_id}\n"), proc.stderr
    # One heartbeat interval, plus a tick of the executor and a margin for a busy host.
    wait_until(lambda: not group_members(pgid) and not alive(grandchild), BEAT + 1.5, "the group to die")
    assert time.monotonic() - cancelled < BEAT + 1.5
    # Never recorded as a failure, never retried: the worker goes on with other jobs.
    after = enqueue(ctl, "true")
    assert ctl.run("wait", after, "--timeout", "30").returncode == 0
    data = json.loads(ctl.run("inspect", job_id, "--json").stdout)
    assert (data["state"], data["attempts"]) == ("cancelled", 1)
    moves = [(e["from"], e["to"]) for e in data["history"]]
    assert moves == [(None, "pending"), ("pending", "processing"), ("processing", "cancelled")]
    assert data["history"][-1]["reason"].startswith("cancelled by ")
    assert '"job_cancelled"' in ctl.worker_log()
    assert '"result_dropped"' not in ctl.worker_log()


def test_wait_exit_codes(ctl: QHome) -> None:
    ok = enqueue(ctl, "true")
    dead = enqueue(ctl, "exit 3", "--max-retries", "0")
    assert ctl.run("wait", ok, "--timeout", "30").returncode == 0
    proc = ctl.run("wait", ok, dead, "--timeout", "30", "--json")
    assert proc.returncode == 1, proc.stderr
    assert '"state": "dead"' in proc.stdout
    slow = enqueue(ctl, "sleep 300")
    t = time.monotonic()
    proc = ctl.run("wait", slow, "--timeout", "0.5")
    assert proc.returncode == 124, proc.stderr
    assert time.monotonic() - t < 10
    assert "timed out" in proc.stderr
    assert ctl.run("cancel", slow).returncode == 0
    assert ctl.run("wait", slow).returncode == 1
    one_line_error(ctl.run("wait", ok, "nope"), 3)


def test_wait_returns_when_a_running_job_ends(ctl: QHome, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_id = enqueue(ctl, f"while [ ! -e {go} ]; do sleep 0.02; done")
    with subprocess.Popen(ctl.cmd("wait", job_id), env=ctl.env, stdout=subprocess.PIPE, text=True) as waiter:
        try:
            wait_until(lambda: state(ctl, job_id) == "processing", 20, "the job to run")
            assert waiter.poll() is None
            go.touch()
            assert waiter.wait(timeout=30) == 0
        finally:
            if waiter.poll() is None:
                waiter.kill()


def test_enqueue_wait_works_like_running_the_command(ctl: QHome) -> None:
    proc = ctl.run("enqueue", "--wait", "echo out; echo err >&2; exit 7", "--max-retries", "0")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    proc = ctl.run("enqueue", "--wait", "printf 'a\\tb\\n'")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "a\tb\n", "")


def test_logs_follow_prints_a_running_jobs_output_as_it_is_written(ctl: QHome, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = f"echo first; while [ ! -e {go} ]; do sleep 0.02; done; echo second; exit 3"
    job_id = enqueue(ctl, script, "--max-retries", "0")
    cmd = ctl.cmd("logs", job_id, "--follow")
    with subprocess.Popen(cmd, env=ctl.env, stdout=subprocess.PIPE, text=True) as follower:
        try:
            assert follower.stdout is not None
            # Read before the job may go on: the line arrived while the job ran.
            assert follower.stdout.readline() == "first\n"
            assert state(ctl, job_id) == "processing"
            assert ctl.run("logs", job_id).stdout == "first\n"  # what is saved so far
            go.touch()
            assert follower.stdout.read() == "second\n"
            assert follower.wait(timeout=30) == 1  # as wait: the job failed
        finally:
            if follower.poll() is None:
                follower.kill()
