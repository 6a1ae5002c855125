"""The chaos scenarios, as plain functions over a Cluster: each runs a workload,
injects its fault (or none, with faults=False, for the fault-free baseline),
drains, checks the invariants and returns its figures.  tests/chaos/test_*.py run
them small; tests/chaos/reliability.py runs them larger for docs/reliability.md."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.harness import (
    Cluster,
    FaultLog,
    Report,
    Workload,
    check,
    kill_random_workers,
    recovery_delays,
    wait_until,
)


@dataclass
class Result:
    scenario: str
    backend: str
    jobs: int
    faults: int
    report: Report
    seconds: float
    delays: list[float] = field(default_factory=list)
    notes: str = ""

    @property
    def throughput(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def row(self) -> dict[str, Any]:
        d = self.delays
        return {
            "scenario": self.scenario,
            "backend": self.backend,
            "jobs": self.jobs,
            "faults": self.faults,
            "lost": self.report.lost,
            "duplicates": self.report.duplicates,
            "explained": self.report.explained,
            "recoveries": self.report.recoveries,
            "recovery_median_s": statistics.median(d) if d else None,
            "recovery_max_s": max(d) if d else None,
            "seconds": self.seconds,
            "jobs_per_s": self.throughput,
            "problems": len(self.report.problems),
            "notes": self.notes,
        }


def _backend(c: Cluster) -> str:
    return "sqlite" if c.is_sqlite else "postgres"


def _settle(c: Cluster, timeout: float = 30) -> None:
    """Drained, nothing processing, and no job process left on this host."""
    wait_until(c.drained, timeout, f"the queue to drain ({c.counts()})")
    wait_until(lambda: not c.job_pids(), 15, "every job process to be gone")


def _finish(c: Cluster, w: Workload, name: str, faults: FaultLog, started: float, **check_kw: Any) -> Result:
    seconds = time.monotonic() - started
    rep = check(c, w, **check_kw)
    return Result(name, _backend(c), len(w.expected), faults.count, rep, seconds, recovery_delays(c, faults))


# --- SIGKILL of random workers during a drain ------------------------------------------


def random_kills(
    c: Cluster, *, jobs: int = 200, workers: int = 2, every: float = 1.0, faults: bool = True, seed: int = 1
) -> Result:
    c.fast()
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, fail_every=25, seed=seed))
    started = time.monotonic()
    c.start(workers)
    log = FaultLog()
    if faults:
        kill_random_workers(
            c, log, every=every, until=c.drained, rng=random.Random(seed), limit=60 + jobs / 5
        )
    _settle(c, 60 + jobs / 5)
    return _finish(c, w, "random worker SIGKILL", log, started)


# --- failpoints: crashes at named points, deterministic --------------------------------


def failpoint(c: Cluster, point: str, *, jobs: int = 30, crashes: int = 4) -> Result:
    """`crashes` bare processes with QUEUECTL_FAILPOINT=point die there one after the
    other (each recovers the previous one's job at start-up), then two plain burst
    workers drain the rest."""
    c.fast()
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, sleep=(0.01, 0.03)))
    started = time.monotonic()
    log = FaultLog()
    for _ in range(crashes):
        if point == "monitor_after_cas":
            # A worker crashes after its claim; a monitor pass dies right after
            # the compare-and-set that recovers that job, before its audit log.
            c.spawn("worker", "run", failpoint="after_claim_commit").wait(timeout=60)
            proc = c.spawn("monitor", "run", failpoint=point)
        else:
            proc = c.spawn("worker", "run", failpoint=point)
        code = proc.wait(timeout=60)
        assert code == 137, f"{point}: exited {code}, not at the failpoint"
        log.other.append(time.time())
    _drain_in_bursts(c)
    if point == "monitor_after_cas":
        # Each killed pass left its recovery in the audit outbox: the next pass that
        # completes writes it (here an operator's `recover`, so as not to wait for
        # the dead passes' leases to expire).
        c.run("recover")
    return _finish(c, w, f"failpoint {point}", log, started)


def trail_crashes(c: Cluster, point: str, *, jobs: int = 30, crashes: int = 3) -> Result:
    """Round by round, jobs are enqueued (their events wait to be sealed: enqueue
    does not flush) and a worker with QUEUECTL_FAILPOINT=point dies in the audit
    trail's flush: after sealing, in the middle of its append, or after the append
    before recording it.  Then burst workers drain the rest."""
    c.fast()
    w = Workload(c.path / "runs")
    started = time.monotonic()
    log = FaultLog()
    per_round = max(1, jobs // crashes)
    for i in range(crashes):
        w.enqueue(c, w.specs(per_round, sleep=(0.01, 0.03), prefix=f"r{i}-"))
        code = c.spawn("worker", "run", failpoint=point).wait(timeout=60)
        assert code == 137, f"{point}: exited {code}, not at the failpoint"
        log.other.append(time.time())
    _drain_in_bursts(c)
    return _finish(c, w, f"trail crash {point}", log, started)


def _drain_in_bursts(c: Cluster) -> None:
    """Two burst workers at a time until the queue is drained: burst workers exit
    when nothing is due, even with a retry waiting out its backoff."""
    deadline = time.monotonic() + 120
    while not c.drained():
        assert time.monotonic() < deadline, f"no drain: {c.counts()}"
        drainers = [c.spawn("worker", "run", "--burst", "--poll-interval", "0.05") for _ in range(2)]
        for d in drainers:
            assert d.wait(timeout=120) == 0
    _settle(c)


# --- SIGSTOP a worker holding a job, let it be recovered, SIGCONT --------------------


def sigstop(c: Cluster, *, jobs: int = 40, rounds: int = 2) -> Result:
    """Round by round: a long job (3 s, > heartbeat_timeout) starts, its worker is
    SIGSTOPped until the job is recovered (its lease moves on), then SIGCONTed: the
    old run was killed before the retry, and the late result is dropped."""
    c.fast()
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, sleep=(0.05, 0.2)))
    started = time.monotonic()
    c.start(2)
    log = FaultLog()
    for r in range(rounds):
        jid = f"long{r}"
        w.enqueue(c, [{"id": jid, "command": w.command(3.0), "max_retries": 3, "priority": 10}])
        job = wait_until(lambda j=jid: (x := c.store.get(j)) and x.state.value == "processing" and x, 30, jid)
        pid = int((job.worker_id or "").split("-")[-2])
        # Stopped mid-run (its start line written), not between its claim and spawn.
        wait_until(
            lambda j=jid, n=job.lease: any(r[:3] == ("start", j, n) for r in w.runs()), 30, f"{jid} to start"
        )
        os.kill(pid, signal.SIGSTOP)
        log.kills.append((time.time(), pid))
        try:
            wait_until(lambda j=jid, n=job.lease: c.store.get(j).lease > n, 30, f"{jid} recovered")
        finally:
            os.kill(pid, signal.SIGCONT)
    _settle(c, 60)
    return _finish(c, w, "SIGSTOP/SIGCONT of a worker", log, started)


# --- the monitor killed mid-pass, and extra monitors at once ----------------------------


def monitor_chaos(
    c: Cluster, *, jobs: int = 150, every: float = 0.7, seed: int = 3, faults: bool = True
) -> Result:
    """Two extra bare monitors beside supervisord's; random SIGKILLs of workers and of
    the supervised monitor, alternately."""
    c.fast()
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, seed=seed))
    started = time.monotonic()
    c.start(2)
    for _ in range(2):
        c.spawn("monitor", "run", name="monitor")
    log = FaultLog()
    rng = random.Random(seed)
    deadline = time.monotonic() + 120
    turn = 0
    while not c.drained():
        assert time.monotonic() < deadline, f"no drain: {c.counts()}"
        turn += 1
        pid = c.monitor_pid() if turn % 2 else None
        if not faults:
            pid, target = None, "none"
        elif pid is None:
            pool = sorted(c.running_workers().values())
            pid = rng.choice(pool) if pool else None
            target = "worker"
        else:
            target = "monitor"
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                if target == "worker":
                    log.kills.append((time.time(), pid))
                else:
                    log.other.append(time.time())
        time.sleep(every)
    _settle(c, 60)
    return _finish(c, w, "monitor SIGKILL + 3 monitors", log, started)


# --- supervisord SIGKILLed with its process group, then started again -----------------


def supervisord_kill(c: Cluster, *, jobs: int = 120, everything: bool = True, faults: bool = True) -> Result:
    """SIGKILL supervisord's process group mid-drain (with `everything`, also every
    worker's and the monitor's, as a `kill -9` of the whole tree would), then `worker
    start` again: every job completes, none runs twice unexplained."""
    c.fast()
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, sleep=(0.05, 0.15)))
    started = time.monotonic()
    c.start(2)
    wait_until(lambda: c.counts()["completed"] >= jobs // 4, 60, "a quarter of the jobs done")
    log = FaultLog()
    if not faults:
        _settle(c, 60)
        return _finish(c, w, "supervisord (no fault)", log, started)
    sv = c.supervisord_pid()
    assert sv
    members = list(c.processes().values())
    os.killpg(sv, signal.SIGKILL)  # supervisord runs in its own session: its group
    t = time.time()
    if everything:
        for _state, pid in members:
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    log.kills.append((t, pid))
    log.other.append(t)
    # The workers left alive (group kill only) notice and stop by themselves.
    wait_until(lambda: not any(_alive(pid) for _s, pid in members if pid), 30, "the old workers to exit")
    if not everything:
        # Each worker recorded its job (or gave an unstarted one back) before it
        # exited: nothing waits for the next start as `processing`.
        assert c.counts()["processing"] == 0, c.counts()
        assert not c.store.workers(), c.store.workers()
        wait_until(lambda: not c.job_pids(), 15, "every job process to be gone")
    c.start(2)
    _settle(c, 60)
    return _finish(c, w, "supervisord " + ("tree SIGKILL" if everything else "group SIGKILL"), log, started)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


# --- jobs that ignore SIGTERM and fork grandchildren past their timeout ---------------


def stubborn_timeouts(c: Cluster, *, jobs: int = 40, stubborn: int = 6) -> Result:
    c.fast(kill_grace="0.3")
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, sleep=(0.02, 0.05)))
    # Ignores TERM, forks a TERM-ignoring child in its group and one in a new session.
    extra = "trap '' TERM; (trap '' TERM; sleep 60) & setsid sleep 60 & "
    bad = [
        {"id": f"stub{i}", "command": w.command(60, extra=extra), "max_retries": 0, "timeout": 0.5}
        for i in range(stubborn)
    ]
    w.enqueue(c, bad)
    for b in bad:
        w.expected[b["id"]] = "dead"
    started = time.monotonic()
    c.start(2)
    _settle(c, 60)
    return _finish(
        c,
        w,
        "SIGTERM-ignoring jobs with grandchildren",
        FaultLog(other=[0.0] * stubborn),
        started,
        timeouts=True,
    )


# --- a database held busy by an outside writer -----------------------------------------


def busy_database(c: Cluster, *, jobs: int = 150, hold: float = 4.0, faults: bool = True) -> Result:
    """An outside transaction holds the write lock (SQLite: BEGIN IMMEDIATE;
    PostgreSQL: LOCK TABLE jobs) for `hold` seconds mid-drain: workers wait and carry
    on, none dies, and (heartbeat_timeout above the hold) nothing is recovered."""
    c.fast(heartbeat_timeout="10", heartbeat_interval="0.5")
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, sleep=(0.02, 0.06)))
    started = time.monotonic()
    c.start(2)
    before = wait_until(lambda: len(r := c.running_workers()) == 2 and r, 30, "2 workers")
    log = FaultLog()
    if faults:
        wait_until(lambda: c.counts()["completed"] >= jobs // 5, 60, "a fifth of the jobs done")
        log.other.append(time.time())
        _hold_lock(c, hold)
        assert c.counts()["completed"] < jobs, "the drain ended before the lock was released"
    _settle(c, 60)
    after = c.running_workers()
    assert after == before, f"a worker died or was restarted: {before} -> {after}"
    res = _finish(c, w, f"database locked {hold:g}s", log, started)
    if faults and res.report.recoveries:
        res.report.problems.append(f"{res.report.recoveries} recoveries: a waiting worker was taken for dead")
    return res


def _hold_lock(c: Cluster, hold: float) -> None:
    if c.is_sqlite:
        import apsw

        conn = apsw.Connection(c.db_url)
        # Take the lock as any writer would, waiting its turn: the workers (and the
        # monitor's passes) hold it for a moment thousands of times a second.
        conn.set_busy_timeout(10_000)
        try:
            conn.execute("BEGIN IMMEDIATE")
            time.sleep(hold)  # the fault itself: hold the write lock this long
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(c.db_url) as conn, conn.transaction():
        conn.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        time.sleep(hold)


# --- PostgreSQL: the workers' connections terminated -----------------------------------


def pg_terminate(c: Cluster, *, jobs: int = 150, every: float = 1.0, faults: bool = True) -> Result:
    """pg_terminate_backend on every queuectl connection to this schema's server,
    every `every` seconds during the drain."""
    import psycopg

    c.fast()
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, sleep=(0.02, 0.06)))
    started = time.monotonic()
    c.start(2)
    wait_until(lambda: len(c.running_workers()) == 2, 30, "2 workers")
    log = FaultLog()
    deadline = time.monotonic() + 120
    with psycopg.connect(c.db_url, autocommit=True) as admin:
        while faults and not c.drained():
            assert time.monotonic() < deadline, f"no drain: {c.counts()}"
            own = admin.execute("SELECT pg_backend_pid()").fetchone()
            n = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'queuectl' AND pid <> %s",
                (own[0] if own else 0,),
            ).fetchone()
            if n and n[0]:
                log.other.append(time.time())
            time.sleep(every)
    _settle(c, 60)
    return _finish(c, w, "pg_terminate_backend of the workers", log, started)


def pg_cluster_version() -> str | None:
    """The local Debian PostgreSQL cluster this process may restart (root and
    pg_ctlcluster), or None."""
    import shutil

    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        return None
    versions = sorted((v for v in os.listdir("/etc/postgresql") if v.isdigit()), key=int)
    return versions[-1] if versions else None


def pg_restart(c: Cluster, *, jobs: int = 150, faults: bool = True) -> Result:
    """The PostgreSQL server restarted (`pg_ctlcluster ... restart`) once the drain is
    under way: workers reconnect, keep their results, and nothing is lost or doubled."""
    import subprocess

    c.fast()
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(jobs, sleep=(0.02, 0.06)))
    started = time.monotonic()
    c.start(2)
    wait_until(lambda: len(c.running_workers()) == 2, 30, "2 workers")
    log = FaultLog()
    if faults:
        version = pg_cluster_version()
        assert version is not None, "restarting PostgreSQL needs root and pg_ctlcluster"
        wait_until(lambda: c.counts().get("completed", 0) >= jobs // 5, 60, "the drain to get going")
        log.other.append(time.time())
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    _settle(c, 90)
    return _finish(c, w, "PostgreSQL server restarted mid-drain", log, started)


# --- soak: random kills for minutes --------------------------------------------------


def soak(c: Cluster, *, minutes: float, workers: int = 3, every: float = 1.0, seed: int = 7) -> Result:
    """Keep the queue busy (batches of 200 jobs, 1 in 25 failing) for `minutes`,
    SIGKILLing a random worker every `every` seconds and the monitor every tenth
    time; then drain and check every invariant over everything that ran."""
    c.fast()
    w = Workload(c.path / "runs")
    rng = random.Random(seed)
    c.start(workers)
    log = FaultLog()
    started = time.monotonic()
    end = started + minutes * 60
    batch = 0
    n = 0
    while time.monotonic() < end:
        if c.counts()["pending"] < 100:
            w.enqueue(c, w.specs(200, fail_every=25, seed=seed + batch))
            batch += 1
        n += 1
        pid = c.monitor_pid() if n % 10 == 0 else None
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                log.other.append(time.time())
        else:
            pool = sorted(c.running_workers().values())
            if pool:
                victim = rng.choice(pool)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    log.kills.append((time.time(), victim))
        time.sleep(every)  # the fault rate itself, not a wait for a condition
    _settle(c, 120)
    return _finish(c, w, f"soak: random SIGKILLs for {minutes:g} min", log, started)
