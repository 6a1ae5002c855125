"""Jobs that try to outlive their attempt: real `python -m queuectl worker run`
processes run jobs that leave their session, scrub their environment or detach a
daemon; nothing of an attempt may outlive it, and after a SIGKILLed worker the
recovery finds and kills what its job left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl import contain, procs
from tests.helpers import FAST, QHome, alive, proc_state, wait_until

FAST_POLL = ("--poll-interval", "0.05")
#: Both ways a worker contains its jobs: a cgroup of its own where the machine
#: delegates one, and the subreaper with the stdin marker everywhere.
MODES = ["auto", "off"]


def pid_in(path: Path) -> int | None:
    try:
        text = path.read_text().split()
    except FileNotFoundError:
        return None
    return int(text[0]) if text else None


def until_written(path: Path) -> str:
    """Shell: wait until a detached child has written its pid (the attempt's end
    would otherwise kill it first)."""
    return f"while [ ! -s {path} ]; do sleep 0.01; done"


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids a test's jobs left: SIGKILLed afterwards whatever the outcome."""
    left: list[int] = []
    try:
        yield left
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start(qhome: QHome, mode: str, **config: str) -> None:
    qhome.configure(job_cgroup=mode, **config)


@pytest.mark.parametrize("mode", MODES)
def test_a_daemon_detached_with_setsid_dies_with_its_attempt_under_burst(
    qhome: QHome, tmp_path: Path, pids: list[int], mode: str
) -> None:
    # setsid -f forks: the daemon is in a session of its own and its parent has
    # exited, so neither the group kill nor any session walk of the job reaches it.
    pidfile = tmp_path / "daemon.pid"
    start(qhome, mode)
    qhome.enqueue(f"setsid -f sh -c 'echo $$ > {pidfile}; exec sleep 303'; {until_written(pidfile)}")
    worker = qhome.spawn_worker("--burst", *FAST_POLL)
    assert worker.wait(timeout=30) == 0, qhome.worker_log()
    pid = pid_in(pidfile)
    assert pid is not None
    pids.append(pid)
    wait_until(lambda: not alive(pid), 5, "the detached daemon to be killed")


@pytest.mark.parametrize("mode", MODES)
def test_a_scrubbed_session_leaver_dies_when_its_attempt_times_out(
    qhome: QHome, tmp_path: Path, pids: list[int], mode: str
) -> None:
    pidfile = tmp_path / "left.pid"
    start(qhome, mode, kill_grace="0.5")
    job = qhome.enqueue(
        f"env -i setsid sh -c 'echo $$ > {pidfile}; exec sleep 304' & sleep 60",
        "--timeout",
        "2",
        "--max-retries",
        "0",
    )
    worker = qhome.spawn_worker("--burst", *FAST_POLL)
    pid = wait_until(lambda: pid_in(pidfile), 10, "the job to start")
    pids.append(pid)
    assert worker.wait(timeout=30) == 0, qhome.worker_log()
    assert qhome.job(job)["state"] == "dead"
    wait_until(lambda: not alive(pid), 5, "the session leaver to be killed")


@pytest.mark.parametrize("mode", MODES)
def test_leftovers_are_killed_and_reaped_while_the_worker_lives_on(
    qhome: QHome, tmp_path: Path, pids: list[int], mode: str
) -> None:
    # The worker is the subreaper of its jobs: what they leave is its child, so it
    # must also reap them (no zombie may stay while the worker idles).
    pidfile = tmp_path / "daemon.pid"
    start(qhome, mode)
    qhome.enqueue(f"setsid -f sh -c 'echo $$ > {pidfile}; exec sleep 305'; {until_written(pidfile)}")
    worker = qhome.spawn_worker(*FAST_POLL)
    try:
        pid = wait_until(lambda: pid_in(pidfile), 10, "the daemon to start")
        pids.append(pid)
        wait_until(lambda: proc_state(pid) is None, 5, f"the daemon {pid} to be killed and reaped")
        assert worker.poll() is None
    finally:
        worker.kill()
        worker.wait(timeout=10)


@pytest.mark.parametrize("mode", MODES)
def test_recovery_of_a_sigkilled_worker_kills_its_scrubbed_job(
    qhome: QHome, tmp_path: Path, pids: list[int], mode: str
) -> None:
    # `exec env -i` leaves no QUEUECTL_JOB_ID to find the job by; its attempt must
    # still be killed before the job may run again, or two attempts overlap.
    runs = tmp_path / "runs"
    start(qhome, mode, **FAST)
    job = qhome.enqueue(f"exec env -i sh -c 'echo $$ >> {runs}; exec sleep 300'", "--max-retries", "1")
    worker = qhome.spawn_worker(*FAST_POLL)
    pid = wait_until(lambda: pid_in(runs), 10, "the job to start")
    pids.append(pid)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    assert alive(pid), "the job died with its worker: nothing left to test"
    proc = qhome.run("recover", "--json")
    assert proc.returncode == 0, proc.stderr
    done = [r for r in json.loads(proc.stdout) if r.get("event") == "job_recovered"]
    assert [(r["job_id"], r["reason"]) for r in done] == [(job, "worker_died")]
    assert pid in done[0]["killed_pids"]
    wait_until(lambda: not alive(pid), 5, "the old attempt to be dead")


def test_cgroup_mode_is_what_the_machine_offers() -> None:
    """`auto` uses a cgroup exactly where one can be made under the worker's own.
    (Not as subreaper: this test process would inherit every daemon other tests
    start, supervisord included, and leave them zombies.)"""
    found = contain.cgroup_home()
    box = contain.Containment.start("t-probe", cgroup=True, subreaper=False)
    try:
        assert (box.cgroup is not None) == (found is not None)
        if box.cgroup is not None:
            assert box.cgroup.path.parent == found
            assert (box.cgroup.path / "cgroup.kill").exists()
    finally:
        box.close()
    off = contain.Containment.start("t-probe-off", cgroup=False, subreaper=False)
    try:
        assert off.cgroup is None
    finally:
        off.close()


@pytest.mark.skipif(contain.cgroup_home() is None, reason="no writable cgroup v2 here")
def test_with_a_cgroup_a_job_that_hides_every_way_is_still_killed_after_its_worker_died(
    qhome: QHome, tmp_path: Path, pids: list[int]
) -> None:
    # No environment, no inherited descriptor, a session of its own, and every other
    # process of its attempt gone: only the attempt's cgroup still names it once its
    # worker (its subreaper) was SIGKILLed.
    pidfile, shellfile = tmp_path / "hidden.pid", tmp_path / "shell.pid"
    start(qhome, "auto", **FAST)
    job = qhome.enqueue(
        f"env -i setsid -f sh -c 'echo $$ > {pidfile}; exec sleep 306 </dev/null >/dev/null 2>&1'; "
        f"{until_written(pidfile)}; echo $$ > {shellfile}; exec sleep 300",
        "--max-retries",
        "1",
    )
    worker = qhome.spawn_worker(*FAST_POLL)
    shell = wait_until(lambda: pid_in(shellfile), 10, "the job to start")
    pid = pid_in(pidfile)
    assert pid is not None
    pids.extend([pid, shell])
    # The worker moves its attempt's tree into its cgroup shortly after the start
    # (at each tick): only what is in it by the worker's death can be found by it.
    wait_until(lambda: procs._job_cgroup(pid) is not None, 10, "the daemon to be in the job cgroup")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    os.kill(shell, signal.SIGKILL)
    wait_until(lambda: not alive(shell), 5, "the job's shell to die")
    assert alive(pid)
    proc = qhome.run("recover", "--json")
    assert proc.returncode == 0, proc.stderr
    done = [r for r in json.loads(proc.stdout) if r.get("event") == "job_recovered"]
    assert [r["job_id"] for r in done] == [job]
    assert pid in done[0]["killed_pids"]
    wait_until(lambda: not alive(pid), 5, "the hidden daemon to be dead")


def test_a_scan_while_a_contained_worker_drains_never_takes_the_worker_for_a_job(qhome: QHome) -> None:
    # A monitor's orphan sweep kills what it takes for a finished attempt's process:
    # the worker itself must never be one, whatever instant the scan catches it at.
    from queuectl.config import resolve_paths

    start(qhome, "auto")
    proc = qhome.run("enqueue", "-", input='{"command": "true"}\n' * 300)
    assert proc.returncode == 0, proc.stderr
    key = procs.queue_key(resolve_paths(str(qhome.path)).db_url)
    worker = qhome.spawn_worker("--burst", *FAST_POLL)
    scans = 0
    while worker.poll() is None:
        assert worker.pid not in {p.pid for p in procs.job_processes(key)}
        scans += 1
    assert worker.returncode == 0, qhome.worker_log()
    assert scans > 0


def test_what_a_running_job_left_and_has_exited_is_reaped_before_the_attempt_ends(
    qhome: QHome, tmp_path: Path, pids: list[int]
) -> None:
    # An orphan re-parented to the worker is its child: once it exits it stays a
    # zombie until the worker reaps it, and a long job may leave many.
    pidfile, go = tmp_path / "orphan.pid", tmp_path / "go"
    qhome.configure(job_cgroup="off")
    qhome.enqueue(
        f"setsid -f sh -c 'echo $$ > {pidfile}; while [ ! -e {go} ]; do sleep 0.01; done'; sleep 30",
        "--timeout",
        "60",
    )
    worker = qhome.spawn_worker(*FAST_POLL)
    try:
        pid = wait_until(lambda: pid_in(pidfile), 10, "the orphan to start")
        pids.append(pid)
        go.touch()
        wait_until(lambda: proc_state(pid) is None, 3, f"the exited orphan {pid} to be reaped")
        assert qhome.json("list")[0]["state"] == "processing"
    finally:
        worker.kill()
        worker.wait(timeout=10)


@pytest.mark.skipif(contain.cgroup_home() is None, reason="no writable cgroup v2 here")
def test_a_starting_worker_removes_only_dead_workers_job_cgroups() -> None:
    home = contain.cgroup_home()
    assert home is not None
    # The pid of a process that has exited (reaped by subprocess.run).
    dead_pid = int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True).stdout)
    me = os.getpid()
    dead = home / f"{contain.CGROUP_PREFIX}t-{dead_pid}-aa"
    other = home / f"{contain.CGROUP_PREFIX}not-a-worker"
    live = contain.Containment.start(f"t-{me}-bb", cgroup=True, subreaper=False)
    try:
        assert live.cgroup is not None
        dead.mkdir()
        other.mkdir()
        again = contain.Containment.start(f"t-{me}-cc", cgroup=True, subreaper=False)
        again.close()
        assert not dead.exists()
        assert other.exists()
        assert live.cgroup.path.exists()
    finally:
        live.close()
        for d in (dead, other):
            with contextlib.suppress(OSError):
                d.rmdir()


@pytest.mark.skipif(contain.cgroup_home() is None, reason="no writable cgroup v2 here")
def test_a_process_a_walk_missed_is_moved_into_the_job_cgroup_at_the_next_tick() -> None:
    # A walk of /proc can miss a process in flight (forked during the walk, or
    # re-parented to the worker between two reads of its parents).  Leaving the
    # cgroup after the first tick stands in for that miss: the next tick must
    # still bring it in, or only the marker and environment could ever name it.
    home = contain.cgroup_home()
    assert home is not None
    box = contain.Containment.start(f"t-{os.getpid()}-dd", cgroup=True, subreaper=False)
    child = subprocess.Popen(["sleep", "30"])
    try:
        group = box.cgroup
        assert group is not None
        box.start_attempt(child.pid, b"QUEUECTL_JOB_ID=x\0QUEUECTL_QUEUE=q\0")
        box.tick()
        inside = procs._job_cgroup(child.pid)
        assert inside is not None and inside.endswith(group.path.name)
        (home / "cgroup.procs").write_text(str(child.pid))  # out again, as if missed
        assert procs._job_cgroup(child.pid) is None
        box.tick()
        assert procs._job_cgroup(child.pid) == inside
    finally:
        child.kill()
        child.wait(timeout=10)
        box.close()
