"""cpu_affinity=auto: a worker keeps to one CPU while its jobs may use all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from queuectl import affinity, executor
from tests.helpers import clean_env

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 CPUs")


#: The job's own process (`exec`, not an early child of its shell) reads its mask.
OWN_MASK = "sleep 0.2; exec grep Cpus_allowed_list /proc/self/status"


def drain_one(home: Path, *config: tuple[str, str], command: str = OWN_MASK) -> tuple[dict[str, object], str]:
    q = [sys.executable, "-m", "queuectl", "--home", str(home)]
    env = clean_env()
    for key, value in config:
        subprocess.run([*q, "config", "set", key, value], check=True, env=env, capture_output=True)
    job = subprocess.run(
        [*q, "enqueue", command],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    run = subprocess.run(
        [*q, "worker", "run", "--burst"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    started = next(json.loads(line) for line in run.stderr.splitlines() if '"worker_started"' in line)
    logs = subprocess.run([*q, "logs", job], check=True, env=env, capture_output=True, text=True).stdout
    return started, logs


def allowed_list() -> str:
    with open("/proc/self/status") as f:
        return next(line for line in f if line.startswith("Cpus_allowed_list")).split(":")[1].strip()


def test_auto_is_the_default_pins_the_worker_and_widens_its_jobs_shell(tmp_path: Path) -> None:
    started, logs = drain_one(tmp_path)
    assert started["cpu"] in os.sched_getaffinity(0)
    assert logs.split(":")[1].strip() == allowed_list()


def test_off_leaves_placement_to_the_kernel(tmp_path: Path) -> None:
    started, logs = drain_one(tmp_path, ("cpu_affinity", "off"))
    assert started["cpu"] is None
    assert logs.split(":")[1].strip() == allowed_list()


def test_a_job_is_widened_soon_after_its_start_not_only_at_the_first_check(tmp_path: Path) -> None:
    # 50 ms in, well before the first check tick (0.25 s): the first widening
    # (executor.WIDEN_AFTER) has reached the shell, so what it execs inherits every CPU.
    _, logs = drain_one(tmp_path, command="sleep 0.05; exec grep Cpus_allowed_list /proc/self/status")
    assert logs.split(":")[1].strip() == allowed_list()


def test_a_pipeline_forked_at_once_is_widened_too(tmp_path: Path) -> None:
    # Both halves of the pipeline are forked by the shell in its first microseconds,
    # before the job's tree is first widened (executor.WIDEN_AFTER): each widening walks
    # the shell's children too, and the second walks the whole tree again.
    _, logs = drain_one(
        tmp_path,
        command="grep Cpus_allowed_list /proc/self/status | cat; sleep 0.4; "
        "grep Cpus_allowed_list /proc/self/status | cat",
    )
    masks = [line.split(":")[1].strip() for line in logs.splitlines() if line.startswith("Cpus_allowed_list")]
    # The first grep may, rarely, have run before any widening reached it (forked
    # before the shell itself was widened); the second is forked by a widened shell.
    assert masks[-1] == allowed_list() and len(masks) == 2


def test_widen_reaches_every_process_forked_while_narrow() -> None:
    """A tree built entirely while pinned to one CPU (children, grandchildren, a
    second thread) is widened as a whole by one call."""
    cpus = sorted(os.sched_getaffinity(0))
    script = (
        "import os, sys, threading, time\n"
        f"os.sched_setaffinity(0, {{{cpus[0]}}})\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "r, w = os.pipe()\n"
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        if os.fork() == 0:\n"
        "            os.write(w, b'x'); time.sleep(30); os._exit(0)\n"
        "        time.sleep(30); os._exit(0)\n"
        "assert os.read(r, 1) + os.read(r, 1) == b'xx'\n"  # both grandchildren exist
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        tree = _tree(proc.pid)
        assert len(tree) == 1 + 2 + 2
        assert all(os.sched_getaffinity(t) == {cpus[0]} for p in tree for t in _tids(p))
        widened = affinity.widen(proc.pid, frozenset(cpus))
        assert widened == 2 + 4  # the parent's two threads, four single-threaded children
        assert all(os.sched_getaffinity(t) == set(cpus) for p in tree for t in _tids(p))
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _run_pinned(job: executor.Command, files: executor.OutputFiles) -> executor.Outcome:
    """executor.run from this process pinned to one CPU, as a worker with
    cpu_affinity=auto is; the process's mask is restored after."""
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    try:
        return executor.run(job, files)
    finally:
        os.sched_setaffinity(0, mask)


def test_the_shell_is_widened_at_once_and_its_tree_walked_later(monkeypatch: pytest.MonkeyPatch) -> None:
    # The shell at once (affinity.widen_one): what it forks inherits the wide mask, also
    # a daemon it detaches (`setsid -f`), which no walk of its tree would find.  Then
    # the tree, at executor.WIDEN_AFTER, for as long as the job runs.
    cpus = frozenset(os.sched_getaffinity(0))
    shells: list[int] = []
    walks: list[int] = []
    monkeypatch.setattr(executor, "widen_one", lambda pid, c: shells.append(pid) or True)
    monkeypatch.setattr(executor, "widen", lambda pid, c: walks.append(pid) or 1)
    files = executor.OutputFiles()
    try:
        for command, expected_walks in (("sleep 0.05", 1), ("sleep 0.4", 2)):
            shells.clear()
            walks.clear()
            job = executor.Command(command=command, timeout=10, env={"PATH": os.environ["PATH"]}, cpus=cpus)
            assert _run_pinned(job, files).ok
            assert len(shells) == 1 and walks == shells * expected_walks, command
        # Jobs shorter than the first walk (executor.WIDEN_AFTER) are never walked; on a
        # loaded machine a `true` may take longer now and then, not ten times running.
        walks.clear()
        job = executor.Command(command="true", timeout=10, env={"PATH": os.environ["PATH"]}, cpus=cpus)
        for _ in range(10):
            assert _run_pinned(job, files).ok
        assert len(walks) < 10
    finally:
        files.close()


def _tids(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def _tree(pid: int) -> list[int]:
    out = [pid]
    for tid in _tids(pid):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            for child in f.read().split():
                out.extend(_tree(int(child)))
    return out


def test_bad_value_is_rejected(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "queuectl",
            "--home",
            str(tmp_path),
            "config",
            "set",
            "cpu_affinity",
            "sometimes",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "auto, off" in proc.stderr


def test_workers_take_free_cpus_first_then_share_them(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    slots = [affinity.take_cpu(tmp_path / "run", cpus) for _ in range(2 * len(cpus) + 1)]
    try:
        assert all(s is not None for s in slots)
        taken = [s.cpu for s in slots if s is not None]
        # one worker per CPU, then a second on each, then a third on the first
        assert taken == cpus + cpus + cpus[:1]
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
        # a worker that stops frees its CPU for the next one to start
        slots[1].release()  # type: ignore[union-attr]
        again = affinity.take_cpu(tmp_path / "run", cpus)
        assert again is not None and again.cpu == cpus[1]
        again.release()
    finally:
        for s in slots:
            if s is not None:
                s.release()


def test_a_read_only_home_leaves_the_worker_unpinned(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    assert affinity.take_cpu(tmp_path / "run", sorted(os.sched_getaffinity(0))) is None


def test_bare_workers_started_together_take_different_cpus(tmp_path: Path) -> None:
    """Two `worker run` processes started at the same instant, five times over: they
    never both take the same CPU (a rank read from the workers table could: each could
    count the other before or after it registered)."""
    cpus = sorted(os.sched_getaffinity(0))
    env = clean_env()
    for attempt in range(5):
        home = tmp_path / f"h{attempt}"
        home.mkdir()
        q = [sys.executable, "-m", "queuectl", "--home", str(home)]
        # Two jobs, one for each worker: both stay up together past their start.
        two = '{"command": "sleep 0.3"}\n' * 2
        subprocess.run([*q, "enqueue", "-"], input=two, text=True, check=True, env=env, capture_output=True)
        procs = [
            subprocess.Popen([*q, "worker", "run", "--burst"], env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=60)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        started = [
            next(json.loads(line) for line in out.splitlines() if '"worker_started"' in line) for out in outs
        ]
        assert sorted(s["cpu"] for s in started) == cpus[:2], started
