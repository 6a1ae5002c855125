"""supervisord itself dies (SIGKILL) under running workers (docs/reliability.md:
"supervisord killed").  Its children lose their parent and the read end of their
stdout/stderr pipe at once: each worker finishes (or, past stop_timeout, kills) its
running job, records it, unregisters and exits; the monitor ends its pass and exits.
Nothing is left processing or running, and the next `worker start` just works.
Real supervisord, real processes, the chaos checker's invariants on both stores."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from tests.chaos.harness import Cluster, Workload, check, wait_until
from tests.helpers import alive

#: A job that sleeps `seconds` on its first attempt only (so a retry is quick).
FIRST_ONLY = '[ "$QUEUECTL_ATTEMPT" = 1 ] && sleep {seconds}; '


def _processes_in(home: Path) -> list[int]:
    """Every live process whose working directory is in the home (supervisord runs
    its programs from the home; jobs inherit their worker's directory)."""
    found = []
    root = str(home.resolve())
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{name}/cwd")
            if (cwd == root or cwd.startswith(root + os.sep)) and alive(int(name)):
                found.append(int(name))
    return found


def _started(w: Workload, jid: str) -> bool:
    return any(kind == "start" and rid == jid for kind, rid, _, _ in w.runs())


def test_sigkilled_supervisord_leaves_no_job_processing_and_no_process(chaos: Cluster) -> None:
    c = chaos
    # `long` outlives stop_timeout: its worker kills it and records the attempt;
    # `short` ends within stop_timeout: its worker lets it complete.
    c.fast(stop_timeout="3")
    w = Workload(c.path / "runs")
    c.start(2)
    workers = wait_until(lambda: len(c.running_workers()) == 2 and c.running_workers(), 30, "2 workers")
    monitor = wait_until(c.monitor_pid, 30, "the monitor")
    w.enqueue(
        c,
        [
            {"id": "long", "command": w.command(0.1, extra=FIRST_ONLY.format(seconds=60)), "max_retries": 1},
            {"id": "short", "command": w.command(2), "max_retries": 0},
        ],
    )
    wait_until(lambda: _started(w, "long") and _started(w, "short"), 30, "both jobs to start")
    sv = c.supervisord_pid()
    assert sv is not None
    os.kill(sv, signal.SIGKILL)

    # Within stop_timeout (3 s) + kill_grace (0.5 s) + slack, every process of the home is gone.
    mine = [*workers.values(), monitor]
    wait_until(lambda: not any(alive(p) for p in mine), 20, "the workers and the monitor to exit")
    wait_until(lambda: not c.job_pids(), 10, "no job process left")
    wait_until(lambda: not _processes_in(c.path), 10, "no process of the home left")

    # Each worker recorded its own job: nothing processing, no worker registered.
    assert c.counts()["processing"] == 0, c.counts()
    assert c.store.workers() == []
    short = c.store.get("short")
    assert short is not None and short.state.value == "completed"
    long = c.store.get("long")
    assert long is not None and long.state.value == "failed" and long.attempts == 1
    assert "stop" in (long.error or ""), long.error
    # No recovery was needed, and none waits in the outbox; any record names its host and pid.
    assert c.store.audit_pending() == []
    for rec in c.recovery_logs():
        assert rec.get("host") and rec.get("pid"), rec

    # The log lines written after supervisord's pipes closed went to each process's own file.
    own = sorted(p.name for p in (c.path / "logs").glob("*.direct.log"))
    assert own, sorted(p.name for p in (c.path / "logs").iterdir())
    text = "".join((c.path / "logs" / n).read_text() for n in own)
    assert "supervisor_gone" in text and "worker_stopped" in text and "monitor_stopped" in text

    # The next start just works: `long` runs again (quickly) and everything completes.
    c.start(2)
    wait_until(c.drained, 60, "the queue to drain after the restart")
    check(c, w, timeouts=True).ok()


def _foreground(
    c: Cluster, stop_timeout: str = "3"
) -> tuple[subprocess.Popen[bytes], dict[str, int], Workload]:
    """`worker start --count 2` in the foreground, running `long` and `short`."""
    c.fast(stop_timeout=stop_timeout)
    w = Workload(c.path / "runs")
    proc = c.spawn("worker", "start", "--count", "2", name="start")
    workers = wait_until(lambda: len(c.running_workers()) == 2 and c.running_workers(), 30, "2 workers")
    w.enqueue(
        c,
        [
            {"id": "long", "command": w.command(0.1, extra=FIRST_ONLY.format(seconds=60)), "max_retries": 1},
            {"id": "short", "command": w.command(2), "max_retries": 0},
        ],
    )
    wait_until(lambda: _started(w, "long") and _started(w, "short"), 30, "both jobs to start")
    return proc, workers, w


def _all_recorded_and_gone(c: Cluster, workers: dict[str, int]) -> None:
    assert not any(alive(p) for p in workers.values())
    assert c.counts()["processing"] == 0, c.counts()
    assert c.store.workers() == []
    assert c.store.get("short").state.value == "completed"
    # The long job's first attempt was killed by its worker's stop and recorded as
    # failed.  supervisord's own shutdown stops its programs (one per worker) one at a
    # time, so a worker not yet stopped may have run the retry meanwhile (completed):
    # either way the first attempt is recorded, once.
    long = c.store.get("long")
    assert long.state.value in ("failed", "completed"), long
    ended = [e for e in c.store.history("long") if e.from_state == "processing"]
    assert ended[0].to_state == "failed" and len(ended) == long.attempts, ended
    wait_until(lambda: not c.job_pids(), 10, "no job process left")
    wait_until(lambda: not _processes_in(c.path), 10, "no process of the home left")


def test_foreground_start_whose_supervisord_dies_exits_6_once_its_workers_stopped(chaos: Cluster) -> None:
    c = chaos
    proc, workers, w = _foreground(c)
    sv = c.supervisord_pid()
    assert sv is not None
    os.kill(sv, signal.SIGKILL)
    assert proc.wait(timeout=30) == 6
    # It returned only after every worker had recorded its job and exited.
    _all_recorded_and_gone(c, workers)
    said = (c.path / "start-0.log").read_text()
    assert "supervisord died" in said and "Traceback" not in said, said
    c.start(2)
    wait_until(c.drained, 60, "the queue to drain after the restart")
    check(c, w, timeouts=True).ok()


def test_sigkilled_foreground_start_stops_its_workers_the_same_graceful_way(chaos: Cluster) -> None:
    c = chaos
    proc, workers, w = _foreground(c)
    sv = c.supervisord_pid()
    assert sv is not None
    proc.kill()
    # supervisord gets SIGTERM from the kernel and stops its workers gracefully.
    wait_until(lambda: not alive(sv) and not any(alive(p) for p in workers.values()), 30, "all to stop")
    _all_recorded_and_gone(c, workers)
    c.start(2)
    wait_until(c.drained, 60, "the queue to drain after the restart")
    check(c, w, timeouts=True).ok()


def test_a_worker_killed_with_supervisord_is_recovered_by_the_monitors_last_pass(chaos: Cluster) -> None:
    """A worker dies together with supervisord (nobody restarts it) while the other
    worker idles and exits at once: the monitor, woken by its parent's death, runs
    one last pass before it exits.  A long monitor_interval keeps every earlier pass
    (and the workers' fallback passes) out of the way."""
    c = chaos
    c.fast(monitor_interval="30")
    w = Workload(c.path / "runs")
    c.start(2)
    workers = wait_until(lambda: len(c.running_workers()) == 2 and c.running_workers(), 30, "2 workers")
    monitor = wait_until(c.monitor_pid, 30, "the monitor")
    w.enqueue(
        c,
        [{"id": "orphan", "command": w.command(0.1, extra=FIRST_ONLY.format(seconds=30)), "max_retries": 1}],
    )
    wait_until(lambda: _started(w, "orphan"), 30, "the job to start")
    # A worker heartbeats only after its start-up pass: none is still to come.
    wait_until(
        lambda: len(ws := c.store.workers()) == 2 and all(x.heartbeat_at > x.started_at for x in ws),
        30,
        "both workers past their start-up pass",
    )
    job = c.store.get("orphan")
    assert job is not None and job.worker_id is not None
    holder = int(job.worker_id.split("-")[-2])
    sv = c.supervisord_pid()
    assert sv is not None
    os.kill(sv, signal.SIGSTOP)  # it must not restart the worker killed next
    try:
        os.kill(holder, signal.SIGKILL)
        wait_until(lambda: not alive(holder), 10, "the worker to die")
    finally:
        os.kill(sv, signal.SIGKILL)

    mine = [*workers.values(), monitor]
    wait_until(lambda: not any(alive(p) for p in mine), 20, "the workers and the monitor to exit")
    wait_until(lambda: not _processes_in(c.path), 10, "no process of the home left")
    assert not c.job_pids()
    job = c.store.get("orphan")
    assert job is not None and job.state.value == "failed", job
    assert c.store.audit_pending() == []
    (rec,) = [r for r in c.recovery_logs() if r["event"] == "job_recovered"]
    assert rec["job_id"] == "orphan" and rec["reason"] == "worker_died"
    assert rec["host"] and rec["pid"] == holder
    assert rec["recovered_by"].startswith("monitor:"), rec

    c.configure(monitor_interval="0.3")
    c.start(2)
    wait_until(c.drained, 60, "the queue to drain after the restart")
    check(c, w).ok()


def test_ctrl_c_ends_the_wait_of_a_foreground_start_and_the_workers_stop_alone(sqlite_chaos: Cluster) -> None:
    c = sqlite_chaos
    # The long job's worker is still stopping when the wait ends.
    proc, workers, _ = _foreground(c, stop_timeout="8")
    sv = c.supervisord_pid()
    assert sv is not None
    os.kill(sv, signal.SIGKILL)
    said = c.path / "start-0.log"
    wait_until(lambda: "waiting for them" in said.read_text(), 15, "the wait to begin")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 6
    assert "stopped waiting" in said.read_text()
    # Not killed by the Ctrl+C: the worker of `long` records it at its own stop_timeout.
    assert any(alive(p) for p in workers.values())
    wait_until(lambda: not any(alive(p) for p in workers.values()), 30, "the workers to stop alone")
    assert c.counts()["processing"] == 0
    assert not c.store.workers()
