"""The chaos suite's shared parts: a queue home on either store driven through the
real CLI and supervisord, a workload whose jobs record every run, and the checker of
issue 5's invariants.  Plain Python (no pytest) so tests/chaos/reliability.py can
run the same scenarios outside pytest to measure them.

A workload job appends `start <id> <lease> <time>` when it starts and `end <id>
<lease> <time>` when it ends to one file opened for append (`>>`: O_APPEND, one
write per line), so every run of every attempt leaves a trace the database cannot
fake.  The checker then compares that trace, the jobs table, each job's history and
the recovery audit logs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queuectl import procs
from queuectl.models import Event, Job
from queuectl.store import Store, open_store
from tests.helpers import FAST as BASE_FAST

#: Short intervals: a same-host crash is recovered within a few hundred ms.
FAST = {**BASE_FAST, "kill_grace": "0.5"}

#: History reasons that mark an attempt ended by a recovery, not by its own worker.
RECOVERY_REASONS = ("worker_died", "heartbeat_lost", "timeout", "manual")

PG_SERVER = os.environ.get("QUEUECTL_TEST_PG", "postgresql://127.0.0.1:5432/test")


class Timeout(AssertionError):
    pass


def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; raise after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


# --- a queue home ------------------------------------------------------------------------


class Cluster:
    """One queuectl home (a short folder under /tmp, for supervisord's socket) on
    SQLite or on a PostgreSQL URL; every process it started is killed by cleanup()."""

    def __init__(self, db_url: str | None = None, *, path: Path | None = None) -> None:
        self.path = path or Path(tempfile.mkdtemp(prefix="qc", dir="/tmp"))
        self.db_url = db_url or str(self.path / "db" / "queue.db")
        self.is_sqlite = db_url is None or not db_url.startswith("postgres")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUECTL_", "SUPERVISOR_"))}
        self.env["QUEUECTL_HOME"] = str(self.path)
        self.env["PYTHONUNBUFFERED"] = "1"
        if db_url is not None:
            self.env["QUEUECTL_DB"] = db_url
        self.key = procs.queue_key(self.db_url)
        self.bare: list[subprocess.Popen[bytes]] = []
        self._store: Store | None = None

    # --- the CLI -----------------------------------------------------------------------

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "queuectl", *args]

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.cmd(*args),
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"queuectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def configure(self, **values: str) -> None:
        # One process for all keys would be faster, but `config set` takes one pair.
        for key, value in values.items():
            self.run("config", "set", key, value)

    def fast(self, **extra: str) -> None:
        self.configure(**{**FAST, **extra})

    # --- supervisord --------------------------------------------------------------------

    def supervisor(self) -> Any:
        from queuectl.config import resolve_paths
        from queuectl.supervisor import Supervisor

        return Supervisor(resolve_paths(str(self.path), self.db_url))

    def start(self, count: int) -> None:
        self.run("worker", "start", "--detach", "--count", str(count))

    def processes(self) -> dict[str, tuple[str, int]]:
        sv = self.supervisor()
        if not sv.is_running():
            return {}
        return {p.full_name: (p.state, p.pid) for p in sv.processes()}

    def running_workers(self) -> dict[str, int]:
        return {
            n: pid
            for n, (state, pid) in self.processes().items()
            if n.startswith("workers_") and state == "RUNNING"
        }

    def monitor_pid(self) -> int | None:
        state, pid = self.processes().get("monitor:monitor", ("", 0))
        return pid if state == "RUNNING" and pid else None

    def supervisord_pid(self) -> int | None:
        pidfile = self.path / "run" / "supervisord.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().strip())
        return None

    # --- bare processes ------------------------------------------------------------------

    def spawn(self, *args: str, failpoint: str | None = None, name: str = "bare") -> subprocess.Popen[bytes]:
        """`queuectl ARGS` in the background (e.g. `worker run`), its output in a file."""
        env = dict(self.env)
        if failpoint:
            env["QUEUECTL_FAILPOINT"] = failpoint
        log = (self.path / f"{name}-{len(self.bare)}.log").open("wb")
        try:
            proc = subprocess.Popen(
                self.cmd(*args), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        self.bare.append(proc)
        return proc

    # --- what is stored ------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.db_url)
        return self._store

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def drained(self) -> bool:
        c = self.counts()
        return c["pending"] == 0 and c["processing"] == 0 and c["failed"] == 0

    def job_pids(self) -> list[int]:
        return [p.pid for p in procs.job_processes(self.key)]

    def recovery_logs(self) -> list[dict[str, Any]]:
        out = []
        for f in sorted((self.path / "logs").glob("recovered_jobs_*.json")):
            out.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
        return out

    def cleanup(self) -> None:
        """Kill supervisord and everything below it, bare processes and job processes;
        remove the home (the PostgreSQL schema is the caller's)."""
        for p in self.bare:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
        pid = self.supervisord_pid()
        if pid:
            kill_tree(pid)
        for pid in self.job_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None
        shutil.rmtree(self.path, ignore_errors=True)


def children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            if int(data[data.rfind(b")") + 2 :].split()[1]) == pid:
                out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (supervisord and its workers)."""
    below = children(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for child in below:
        kill_tree(child)


# --- PostgreSQL schemas --------------------------------------------------------------------


def pg_available() -> str | None:
    """None if the test server answers, else the reason it does not."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed: {exc}"
    try:
        psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        return f"PostgreSQL does not answer at {PG_SERVER}: {str(exc).strip().splitlines()[:1]}"
    return None


@contextlib.contextmanager
def pg_schema() -> Any:
    """The URL of a fresh schema on the test server, dropped afterwards."""
    import uuid

    import psycopg

    schema = f"qch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_SERVER else "?"
    try:
        yield f"{PG_SERVER}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def cluster(backend: str) -> Any:
    """A Cluster on a fresh database of `backend` ("sqlite" or "postgres")."""
    if backend == "sqlite":
        c = Cluster()
        try:
            yield c
        finally:
            c.cleanup()
        return
    with pg_schema() as url:
        c = Cluster(url)
        try:
            yield c
        finally:
            c.cleanup()


# --- the workload ------------------------------------------------------------------------


@dataclass
class Workload:
    """Jobs that record their runs in `out`; `expected` maps each id to the terminal
    state it must reach (`completed`, or `dead` for commands that fail)."""

    out: Path
    expected: dict[str, str] = field(default_factory=dict)
    max_retries: int = 5
    enqueued_at: float = 0.0

    def command(self, seconds: float, *, fail: bool = False, extra: str = "") -> str:
        stamp = "$(date +%s.%N)"
        line = f"$QUEUECTL_JOB_ID $QUEUECTL_LEASE {stamp}"
        cmd = (
            f'echo "start {line}" >> {self.out}; {extra}sleep {seconds:.3f}; echo "end {line}" >> {self.out}'
        )

        return cmd + ("; exit 3" if fail else "")

    def specs(
        self,
        n: int,
        *,
        prefix: str = "j",
        fail_every: int = 0,
        sleep: tuple[float, float] = (0.02, 0.1),
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """n jobs; every `fail_every`-th one fails (and ends dead after its retries)."""
        rng = random.Random(seed)
        out = []
        for i in range(n):
            jid = f"{prefix}{len(self.expected) + i:05d}"
            fail = bool(fail_every) and i % fail_every == fail_every - 1
            # Failing jobs get one retry: their two runs are failures, not recoveries.
            out.append(
                {
                    "id": jid,
                    "command": self.command(rng.uniform(*sleep), fail=fail),
                    "max_retries": 1 if fail else self.max_retries,
                }
            )
        return out

    def enqueue(self, c: Cluster, specs: Iterable[dict[str, Any]]) -> list[str]:
        specs = list(specs)
        data = "".join(json.dumps(s) + "\n" for s in specs)
        ids = c.run("enqueue", "-", input=data).stdout.split()
        assert ids == [s["id"] for s in specs], ids[:5]
        for s in specs:
            self.expected[s["id"]] = "dead" if s["command"].endswith("exit 3") else "completed"
        self.enqueued_at = time.time()
        return ids

    def runs(self) -> list[tuple[str, str, int, float]]:
        """(kind, job id, lease, time) for every line written."""
        if not self.out.exists():
            return []
        rows = []
        for line in self.out.read_text().splitlines():
            kind, jid, lease, at = line.split()
            rows.append((kind, jid, int(lease), float(at)))
        return rows


# --- the invariants ---------------------------------------------------------------------


@dataclass
class Report:
    """What the checker found (the figures docs/reliability.md reports)."""

    jobs: int = 0
    runs: int = 0
    lost: int = 0
    duplicates: int = 0
    explained: int = 0
    recoveries: int = 0
    problems: list[str] = field(default_factory=list)

    def ok(self) -> None:
        if self.problems:
            shown = "\n  ".join(self.problems[:25])
            raise AssertionError(f"{len(self.problems)} invariant violation(s):\n  {shown}")


def check(
    c: Cluster, w: Workload, *, timeouts: bool = False, log_gaps: int = 0, require_logs: bool = True
) -> Report:
    """Check issue 5's invariants 1-7 over the whole queue; returns the figures.

    `timeouts`: jobs may be killed by their own worker's timeout (a run with no end
    line whose attempt the worker recorded).  `log_gaps`: how many recoveries may be
    missing from the audit logs (a monitor killed between its CAS and its log write:
    the `monitor_after_cas` failpoint)."""
    rep = Report(jobs=len(w.expected))
    jobs: dict[str, Job] = {j.id: j for j in c.store.list_jobs()}
    runs = w.runs()
    rep.runs = sum(1 for r in runs if r[0] == "start")
    histories = {jid: c.store.history(jid) for jid in jobs}
    p = rep.problems

    # 1. one terminal state each, the expected one; 2. nothing that was not enqueued.
    for jid, want in w.expected.items():
        job = jobs.get(jid)
        if job is None or job.state.value != want:
            rep.lost += 1
            p.append(f"{jid}: {'missing' if job is None else job.state.value}, expected {want}")
    p.extend(f"{jid}: stored but never enqueued" for jid in jobs.keys() - w.expected.keys())
    p.extend(f"{r[1]}: ran but never enqueued" for r in runs if r[1] not in w.expected)

    recovered_hist: list[tuple[str, int, str]] = []
    for jid, events in histories.items():
        job = jobs[jid]
        _check_chain(job, events, p)
        rep.recoveries += _check_runs(job, events, runs_of(runs, jid), rep, timeouts=timeouts)
        recovered_hist.extend(
            (jid, e.attempt, e.reason or "")
            for e in events
            if e.from_state == "processing" and e.reason in RECOVERY_REASONS
        )

    # 6. history recoveries <-> recovery logs; no job recovered twice (per attempt).
    logged = [
        (r["job_id"], r["attempt"], r["reason"])
        for r in c.recovery_logs()
        if r.get("event") == "job_recovered"
    ]
    dup_hist = {x for x in recovered_hist if recovered_hist.count(x) > 1}
    dup_log = {x for x in logged if logged.count(x) > 1}
    p.extend(f"{x}: recovered twice in the history" for x in dup_hist)
    p.extend(f"{x}: recovered twice in the logs" for x in dup_log)
    missing = set(recovered_hist) - set(logged)
    extra = set(logged) - set(recovered_hist)
    p.extend(f"{x}: in a recovery log but not in the history" for x in extra)
    if require_logs and len(missing) > log_gaps:
        p.extend(f"{x}: recovered in the history but in no recovery log" for x in sorted(missing))

    # 8. the audit trail is whole: one chain, every sealed history event in it once,
    # the same (audit verify --against-db brings the files up to date first).
    proc = c.run("audit", "verify", "--against-db", "--json", check=False)
    if proc.returncode != 0:
        try:
            problems = json.loads(proc.stdout)["problems"]
        except ValueError:
            problems = [proc.stderr.strip()]
        p.extend(f"audit trail: {x}" for x in problems[:10])

    # 7. the database is sound.
    if c.is_sqlite:
        import apsw

        conn = apsw.Connection(c.db_url, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
        if result != [("ok",)]:
            p.append(f"integrity_check: {result[:5]}")
    return rep


def runs_of(runs: list[tuple[str, str, int, float]], jid: str) -> dict[int, dict[str, list[float]]]:
    """lease -> {"start": [times], "end": [times]} for one job."""
    out: dict[int, dict[str, list[float]]] = {}
    for kind, rid, lease, at in runs:
        if rid == jid:
            out.setdefault(lease, {"start": [], "end": []})[kind].append(at)
    return out


def _check_chain(job: Job, events: list[Event], p: list[str]) -> None:
    """5. each event starts where the previous one ended; attempts within bounds."""
    prev: str | None = None
    for e in events:
        if e.from_state != prev:
            p.append(f"{job.id}: history jumps from {prev} to an event from {e.from_state} (seq {e.seq})")
        prev = e.to_state
    if prev != job.state.value:
        p.append(f"{job.id}: history ends in {prev}, the job is {job.state.value}")
    if job.attempts > job.max_retries + 1:
        p.append(f"{job.id}: {job.attempts} attempts > max_retries + 1 = {job.max_retries + 1}")
    claims = sum(1 for e in events if e.to_state == "processing")
    if claims != job.lease:
        p.append(f"{job.id}: {claims} claims in the history, lease is {job.lease}")


def _check_runs(
    job: Job, events: list[Event], by_lease: dict[int, dict[str, list[float]]], rep: Report, *, timeouts: bool
) -> int:
    """3. and 4.: each run belongs to a claim; a claim ended by its worker ran exactly
    once, to its end; a job ran again only after a recovery or a failure; no two runs
    of one job overlap.  Returns the number of recovered attempts."""
    p = rep.problems
    # The k-th claim in the history holds lease k (every claim bumps the lease by 1).
    ends: dict[int, Event] = {}
    lease = 0
    for e in events:
        if e.to_state == "processing":
            lease += 1
        elif e.from_state == "processing":
            ends[lease] = e
    extra_leases = set(by_lease) - set(range(1, job.lease + 1))
    p.extend(f"{job.id}: ran with lease {k} that no claim gave" for k in sorted(extra_leases))
    started = sorted(k for k, r in by_lease.items() if r["start"])
    for k in started:
        _check_run(job.id, k, by_lease[k], ends.get(k), p, timeouts=timeouts)
    _count_repeats(job.id, started, ends, rep)
    succeeded = [k for k in started if k in ends and ends[k].to_state == "completed"]
    if len(succeeded) > 1:
        p.append(f"{job.id}: completed by {len(succeeded)} attempts")
    _check_overlap(job.id, started, by_lease, ends, p)
    return sum(1 for e in ends.values() if e.reason in RECOVERY_REASONS)


def _check_run(
    jid: str, k: int, run: dict[str, list[float]], end: Event | None, p: list[str], *, timeouts: bool
) -> None:
    if len(run["start"]) > 1 or len(run["end"]) > 1:
        p.append(f"{jid}: lease {k} ran {len(run['start'])} times")
    if end is None:
        p.append(f"{jid}: lease {k} ran but its attempt never ended")
    elif (
        end.reason not in RECOVERY_REASONS
        and not run["end"]
        and not (timeouts and end.to_state != "completed")
    ):
        p.append(f"{jid}: lease {k} recorded by its worker but the run never ended")


def _count_repeats(jid: str, started: list[int], ends: dict[int, Event], rep: Report) -> None:
    """A run after a failed attempt is a retry; after a recovered one, a duplicate
    explained by the recovery; after anything else, a duplicate nothing explains."""
    for k in started[:-1]:
        end = ends.get(k)
        if end is not None and end.reason in RECOVERY_REASONS:
            rep.duplicates += 1
            rep.explained += 1
        elif end is None or end.to_state == "completed":
            rep.duplicates += 1
            rep.problems.append(f"{jid}: ran again after lease {k} without a recovery or failure")


def _check_overlap(
    jid: str,
    started: list[int],
    by_lease: dict[int, dict[str, list[float]]],
    ends: dict[int, Event],
    p: list[str],
) -> None:
    """4. A run ends at its end line or, killed, no later than the event that ended
    its attempt (the monitor kills before it compare-and-sets)."""
    spans = []
    for k in started:
        r = by_lease[k]
        end_t = r["end"][0] if r["end"] else (ends[k].at if k in ends else float("inf"))
        spans.append((r["start"][0], end_t, k))
    spans.sort()
    for (_s1, e1, k1), (s2, _e2, k2) in itertools.pairwise(spans):
        if s2 < e1:
            p.append(f"{jid}: lease {k2} started at {s2:.3f} while lease {k1} ran until {e1:.3f}")
        if k2 < k1:
            p.append(f"{jid}: lease {k2} started after lease {k1}")


# --- faults -------------------------------------------------------------------------------


@dataclass
class FaultLog:
    """When each fault was injected, and (for killed workers) which pid, so recovery
    times can be read off the recovery logs."""

    kills: list[tuple[float, int]] = field(default_factory=list)
    other: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.kills) + len(self.other)


def recovery_delays(c: Cluster, faults: FaultLog) -> list[float]:
    """For each killed (or stopped) worker that held a job: seconds from the fault to
    the first recovery of a job of that pid logged after it (the recovery logs name
    the dead worker's pid)."""
    from datetime import datetime

    logged = sorted(
        (datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp(), r["pid"])
        for r in c.recovery_logs()
        if r.get("event") == "job_recovered" and r.get("pid")
    )
    out = []
    for at, pid in faults.kills:
        after = [t for t, p in logged if p == pid and t >= at]
        if after:
            out.append(after[0] - at)
    return out


def kill_random_workers(
    c: Cluster, faults: FaultLog, *, every: float, until: Callable[[], bool], rng: random.Random, limit: float
) -> None:
    """SIGKILL one random running worker every `every` seconds until `until()`."""
    deadline = time.monotonic() + limit
    while not until():
        if time.monotonic() > deadline:
            raise Timeout(f"the queue did not drain within {limit:g}s of random kills: {c.counts()}")
        workers = c.running_workers()
        if workers:
            pid = rng.choice(sorted(workers.values()))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                faults.kills.append((time.time(), pid))
        stop = time.monotonic() + every
        while time.monotonic() < stop and not until():
            time.sleep(0.05)
