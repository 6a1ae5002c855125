"""Real `python -m queuectl worker run` processes on a temporary home: concurrent
workers run each job once, signals stop workers warm then cold, and a SIGKILLed
worker loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import QHome, alive, read_lines, wait_until

FAST_POLL = ("--poll-interval", "0.05")


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    return proc.wait(timeout=timeout)


def states(qhome: QHome) -> dict[str, str]:
    return {j["id"]: j["state"] for j in qhome.json("list")}


def test_four_workers_run_200_jobs_each_exactly_once(qhome: QHome, tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    lines = "".join(
        json.dumps({"id": f"job{i:03d}", "command": f'echo "$QUEUECTL_JOB_ID" >> {out}; sleep 0.02'}) + "\n"
        for i in range(200)
    )
    proc = qhome.run("enqueue", "-", input=lines)
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.split()
    assert len(ids) == 200
    workers = [qhome.spawn_worker("--burst", *FAST_POLL) for _ in range(4)]
    codes = [wait_exit(w) for w in workers]
    assert codes == [0, 0, 0, 0], [qhome.worker_log(i)[-2000:] for i in range(4)]
    ran = Counter(read_lines(out))
    assert [i for i, n in ran.items() if n > 1] == [], "some jobs ran twice"
    assert sorted(ran) == sorted(ids), "some jobs never ran (or unknown ones did)"
    jobs = qhome.json("list")
    assert {j["state"] for j in jobs} == {"completed"}
    assert {(j["attempts"], j["lease"]) for j in jobs} == {(1, 1)}
    assert len({j["worker_id"] for j in jobs}) >= 2, "the work was not shared"
    status = qhome.json("status")
    assert (status["completed"], status["total"], status["workers"]) == (200, 200, 0)
    # Every state change left its event: pending, processing, completed for each job.
    events: dict[str, list[tuple[str | None, str]]] = {}
    for row in qhome.dump()["job_events"]:  # (seq, job_id, at, from, to, ...), in seq order
        events.setdefault(row[1], []).append((row[3], row[4]))
    life = [(None, "pending"), ("pending", "processing"), ("processing", "completed")]
    assert events == {job_id: life for job_id in ids}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_lets_the_running_job_finish(qhome: QHome, tmp_path: Path, sig: signal.Signals) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    qhome.enqueue(
        f"echo $$ > {started}; while [ ! -e {go} ]; do sleep 0.02; done; echo finished",
        "--id",
        "running",
        "--priority",
        "1",
    )
    qhome.enqueue("true", "--id", "next")
    worker = qhome.spawn_worker(*FAST_POLL)
    wait_until(started.exists, 30, "the job to start")
    assert qhome.json("status")["workers"] == 1
    assert states(qhome)["running"] == "processing"
    worker.send_signal(sig)
    go.touch()
    assert wait_exit(worker) == 0
    running = qhome.job("running")
    assert (running["state"], running["stdout"], running["attempts"]) == ("completed", "finished\n", 1)
    assert states(qhome)["next"] == "pending", "a stopping worker claimed another job"
    assert qhome.json("status")["workers"] == 0  # it removed its own row
    log = qhome.worker_log()
    assert '"event": "worker_stopped"' in log
    assert "Traceback" not in log


def test_an_idle_worker_stops_at_once(qhome: QHome) -> None:
    worker = qhome.spawn_worker("--poll-interval", "30")
    wait_until(lambda: qhome.json("status")["workers"] == 1, 30, "the worker to register")
    worker.send_signal(signal.SIGTERM)
    assert wait_exit(worker, timeout=10) == 0


def test_a_second_signal_kills_the_job_and_records_the_attempt(qhome: QHome, tmp_path: Path) -> None:
    started = tmp_path / "started"
    qhome.enqueue(f"echo $$ > {started}; exec sleep 60", "--id", "long")
    worker = qhome.spawn_worker(*FAST_POLL)
    wait_until(started.exists, 30, "the job to start")
    job_pid = int(started.read_text())

    def signal_again() -> bool:
        # Signals of one kind do not queue: repeat until the worker has counted two.
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                return False
        return True

    wait_until(signal_again, 30, "the worker to stop on a second signal")
    assert worker.returncode == 0
    assert not alive(job_pid)
    job = qhome.job("long")
    assert job["state"] == "failed"
    assert job["attempts"] == 1
    assert "second stop signal" in job["error"]
    assert job["exit_code"] == 137
    assert [(e["from"], e["to"]) for e in job["history"]][-1] == ("processing", "failed")
    assert qhome.json("status")["workers"] == 0


def test_a_sigkilled_worker_loses_nothing(qhome: QHome, tmp_path: Path) -> None:
    """kill -9 a burst worker in the middle of a job: every job is still stored; a
    recovery pass and a new worker finish them all, and only the interrupted job
    ran twice (its history shows the recovery)."""
    out, go = tmp_path / "ran.txt", tmp_path / "go"
    qhome.configure(backoff_max=0)  # retry a recovered job at once
    jobs = []
    for i in range(20):
        command = f'echo "$QUEUECTL_JOB_ID" >> {out}'
        if i == 5:  # holds its worker until the test says go
            command += f"; while [ ! -e {go} ]; do sleep 0.02; done"
        jobs.append(json.dumps({"id": f"j{i:02d}", "command": command}))
    assert qhome.run("enqueue", "-", input="\n".join(jobs)).returncode == 0
    worker = qhome.spawn_worker("--burst", *FAST_POLL)
    wait_until(lambda: "j05" in read_lines(out), 30, "job j05 to start")
    worker.kill()
    assert wait_exit(worker) == -signal.SIGKILL
    # Everything is still there: 5 done, one stuck in processing, the rest waiting.
    after_crash = states(qhome)
    assert sorted(after_crash) == [f"j{i:02d}" for i in range(20)]
    assert Counter(after_crash.values()) == {"completed": 5, "processing": 1, "pending": 14}
    assert after_crash["j05"] == "processing"
    go.touch()
    recovered = qhome.run("recover")
    assert recovered.returncode == 0, recovered.stderr
    assert "j05" in recovered.stdout
    again = qhome.spawn_worker("--burst", *FAST_POLL)
    assert wait_exit(again) == 0, qhome.worker_log(1)[-2000:]
    final = qhome.json("list")
    assert {j["state"] for j in final} == {"completed"}
    ran = Counter(read_lines(out))
    assert sorted(ran) == [f"j{i:02d}" for i in range(20)]
    assert {i for i, n in ran.items() if n > 1} == {"j05"}
    j05 = qhome.job("j05")
    assert j05["attempts"] == 2
    assert any(e["reason"] == "worker_died" for e in j05["history"])


def test_recover_dry_run_shows_the_processes_it_would_kill(qhome: QHome, tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    assert qhome.run("enqueue", f"echo $$ >> {out}; exec sleep 60").returncode == 0
    worker = qhome.spawn_worker("--burst", *FAST_POLL)
    pid = int(wait_until(lambda: read_lines(out), 30, "the job to start")[0])
    worker.kill()
    assert wait_exit(worker) == -signal.SIGKILL
    try:
        dry = qhome.run("recover", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would kill pids {pid}" in dry.stdout
        assert "worker_died" in dry.stdout
        os.kill(pid, 0)  # a dry run kills nothing ...
        assert Counter(states(qhome).values()) == {"processing": 1}  # ... and changes nothing
        done = qhome.run("recover")
        assert done.returncode == 0 and f"killed pids {pid}" in done.stdout, done.stdout
        wait_until(lambda: not alive(pid), 10, "the job's process to die")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
