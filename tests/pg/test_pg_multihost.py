"""One PostgreSQL queue, workers on several "hosts": real `python -m queuectl worker
run` processes, each with its own QUEUECTL_HOSTNAME (and home), standing for the
machines of a multi-host deployment.  Each job appends its id to a file opened for
append, which proves exactly-once."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl import procs
from queuectl.errors import QueuectlError
from queuectl.logs import json_logger
from queuectl.models import Job, JobState, NewJob
from queuectl.monitor import Monitor
from queuectl.store.postgres import PostgresStore
from tests.helpers import clean_env, read_lines, wait_until
from tests.pg.conftest import admin

pytestmark = pytest.mark.postgres


class Hosts:
    """Worker processes, each on a named "host" with its own home; all killed at
    teardown."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, host: str, *args: str) -> subprocess.Popen[bytes]:
        home = self.root / host
        home.mkdir(exist_ok=True)
        log = (home / f"worker-{len(self.procs)}.log").open("wb")
        try:
            cmd = [sys.executable, "-m", "queuectl", "--home", str(home), "--db", self.url]
            proc = subprocess.Popen(
                [*cmd, "worker", "run", *args],
                env=clean_env(QUEUECTL_HOSTNAME=host),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("*/worker-*.log")))

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        """A warm stop (SIGTERM), waited for."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=30)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def hosts(tmp_path: Path, pg_url: str) -> Iterator[Hosts]:
    h = Hosts(tmp_path / "hosts", pg_url)
    h.root.mkdir()
    try:
        yield h
    finally:
        h.kill_all()


def appending(out: Path, before: str = "") -> str:
    """A job command that appends its own id to `out`."""
    return f'{before}echo "$QUEUECTL_JOB_ID" >> {shlex.quote(str(out))}'


def host_of(job: Job) -> str:
    """Worker ids are host-pid-suffix; the host may contain dashes."""
    assert job.worker_id is not None
    return job.worker_id.rsplit("-", 2)[0]


def completed(store: PostgresStore) -> int:
    try:
        return store.counts()["completed"]
    except QueuectlError:  # the server is restarting
        return -1


def test_workers_on_four_hosts_drain_1000_jobs_exactly_once(
    pg_store: PostgresStore, hosts: Hosts, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ids = [f"job{i:04d}" for i in range(1000)]
    pg_store.enqueue([NewJob(i, appending(out), 3, 0, 60.0, 0.0) for i in ids])
    workers = [hosts.spawn(f"host-{c}", "--burst", "--poll-interval", "0.05") for c in "abcd"]

    wait_until(lambda: all(p.poll() is not None for p in workers), 90, "the burst workers to drain and exit")
    assert [p.returncode for p in workers] == [0, 0, 0, 0], hosts.logs()

    ran = Counter(read_lines(out))
    assert sorted(ran) == ids, "jobs missing or unknown"
    assert max(ran.values()) == 1, [i for i, n in ran.items() if n > 1]
    jobs = pg_store.list_jobs()
    assert {j.state for j in jobs} == {JobState.COMPLETED}
    assert {j.attempts for j in jobs} == {1}
    by_host = Counter(host_of(j) for j in jobs)
    assert set(by_host) <= {"host-a", "host-b", "host-c", "host-d"}
    assert len(by_host) >= 2, by_host
    assert pg_store.workers() == []  # each removed its own row on exit


def test_a_monitor_on_another_host_recovers_a_killed_workers_job(
    pg_store: PostgresStore, pg_url: str, hosts: Hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_store.config_set({"heartbeat_interval": "0.2", "heartbeat_timeout": "1", "monitor_interval": "60"})
    out, pidfile = tmp_path / "out", tmp_path / "job.pid"
    first_run_hangs = f'echo $$ > {pidfile}; if [ "$QUEUECTL_ATTEMPT" = 1 ]; then sleep 60; fi; '
    pg_store.enqueue([NewJob("victim", appending(out, first_run_hangs), 3, 0, 120.0, 0.0)])
    host_a = hosts.spawn("host-a", "--poll-interval", "0.05")
    try:
        held = wait_until(
            lambda: pidfile.exists() and [w for w in pg_store.workers() if w.job_id == "victim"],
            30,
            "host-a to run the job",
        )
        worker = held[0]
        assert worker.host == "host-a"
        host_a.kill()  # SIGKILL: no clean exit, its row and its job stay behind
        host_a.wait(timeout=10)

        queue = procs.queue_key(pg_url)
        quiet = json_logger(io.StringIO())
        just_after = worker.heartbeat_at + 0.5  # well inside heartbeat_timeout
        # A monitor on host-a would see at once that the worker's pid is gone...
        monkeypatch.setattr(procs, "_HOST", "host-a")
        local = Monitor(pg_store, queue=queue, logs_dir=tmp_path / "logs-a", log=quiet)
        seen = local.run_once(now=just_after, dry_run=True)
        assert [(r.event, r.job_id) for r in seen if r.job_id] == [("job_recovered", "victim")]
        # ...host-b cannot judge another host's pids: it waits for the heartbeat timeout.
        monkeypatch.setattr(procs, "_HOST", "host-b")
        remote = Monitor(pg_store, queue=queue, logs_dir=tmp_path / "logs-b", log=quiet)
        assert remote.run_once(now=just_after) == []
        job = pg_store.get("victim")
        assert job is not None and job.state is JobState.PROCESSING

        done = wait_until(
            lambda: [r for r in remote.run_once() if r.event == "job_recovered"], 15, "host-b to recover it"
        )
        assert (done[0].job_id, done[0].reason, done[0].host) == ("victim", "heartbeat_lost", "host-a")
        job = pg_store.get("victim")
        assert job is not None and job.state is JobState.FAILED and job.attempts == 1
        assert pg_store.history("victim")[-1].reason == "heartbeat_lost"
        assert worker.id not in {w.id for w in pg_store.workers()}
        assert "victim" in "".join(p.read_text() for p in (tmp_path / "logs-b").glob("recovered_jobs_*.json"))

        # A worker on a third host runs the retry; the job ran to its end exactly once.
        host_c = hosts.spawn("host-c", "--poll-interval", "0.05")
        wait_until(lambda: (j := pg_store.get("victim")) and j.state is JobState.COMPLETED, 30, "the retry")
        assert hosts.stop(host_c) == 0
        assert read_lines(out) == ["victim"]
        job = pg_store.get("victim")
        assert job is not None and job.attempts == 2 and host_of(job) == "host-c"
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def _cluster() -> str | None:
    """The version of the local Debian PostgreSQL cluster we may restart, if any."""
    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted((v for v in os.listdir("/etc/postgresql") if v.isdigit()), key=int)
    return versions[-1] if versions else None


def _started_at() -> float:
    with admin() as conn:
        row = conn.execute("SELECT extract(epoch FROM pg_postmaster_start_time())::float8").fetchone()
    assert row is not None
    return float(row[0])


@pytest.mark.slow
def test_a_server_restart_mid_drain_loses_nothing_and_runs_nothing_twice(
    pg_store: PostgresStore, hosts: Hosts, tmp_path: Path
) -> None:
    version = _cluster()
    if version is None:
        pytest.skip("needs root and Debian's pg_ctlcluster to restart the server")
    out = tmp_path / "out"
    ids = [f"job{i:04d}" for i in range(300)]
    pg_store.enqueue([NewJob(i, appending(out, "sleep 0.05; "), 3, 0, 60.0, 0.0) for i in ids])
    workers = [hosts.spawn(f"host-{c}", "--poll-interval", "0.05") for c in "abc"]
    wait_until(lambda: completed(pg_store) >= 40, 60, "the drain to get going")

    started = _started_at()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert completed(pg_store) < len(ids), "the drain ended before the restart: make the jobs longer"

    wait_until(lambda: completed(pg_store) == len(ids), 90, "the drain to finish after the restart")
    assert [p.poll() for p in workers] == [None, None, None], "a worker died:\n" + hosts.logs()
    assert [hosts.stop(p) for p in workers] == [0, 0, 0]
    ran = Counter(read_lines(out))
    assert sorted(ran) == ids, "jobs missing or unknown"
    assert max(ran.values()) == 1, [i for i, n in ran.items() if n > 1]
    assert _started_at() > started, "the server was not restarted"
