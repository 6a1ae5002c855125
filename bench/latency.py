"""Pickup latency: enqueue to start, with idle workers, on SQLite and on PostgreSQL.

Each run starts W `queuectl worker run` processes (no `--burst`, default settings) on
a fresh queue and waits until they are registered and have run a few primer jobs, so
they sit in their idle wait.  Then this process enqueues N jobs (`true`) one at a time
with the library API (`Queue.enqueue`), sleeping a random 20-50 ms before each call, so
every job finds an idle worker.  A job's latency is its `started_at` as the claim wrote
it (read back from the database after the run) minus `time.time()` just before the
`enqueue` call.  Both are this host's clock: SQLite's `started_at` is the worker's
`time.time()` at its claim, PostgreSQL's is the server's `now()` at the claim
statement, and the server runs on this host.

The stores run interleaved (SQLite, PostgreSQL, SQLite, ...); PostgreSQL is reported
as a ratio to SQLite in the same round.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness import (
    PYTHON,
    ROOT,
    Backend,
    Procs,
    QueueHome,
    Results,
    Sample,
    interleave,
    percentile,
    steady,
    wait_until,
)
from report import Doc, Target, table

#: Jobs run before the measured ones (not measured): the workers are then past their
#: start-up (first claim, start-up recovery pass) and in their idle wait.
PRIMERS = 5
GAP = (0.020, 0.050)


@dataclass
class Pickup:
    """One store's subject: each call is one run of `samples` pickups."""

    backend: Backend
    samples: int
    workers: int
    #: Every run's latencies in ms, also the warm-up's and any redone run's; a
    #: sample's `run` is its index here.
    runs: list[list[float]] = field(default_factory=list)

    def __call__(self) -> Sample:
        rng = random.Random(f"{self.backend.key}-{len(self.runs)}")
        with self.backend.fresh("l") as qh, Procs() as ps:
            marks, jobs = self._measure(qh, ps, rng)
        lat = [(jobs[jid].started_at - t0) * 1000 for jid, t0, _ in marks]
        after = [(jobs[jid].started_at - t1) * 1000 for jid, _, t1 in marks]
        calls = [(t1 - t0) * 1000 for _, t0, t1 in marks]
        self.runs.append(lat)
        return {
            "run": float(len(self.runs) - 1),
            "median_ms": statistics.median(lat),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat),
            "call_ms": statistics.median(calls),
            "after_call_ms": statistics.median(after),
            "all_busy": float(_all_busy(marks, jobs, self.workers)),
        }

    def _measure(
        self, qh: QueueHome, ps: Procs, rng: random.Random
    ) -> tuple[list[tuple[str, float, float]], dict[str, Any]]:
        logs = qh.home / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        q = qh.open()  # creates the queue (PostgreSQL: its tables) before any worker starts
        try:
            with contextlib.ExitStack() as files:
                argv = [PYTHON, "-m", "queuectl", *qh.cli, "worker", "run"]
                for i in range(self.workers):
                    err = files.enter_context(open(logs / f"worker{i}.log", "wb"))
                    ps.start(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
                wait_until(lambda: len(q.workers()) >= self.workers, 60, "the workers to register")
                for _ in range(PRIMERS):
                    q.enqueue({"command": "true"})
                    time.sleep(rng.uniform(*GAP))
                wait_until(lambda: q.store.counts()["completed"] == PRIMERS, 60, "the primer jobs")
                marks = []
                for _ in range(self.samples):
                    time.sleep(rng.uniform(*GAP))
                    t0 = time.time()
                    jid = q.enqueue({"command": "true"})
                    marks.append((jid, t0, time.time()))
                total = PRIMERS + self.samples
                wait_until(lambda: q.store.counts()["completed"] == total, 60, "the jobs to complete")
                jobs = {j.id: j for j in q.list()}
                codes = ps.stop_all(30)
        finally:
            q.close()
        if any(codes):
            tail = (logs / "worker0.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"latency: a worker exited with {codes}; worker0.log ends:\n{tail}")
        if any(j.attempts != 1 for j in jobs.values()):
            raise RuntimeError("latency: a job took more than one attempt")
        return marks, jobs


def _all_busy(marks: Sequence[tuple[str, float, float]], jobs: dict[str, Any], workers: int) -> int:
    """How many jobs were enqueued while every worker was running a job (so the
    pickup could not be from idle): counted from the jobs' own start and end times."""
    spans = [(j.started_at, j.finished_at) for j in jobs.values()]
    return sum(1 for _, t0, _ in marks if sum(1 for s, f in spans if s <= t0 < f) >= workers)


def run(doc: Doc, *, backends: Sequence[Backend], samples: int, rounds: int, workers: int) -> dict[str, Any]:
    pickups = {b.key: Pickup(b, samples, workers) for b in backends}
    subjects = {b.key: steady(b, pickups[b.key], f"latency {b.key}") for b in backends}
    res = interleave(subjects, rounds, label="latency")
    pooled = {k: [x for r in res.values(k, "run") for x in p.runs[int(r)]] for k, p in pickups.items()}
    _report(doc, res, pooled, backends, samples, rounds, workers)
    return {"runs": res.as_json(), "latencies_ms": pooled}


def _report(
    doc: Doc,
    res: Results,
    pooled: dict[str, list[float]],
    backends: Sequence[Backend],
    samples: int,
    rounds: int,
    workers: int,
) -> None:
    sec = doc.section("Pickup latency (enqueue to start)")
    sec.add(
        f"{workers} idle `queuectl worker run` processes (default settings: no `--burst`, "
        "poll interval 1 s) on a fresh queue, warmed up by a few primer jobs. This process then "
        f"enqueues {samples} jobs (`true`) per run one at a time with the library API "
        f"(`Queue.enqueue`), sleeping a random {GAP[0] * 1000:.0f}-{GAP[1] * 1000:.0f} ms "
        f"before each call, so each job finds an idle worker. {rounds} runs per store, the "
        "stores interleaved."
    )
    sec.add(
        "- **Latency**: the job's `started_at` as its claim wrote it (read back from the "
        "database after the run) minus `time.time()` just before the `enqueue` call. Same "
        "host clock: SQLite's `started_at` is the worker's `time.time()` at the claim, "
        "PostgreSQL's the server's `now()` at the claim statement (the server runs on this "
        "host). It includes the `enqueue` call itself.\n"
        "- **Median, p99, max**: per run of "
        f"{samples} jobs (p99 is the nearest rank: the {_rank(samples)} smallest), then the "
        "median (min–max) over the runs. **Pooled**: all runs' jobs together.\n"
        "- **Enqueue call**: how long `Queue.enqueue` took (median per run). **Call's return "
        "to start**: `started_at` minus `time.time()` after the call returned (negative: the "
        "worker had started the job before the call returned).\n"
        "- Idle workers wait for a change: SQLite workers poll `PRAGMA data_version` every "
        "5 ms; PostgreSQL workers `LISTEN` and the enqueue's transaction sends `pg_notify`. "
        "Bare workers with no monitor also run the recovery pass themselves every "
        "`monitor_interval` (5 s), a heartbeat every 3 s and a config read every 2 s, "
        "which a pickup may have to wait for."
    )
    base = backends[0].key

    def ratio(k: str, metric: str) -> str:
        return "1 (baseline)" if k == base else res.ratio(k, base, metric).fmt(".2f")

    rows = []
    for b in backends:
        k = b.key
        rows.append(
            (
                b.title,
                "**" + res.stat(k, "median_ms").fmt(".1f") + "**",
                ratio(k, "median_ms"),
                "**" + res.stat(k, "p99_ms").fmt(".1f") + "**",
                ratio(k, "p99_ms"),
                res.stat(k, "max_ms").fmt(".0f"),
                f"{statistics.median(pooled[k]):.1f} / {percentile(pooled[k], 99):.1f}",
                res.stat(k, "call_ms").fmt(".2f"),
                res.stat(k, "after_call_ms").fmt(".1f"),
            )
        )
    sec.add(
        table(
            (
                "Store",
                "Median, ms",
                f"Median ÷ {backends[0].title}",
                "p99, ms",
                f"p99 ÷ {backends[0].title}",
                "Max, ms",
                "Pooled median / p99, ms",
                "Enqueue call, ms",
                "Call's return to start, ms",
            ),
            rows,
        )
    )
    busy = ", ".join(
        f"{b.title} {sum(res.values(b.key, 'all_busy')):.0f} of {samples * rounds}" for b in backends
    )
    sec.add(f"Jobs enqueued while every worker was running a job (not a pickup from idle): {busy}.")
    goals = {"sqlite": [(25.0, "issue 6")], "pg": [(10.0, "issue 6"), (20.0, "issue 4, LISTEN/NOTIFY")]}
    for b in backends:
        for goal, source in goals.get(b.key, []):
            doc.targets.append(
                Target(
                    f"Pickup latency with idle workers, {b.title}, median ({source})",
                    res.stat(b.key, "median_ms"),
                    goal,
                    at_least=False,
                    spec=".1f",
                    unit=" ms",
                )
            )


def _rank(n: int) -> str:
    r = max(1, -(-99 * n // 100))
    return f"{r}th" if 10 <= r % 100 <= 20 else f"{r}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(r % 10, 'th') }"
