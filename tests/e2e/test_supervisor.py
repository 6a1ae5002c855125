"""Workers and the monitor under the real supervisord, tested by killing real processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Home, wait_until


def tracked(out: Path, seconds: float) -> str:
    """A job that records its start and end (with its lease) in `out`."""
    return (
        f'echo "start $QUEUECTL_JOB_ID $QUEUECTL_LEASE" >> {out}; sleep {seconds}; '
        f'echo "end $QUEUECTL_JOB_ID $QUEUECTL_LEASE" >> {out}'
    )


def lines(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def test_detach_scale_and_stop(home: Home) -> None:
    home.fast()
    home.run("worker", "start", "--detach", "--count", "3")
    wait_until(lambda: home.status()["workers"] == 3, 15, "3 live workers")
    assert len(home.running_workers()) == 3
    assert home.sv_processes()["monitor:monitor"]["state"] == "RUNNING"

    home.run("worker", "start", "--count", "5")
    wait_until(lambda: home.status()["workers"] == 5, 15, "5 live workers")
    stay = {n: p for n, p in home.running_workers().items() if n < "workers_02"}
    home.run("worker", "start", "--count", "2")
    wait_until(lambda: len(home.running_workers()) == 2, 15, "2 running workers")
    # The two that stay were never restarted: same processes.
    assert home.running_workers() == stay
    wait_until(lambda: home.status()["workers"] == 2, 15, "2 live workers")

    home.run("worker", "start", "--count", "1")
    wait_until(lambda: len(home.running_workers()) == 1, 15, "1 running worker")

    # The socket, logs and database are owner-only.
    sock = home.path / "run" / "sv.sock"
    assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
    for p in [home.path / "logs", home.path / "db", home.path / "run"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o700
    for p in [*(home.path / "logs").iterdir(), home.path / "db" / "queue.db"]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p

    home.run("shutdown")
    wait_until(lambda: not sock.exists() or home.run("worker", "status").stdout.strip() == "no workers", 30)


def test_scaling_commands_take_turns_and_a_refused_one_changes_nothing(home: Home) -> None:
    home.fast()
    home.run("worker", "start", "--detach", "--count", "3")
    wait_until(lambda: home.status()["workers"] == 3, 15, "3 live workers")
    for _ in range(3):
        home.enqueue("sleep 3")
    wait_until(lambda: home.status()["processing"] == 3, 15, "3 busy workers")
    count = home.path / "run" / "workers.count"
    # A scale-down waits for its busy workers; a scale-up asked meanwhile acts after
    # it, on what it left: three workers in the end, as the last command said.
    down = subprocess.Popen(home.cmd("worker", "start", "--count", "1"), env=home.env)
    wait_until(lambda: count.read_text() == "1\n", 15, "the scale-down to begin")
    up = home.run("worker", "start", "--count", "3")
    assert down.wait(60) == 0
    assert "3 worker(s) running" in up.stdout, up.stdout
    wait_until(lambda: len(home.running_workers()) == 3, 15, "3 running workers")
    assert count.read_text() == "3\n"
    assert home.run("worker", "status").returncode == 0

    # A scale that is refused (the conf lost its worker template) leaves the asked-for
    # count as it was: exit 2 means nothing changed.
    conf = home.path / "conf" / "supervisord.conf"
    conf.write_text(conf.read_text().replace("[queuectl:worker]", "[queuectl:renamed]"))
    r = home.run("worker", "start", "--count", "4", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert count.read_text() == "3\n"
    assert home.run("worker", "status").returncode == 0


def test_supervisorctl_lists_only_the_workers_asked_for_and_worker_status_exits_3(home: Home) -> None:
    home.fast()
    home.run("worker", "start", "--detach", "--count", "3")
    wait_until(lambda: home.status()["workers"] == 3, 15, "3 live workers")
    # supervisorctl (through `queuectl supervisorctl`, for installs without it on PATH)
    # lists exactly the three workers and the monitor, all RUNNING, and exits 0.
    ctl = home.run("supervisorctl", "status")
    names = sorted(line.split()[0] for line in ctl.stdout.splitlines())
    assert names == ["monitor", "workers_00", "workers_01", "workers_02"], ctl.stdout
    assert all(" RUNNING " in line for line in ctl.stdout.splitlines()), ctl.stdout
    assert home.run("worker", "status").returncode == 0
    # worker status names each worker as supervisorctl does.
    listed = json.loads(home.run("worker", "status", "--json").stdout)
    assert sorted(str(r["name"]) for r in listed if r["name"]) == [
        "monitor",
        "workers_00",
        "workers_01",
        "workers_02",
    ]

    # A worker stopped behind queuectl's back: supervisorctl tells it (3), and so does
    # `worker status`; `status` (the queue's counts) stays 0.
    pid_00 = home.running_workers()["workers_00:workers_00"]
    home.run("supervisorctl", "stop", "workers_01")
    assert home.run("supervisorctl", "status", check=False).returncode == 3
    st = home.run("worker", "status", check=False)
    assert st.returncode == 3, st.stderr
    assert "asked for 3 worker(s), 2 running (workers_01 STOPPED)" in st.stderr
    assert home.run("status").returncode == 0
    health = home.run("health", check=False)
    assert health.returncode == 1
    assert health.stdout == "workers: asked for 3 worker(s), 2 running (workers_01 STOPPED)\n"

    # Asking again starts it; scaling down removes the extra programs and leaves the
    # others running, never restarted.
    home.run("worker", "start", "--count", "3")
    assert home.run("worker", "status").returncode == 0
    assert home.run("health").stdout == "ok\n"  # the monitor's passes, the workers, no late job
    home.run("worker", "start", "--count", "1")
    ctl = home.run("supervisorctl", "status")
    assert sorted(line.split()[0] for line in ctl.stdout.splitlines()) == ["monitor", "workers_00"]
    assert home.running_workers() == {"workers_00:workers_00": pid_00}
    home.run("worker", "stop")
    ctl = home.run("supervisorctl", "status")
    assert [line.split()[0] for line in ctl.stdout.splitlines()] == ["monitor"]
    assert home.run("worker", "status").returncode == 0


def test_stop_lets_the_running_job_finish(home: Home, tmp_path: Path) -> None:
    home.fast()
    out = tmp_path / "runs"
    home.run("worker", "start", "--detach", "--count", "1")
    job = home.enqueue(tracked(out, 1.5))
    wait_until(lambda: lines(out), 15, "the job to start")
    home.run("worker", "stop")  # returns once the worker has exited
    assert home.job(job)["state"] == "completed"
    assert lines(out) == [f"start {job} 1", f"end {job} 1"]
    assert home.running_workers() == {}


def test_sigkilled_worker_job_is_recovered_and_logged(home: Home, tmp_path: Path) -> None:
    home.fast()
    out = tmp_path / "runs"
    home.run("worker", "start", "--detach", "--count", "1")
    job = home.enqueue(tracked(out, 2))
    wait_until(lambda: lines(out), 15, "the job to start")
    ((name, pid),) = home.running_workers().items()
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # supervisord starts a new worker; the monitor recovers the job; it runs again.
    wait_until(lambda: home.job(job)["state"] == "completed", 30, "the job to complete")
    assert time.monotonic() - t_kill < 2 + 0.3 + 2 + 10  # hb timeout + interval + run + slack
    new_pid = home.running_workers().get(name)
    assert new_pid and new_pid != pid
    data = home.job(job)
    assert data["attempts"] == 2
    reasons = [e["reason"] for e in data["history"]]
    assert "worker_died" in reasons  # its pid is gone on this host
    # The first attempt was killed with its worker's death: it never ended.
    assert lines(out) == [f"start {job} 1", f"start {job} 2", f"end {job} 2"]
    logs = [r for r in home.recovery_logs() if r["event"] == "job_recovered"]
    assert len(logs) == 1
    rec = logs[0]
    for key in (
        "time",
        "reason",
        "job_id",
        "attempt",
        "state_before",
        "state_after",
        "worker_id",
        "host",
        "pid",
        "command",
    ):
        assert key in rec, key
    assert rec["job_id"] == job and rec["reason"] == "worker_died" and rec["pid"] == pid
    assert rec["state_before"] == "processing" and rec["state_after"] == "failed"
    assert rec["time"].endswith("Z")
    for f in (home.path / "logs").glob("recovered_jobs_*.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_sigstopped_worker_is_declared_stale_and_its_late_result_dropped(home: Home, tmp_path: Path) -> None:
    home.fast()
    out = tmp_path / "runs"
    home.run("worker", "start", "--detach", "--count", "2")
    # Longer than heartbeat_timeout (2 s): the stall is noticed while the job still runs.
    job = home.enqueue(tracked(out, 4))
    wait_until(lambda: lines(out), 15, "the job to start")
    holder = home.job(job)["worker_id"]
    pid = int(holder.split("-")[-2])
    os.kill(pid, signal.SIGSTOP)
    try:
        # The monitor declares it stale, kills its job and the other worker reruns it.
        wait_until(lambda: home.job(job)["state"] == "completed", 30, "the job to complete elsewhere")
        assert home.job(job)["worker_id"] != holder
    finally:
        os.kill(pid, signal.SIGCONT)
    first = home.job(job)
    # The stopped worker wakes up, finds its lease gone, and changes nothing.
    wait_until(lambda: home.status()["workers"] == 2, 20, "the resumed worker to heartbeat again")
    after = home.job(job)
    assert after["history"] == first["history"]
    assert after["state"] == "completed" and after["attempts"] == 2
    # The first attempt was killed before the retry started: no "end ... 1".
    assert f"end {job} 1" not in lines(out)
    assert lines(out)[-1] == f"end {job} 2"


def test_job_ignoring_sigterm_is_killed_with_its_children(home: Home, tmp_path: Path) -> None:
    home.fast()
    pids = tmp_path / "pids"
    home.run("worker", "start", "--detach", "--count", "1")
    cmd = (
        f"trap '' TERM; (trap '' TERM; echo $$ >> {pids}; sh -c 'echo $$ >> {pids}; exec sleep 60') & "
        f"echo $$ >> {pids}; sleep 60"
    )
    job = home.enqueue(cmd, "--timeout", "1", "--max-retries", "0")
    wait_until(lambda: home.job(job)["state"] == "dead", 30, "the job to time out")
    data = home.job(job)
    assert "timeout" in (data["error"] or "")
    recorded = [int(x) for x in pids.read_text().split()]
    assert recorded
    wait_until(lambda: not any(_alive(p) for p in recorded), 10, "every process of the job to be gone")
    assert home.job_pids() == []


def test_monitor_restarted_after_sigkill_keeps_recovering(home: Home, tmp_path: Path) -> None:
    home.fast()
    out = tmp_path / "runs"
    home.run("worker", "start", "--detach", "--count", "1")
    mon = home.sv_processes()["monitor:monitor"]["pid"]
    os.kill(mon, signal.SIGKILL)
    wait_until(
        lambda: (
            home.sv_processes()["monitor:monitor"]["state"] == "RUNNING"
            and home.sv_processes()["monitor:monitor"]["pid"] != mon
        ),
        20,
        "supervisord to restart the monitor",
    )
    job = home.enqueue(tracked(out, 2))
    wait_until(lambda: lines(out), 15, "the job to start")
    ((_, pid),) = home.running_workers().items()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: home.job(job)["state"] == "completed", 30, "recovery by the new monitor")
    assert any(r["job_id"] == job for r in home.recovery_logs())


def test_foreground_start_sigint_drains_gracefully(home: Home, tmp_path: Path) -> None:
    home.fast()
    out = tmp_path / "runs"
    proc = home.spawn("worker", "start", "--count", "2")
    wait_until(lambda: home.status()["workers"] == 2, 20, "2 live workers")
    jobs = [home.enqueue(tracked(out, 1.5)) for _ in range(2)]
    wait_until(lambda: len(lines(out)) == 2, 15, "both jobs to start")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    for j in jobs:
        assert home.job(j)["state"] == "completed"
    assert home.status()["workers"] == 0
    assert not (home.path / "run" / "sv.sock").exists()


def test_worker_stop_from_another_terminal_ends_foreground_start(home: Home, tmp_path: Path) -> None:
    home.fast()
    out = tmp_path / "runs"
    proc = home.spawn("worker", "start", "--count", "1")
    wait_until(lambda: home.status()["workers"] == 1, 20, "a live worker")
    job = home.enqueue(tracked(out, 1))
    wait_until(lambda: lines(out), 15, "the job to start")
    home.run("worker", "stop")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert home.job(job)["state"] == "completed"


def test_worker_stop_right_after_a_foreground_start_ends_it_without_waiting_for_startsecs(
    home: Home,
) -> None:
    # The stop comes while the worker is still STARTING (supervisord's startsecs):
    # a stopped worker never becomes RUNNING, and the foreground start must not wait
    # for it to before it notices the stop.
    home.fast()
    proc = home.spawn("worker", "start", "--count", "1")
    wait_until(lambda: (home.path / "run" / "supervisord.pid").exists(), 20, "supervisord to start")
    home.run("worker", "stop")
    _, err = proc.communicate(timeout=8)
    assert proc.returncode == 0, err
    assert home.status()["workers"] == 0


def test_sigkill_of_foreground_group_leaves_nothing_running(home: Home, tmp_path: Path) -> None:
    home.fast()
    out = tmp_path / "runs"
    proc = home.spawn("worker", "start", "--count", "2", start_new_session=True)
    wait_until(lambda: home.status()["workers"] == 2, 20, "2 live workers")
    jobs = [home.enqueue(tracked(out, 0.3)) for _ in range(6)]
    wait_until(lambda: lines(out), 15, "a job to start")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    # supervisord dies with its parent; workers notice and stop; no job is orphaned.
    wait_until(lambda: home.status()["workers"] == 0, 30, "all workers to be gone")
    wait_until(lambda: not home.job_pids(), 15, "no job process left")
    # Starting again finishes everything; nothing is left processing.
    home.run("worker", "start", "--detach", "--count", "2")
    wait_until(lambda: all(home.job(j)["state"] == "completed" for j in jobs), 30, "all jobs to complete")
    assert home.status()["processing"] == 0


def test_conf_is_created_in_a_new_home(home: Home) -> None:
    assert not (home.path / "conf").exists()
    home.run("worker", "start", "--detach", "--count", "1")
    assert (home.path / "conf" / "supervisord.conf").is_file()
    sv = home.path / ".." / home.path.name / "conf" / "supervisord.conf"
    assert "program:workers_00" in (sv.parent / "workers.conf").read_text()


@pytest.mark.slow
def test_default_settings_rerun_a_sigkilled_workers_job_within_60s(home: Home, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    home.run("worker", "start", "--detach", "--count", "1")
    job = home.enqueue(tracked(out, 3))
    wait_until(lambda: lines(out), 20, "the job to start")
    ((_, pid),) = home.running_workers().items()
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: home.job(job)["state"] == "completed", 60, "the job to run again and complete")
    assert time.monotonic() - t_kill < 60
    assert home.job(job)["attempts"] == 2


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def test_two_homes_have_their_own_supervisord(home: Home, tmp_path: Path) -> None:
    import shutil
    import tempfile

    from tests.e2e.conftest import Home as H

    other = H(Path(tempfile.mkdtemp(prefix="qe", dir="/tmp")))
    try:
        home.fast()
        other.fast()
        home.run("worker", "start", "--detach", "--count", "2")
        other.run("worker", "start", "--detach", "--count", "1")
        wait_until(lambda: home.status()["workers"] == 2 and other.status()["workers"] == 1, 20, "both pools")
        a = home.enqueue("echo a")
        b = other.enqueue("echo b")
        wait_until(lambda: home.job(a)["state"] == "completed", 15, "home's job")
        wait_until(lambda: other.job(b)["state"] == "completed", 15, "the other home's job")
        # Stopping one home leaves the other running.
        home.run("shutdown")
        assert other.status()["workers"] == 1
        assert len(other.running_workers()) == 1
        other.run("shutdown")
    finally:
        other.cleanup()
        shutil.rmtree(other.path, ignore_errors=True)
