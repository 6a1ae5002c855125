"""Recovery without a monitor: bare workers run the monitor's pass themselves."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Home, wait_until
from tests.e2e.test_supervisor import lines, tracked


def bare_worker(home: Home, log: Path) -> subprocess.Popen[str]:
    """`queuectl worker run` in the foreground, its JSON log lines into `log`."""
    f = open(log, "w")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            home.cmd("worker", "run"), env=home.env, stdout=subprocess.DEVNULL, stderr=f, text=True
        )
    finally:
        f.close()
    home.background.append(proc)
    return proc


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == name:
            out.append(rec)
    return out


def test_bare_workers_recover_a_killed_workers_job(home: Home, tmp_path: Path) -> None:
    home.fast()
    out = tmp_path / "runs"
    a = bare_worker(home, tmp_path / "a.log")
    b = bare_worker(home, tmp_path / "b.log")
    wait_until(lambda: home.status()["workers"] == 2, 15, "2 live workers")
    # Long enough that the recovery (and its kill) comes before the first attempt
    # ends, even on a loaded machine: it once took over 3 s during a benchmark.
    job = home.enqueue(tracked(out, 8))
    wait_until(lambda: lines(out), 15, "the job to start")
    holder = home.job(job)["worker_id"]
    victim, survivor = (a, b) if holder.split("-")[-2] == str(a.pid) else (b, a)
    t0 = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    wait_until(lambda: home.job(job)["attempts"] == 2, 15, "a worker to recover the job")
    assert time.monotonic() - t0 < 10  # a few 0.3 s monitor intervals, with slack for a loaded machine
    wait_until(lambda: home.job(job)["state"] == "completed", 20, "the retry to complete")
    assert lines(out) == [f"start {job} 1", f"start {job} 2", f"end {job} 2"]
    recs = [r for r in home.recovery_logs() if r["event"] == "job_recovered"]
    assert [(r["job_id"], r["attempt"], r["reason"]) for r in recs] == [(job, 1, "worker_died")]
    survivor_log = tmp_path / ("a.log" if survivor is a else "b.log")
    assert events(survivor_log, "fallback_pass")
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=20) == 0
    rec = home.status()["recovery"]
    assert rec["last_pass_kind"] == "worker"


def test_a_worker_starting_up_recovers_at_once(home: Home, tmp_path: Path) -> None:
    # Default intervals: only the start-up pass can recover this quickly.
    out = tmp_path / "runs"
    first = bare_worker(home, tmp_path / "first.log")
    job = home.enqueue(tracked(out, 30))
    wait_until(lambda: lines(out), 15, "the job to start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    t0 = time.monotonic()
    bare_worker(home, tmp_path / "second.log")
    wait_until(lambda: home.job(job)["attempts"] == 2, 12, "the new worker's start-up pass")
    assert time.monotonic() - t0 < 10  # well before heartbeat_timeout (15 s) could matter
    for p in home.background:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)


def test_workers_stand_in_only_while_the_monitor_is_away(home: Home, tmp_path: Path) -> None:
    home.fast()
    home.run("worker", "start", "--detach", "--count", "2")
    wait_until(lambda: home.status()["workers"] == 2, 15, "2 live workers")
    wait_until(lambda: home.status()["recovery"]["last_pass_kind"] == "monitor", 10, "a monitor pass")
    logs = [home.path / "logs" / f"workers_0{i}.log" for i in range(2)]

    def fallback_count() -> int:
        return sum(len([e for e in events(p, "fallback_pass") if not e.get("startup")]) for p in logs)

    before = fallback_count()
    # Watch a window of several monitor intervals: the workers must stay out of it.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert fallback_count() == before, "a worker ran a pass while the monitor was up"
        time.sleep(0.1)

    _supervisorctl(home, "stop", "monitor")
    wait_until(lambda: fallback_count() > before, 15, "a worker to take over")
    wait_until(lambda: home.status()["recovery"]["last_pass_kind"] == "worker", 10, "worker passes")

    _supervisorctl(home, "start", "monitor")
    try:
        wait_until(lambda: any(events(p, "monitor_back") for p in logs), 15, "the workers to step back")
        wait_until(
            lambda: home.status()["recovery"]["last_pass_kind"] == "monitor", 10, "monitor passes again"
        )
    except pytest.fail.Exception as exc:  # what the processes said, for a failure seen once in CI
        tails = {
            p.name: p.read_text(errors="replace")[-1500:] for p in [*logs, home.path / "logs" / "monitor.log"]
        }
        pytest.fail(f"{exc}; status {home.status()}; logs {tails}")


def _supervisorctl(home: Home, *args: str) -> None:
    import sys

    conf = home.path / "conf" / "supervisord.conf"
    subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
        check=True,
        capture_output=True,
        timeout=60,
        env={**os.environ},
    )


def test_passes_never_overlap_and_no_job_is_recovered_twice(home: Home, tmp_path: Path) -> None:
    home.fast()
    out = tmp_path / "runs"
    home.run("worker", "start", "--detach", "--count", "3")
    wait_until(lambda: home.status()["workers"] == 3, 15, "3 live workers")
    jobs = [home.enqueue(tracked(out, 1.5)) for _ in range(3)]
    wait_until(lambda: len(lines(out)) >= 3, 15, "the jobs to start")
    for pid in list(home.running_workers().values())[:2]:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all(home.job(j)["state"] == "completed" for j in jobs), 30, "all jobs to complete")
    home.run("shutdown")
    passes = []
    for log in (home.path / "logs").glob("*.log"):
        passes += events(log, "recovery_pass")
    kinds = {p["kind"] for p in passes}
    assert "monitor" in kinds and len(passes) > 5
    passes.sort(key=lambda p: p["started"])
    for a, b in itertools.pairwise(passes):
        assert a["ended"] <= b["started"], f"passes overlapped: {a} and {b}"
    recs = [(r["job_id"], r["attempt"]) for r in home.recovery_logs() if r["event"] == "job_recovered"]
    assert len(recs) == len(set(recs)) >= 2
