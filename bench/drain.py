"""Drain rate: N jobs of a workload with W worker processes, next to the spawn limit.

For a queue of shell commands the physical limit is starting processes, so the
baseline is `SpawnLimit`: W Python processes that do nothing but start
`/bin/sh -c COMMAND` with the executor's flags and wait for it.  Every system drains
the same workload with the same number of processes, interleaved with the baseline
in each round, and is reported as a ratio to it.

To compare another system (issue 6: huey, RQ, task-spooler, queuectl under
supervisord), write a class with `key`, `title` and `drain()` like `QueuectlBare`
(optionally `worker_counts`, the counts it runs, and `backend`, a PostgreSQL one
making its runs redone when the shared server restarts) and add it to the
`drainers` passed to `run()`; to add a workload, add a `Workload`.  queuectl on
PostgreSQL is `QueuectlBare(postgres(url))`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from harness import (
    BENCH,
    PYTHON,
    ROOT,
    SQLITE,
    Backend,
    Procs,
    QueueHome,
    Results,
    Sample,
    ServerCPU,
    Subject,
    interleave,
    steady,
)
from report import Doc, Section, Target, table


@dataclass(frozen=True)
class Workload:
    name: str
    command: str


#: Issue 6 adds `sleep 0.01` and a job that prints 64 KiB.
TRUE = Workload("true", "true")


class Drainer(Protocol):
    key: str
    title: str

    def drain(self, workload: Workload, jobs: int, workers: int) -> Sample:
        """Run `jobs` jobs of `workload` with `workers` processes, from a fresh queue.

        Returns at least `rate`: jobs/s from the first job's start to the last job's
        end as the system itself recorded them, and `wall_rate`: jobs/s over the wall
        time from launching the workers to the exit of the last one (process start-up
        and shutdown included).  Optionally `cpu_us`: CPU time (user + system) of all
        its processes, jobs' commands included, per job.
        """
        ...


def _children_cpu() -> float:
    """CPU seconds (user + system) of every waited-for child so far, grandchildren included."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class SpawnLimit:
    """The baseline: `workers` processes running bench/spawn_child.py in parallel."""

    key = "spawn"
    title = "spawn limit"

    def drain(self, workload: Workload, jobs: int, workers: int) -> Sample:
        argv = [PYTHON, str(BENCH / "spawn_child.py"), "--command", workload.command]
        cpu0 = _children_cpu()
        with Procs() as ps:
            t0 = time.perf_counter()
            for n in _split(jobs, workers):
                ps.start([*argv, "--count", str(n)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            outs = [p.communicate(timeout=max(60.0, jobs * 0.05))[0] for p in ps.procs]
            wall = time.perf_counter() - t0
            codes = [p.returncode for p in ps.procs]
        if any(codes):
            raise RuntimeError(f"spawn limit: a child failed (exit codes {codes})")
        parts = [json.loads(o) for o in outs]
        span = max(p["end"] for p in parts) - min(p["start"] for p in parts)
        cpu_us = (_children_cpu() - cpu0) / jobs * 1e6
        return {"rate": jobs / span, "wall_rate": jobs / wall, "cpu_us": cpu_us}


class QueuectlBare:
    """queuectl: W bare `python -m queuectl worker run --burst` processes, on SQLite
    (the home's database) or on PostgreSQL (`--db URL`, a fresh schema each run);
    `worker_counts` limits the counts it runs (None: all)."""

    def __init__(
        self,
        backend: Backend = SQLITE,
        worker_counts: Sequence[int] | None = None,
        config: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        if worker_counts is not None:
            self.worker_counts = tuple(worker_counts)
        self.config = dict(config or {})
        suffix = "".join(f"-{k}={v}" for k, v in self.config.items())
        self.key = ("queuectl" if backend.key == "sqlite" else f"queuectl-{backend.key}") + suffix
        settings = "".join(f", `{k}={v}`" for k, v in self.config.items())
        self.title = f"queuectl, {backend.title}, `worker run --burst`{settings}"

    def drain(self, workload: Workload, jobs: int, workers: int) -> Sample:
        with self.backend.fresh("d") as qh:
            q = qh.open()
            try:
                for key, value in self.config.items():
                    q.config_set(key, value)
                q.enqueue_many([{"command": workload.command} for _ in range(jobs)])
            finally:
                q.close()
            server = ServerCPU(self.backend.pg_url) if self.backend.pg_url else None
            server0 = server.seconds() if server else 0.0
            cpu0 = _children_cpu()
            wall = self._run_workers(qh, workers, timeout=max(60.0, jobs * 0.05))
            cpu_us = (_children_cpu() - cpu0) / jobs * 1e6
            server_us = (server.seconds() - server0) / jobs * 1e6 if server else None
            q = qh.open()
            try:
                done = q.list()
            finally:
                q.close()
        bad = [j for j in done if j.state.value != "completed" or j.attempts != 1]
        if len(done) != jobs or bad:
            raise RuntimeError(f"queuectl drain: {len(done)} jobs, {len(bad)} not completed in 1 attempt")
        span = max(j.finished_at or 0.0 for j in done) - min(j.started_at or 0.0 for j in done)
        out = {"rate": jobs / span, "wall_rate": jobs / wall, "cpu_us": cpu_us}
        if server_us is not None:
            out["server_cpu_us"] = server_us
        return out

    @staticmethod
    def _run_workers(qh: QueueHome, workers: int, timeout: float) -> float:
        argv = [PYTHON, "-m", "queuectl", *qh.cli, "worker", "run", "--burst"]
        logs = qh.home / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        with contextlib.ExitStack() as stack, Procs() as ps:
            files = [stack.enter_context(open(logs / f"worker{i}.log", "wb")) for i in range(workers)]
            t0 = time.perf_counter()
            for f in files:
                ps.start(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
            codes = ps.wait_all(timeout)
            wall = time.perf_counter() - t0
        if any(codes):
            tail = (logs / "worker0.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"queuectl worker exited with {codes}; worker0.log ends:\n{tail}")
        return wall


def _runs_with(d: Drainer, n: int) -> bool:
    """A drainer may run only some worker counts (`worker_counts`; default: all)."""
    return n in getattr(d, "worker_counts", (n,))


def run(
    doc: Doc,
    *,
    jobs: int,
    rounds: int,
    worker_counts: Sequence[int] = (1, 2),
    workloads: Sequence[Workload] = (TRUE,),
    drainers: Sequence[Drainer] = (QueuectlBare(),),
) -> dict[str, object]:
    base = SpawnLimit()
    subjects: dict[str, Subject] = {}
    for wl in workloads:
        for n in worker_counts:
            for d in (base, *drainers):
                if _runs_with(d, n):
                    key = f"{d.key}/{wl.name}/{n}"
                    fn = functools.partial(d.drain, wl, jobs, n)
                    backend = getattr(d, "backend", None)
                    subjects[key] = steady(backend, fn, f"drain {key}") if backend else fn
    res = interleave(subjects, rounds, label="drain")
    _report(doc, res, jobs, rounds, worker_counts, workloads, drainers, base)
    return res.as_json()


def _report(
    doc: Doc,
    res: Results,
    jobs: int,
    rounds: int,
    worker_counts: Sequence[int],
    workloads: Sequence[Workload],
    drainers: Sequence[Drainer],
    base: SpawnLimit,
) -> None:
    sec = doc.section("Spawn limit and drain rate")
    sec.add(
        f"{jobs:,} jobs per run, {rounds} rounds. In each round, for each number of "
        "processes, the spawn limit runs and then every system drains the same jobs, so a "
        "ratio compares runs made seconds apart."
    )
    sec.add(
        "- **Spawn limit**: 1 or N Python processes at once, each starting the job's command "
        'with `subprocess.Popen(["/bin/sh", "-c", cmd], start_new_session=True, '
        "stdin=DEVNULL, stdout=file, stderr=file, close_fds=True)` and `wait()`ing for it, "
        "one after another (`bench/spawn_child.py`, the executor's flags).\n"
        "- **Rate**: jobs ÷ time from the first job's start to the last job's end (queuectl: "
        "the first `started_at` to the last `finished_at`, read back from the database with "
        "`Queue.list()`; the spawn limit: its first `Popen` to its last `wait`).\n"
        "- **Wall**: jobs ÷ time from launching the processes to the exit of the last one "
        "(interpreter start-up, opening the store and the worker's start-up recovery pass "
        "included).\n"
        "- **CPU per job**: user + system CPU time of all those processes and the jobs' "
        "shells (`RUSAGE_CHILDREN`), start-up included, per job. It is the least disturbed "
        "by other load: on 2 cores, 2 busy workers cannot beat the spawn limit by more than "
        "its CPU per job ÷ theirs. For PostgreSQL it leaves out the server's own processes, "
        "which run on the same 2 cores: see the note under the table.\n"
        "- **PostgreSQL**: the workers get `--db postgresql://...` with a fresh schema per run "
        "(`?options=-csearch_path%3D<schema>`), created and dropped by the benchmark; the "
        "jobs are enqueued with `Queue.enqueue_many` before the workers start, as for SQLite."
    )
    for wl in workloads:
        rows = []
        for n in worker_counts:
            b = f"{base.key}/{wl.name}/{n}"
            rows.append(_row(res, base.title, n, b, None))
            rows += [_row(res, d.title, n, f"{d.key}/{wl.name}/{n}", b) for d in drainers if _runs_with(d, n)]
        sec.add(f"Workload `{wl.command}`, median (min–max) over {rounds} runs:")
        sec.add(
            table(
                (
                    "System",
                    "Processes",
                    "Rate, jobs/s",
                    "Rate ÷ spawn limit",
                    "Wall, jobs/s",
                    "Wall ÷ spawn limit",
                    "CPU per job, µs",
                    "CPU ÷ spawn limit",
                ),
                rows,
            )
        )
        _compare_stores(sec, res, wl, worker_counts, drainers)
    if 1 in worker_counts and 2 in worker_counts:
        one, two = f"{base.key}/{TRUE.name}/1", f"{base.key}/{TRUE.name}/2"
        sec.add(
            "The spawn limit with 2 processes ÷ with 1 process: "
            + res.ratio(two, one, "rate").fmt(".2f")
            + " (2 cores, each also running the shells)."
        )
    if 2 in worker_counts and TRUE in workloads:
        for d in drainers:
            if d.key == "queuectl":
                doc.targets.append(
                    Target(
                        "Drain of `true`, 2 workers ÷ 2-process spawn limit (issue 2)",
                        res.ratio(f"{d.key}/true/2", f"{base.key}/true/2", "rate"),
                        0.70,
                        at_least=True,
                        spec=".2f",
                    )
                )


def _row(res: Results, title: str, n: int, key: str, base: str | None) -> tuple[str, ...]:
    def ratio(metric: str, bold: bool = False) -> str:
        if base is None:
            return "1 (baseline)"
        text = res.ratio(key, base, metric).fmt(".2f")
        return f"**{text}**" if bold else text

    return (
        title,
        str(n),
        res.stat(key, "rate").fmt(",.0f"),
        ratio("rate", bold=True),
        res.stat(key, "wall_rate").fmt(",.0f"),
        ratio("wall_rate"),
        res.stat(key, "cpu_us").fmt(",.0f"),
        ratio("cpu_us"),
    )


def _compare_stores(
    sec: Section, res: Results, wl: Workload, worker_counts: Sequence[int], drainers: Sequence[Drainer]
) -> None:
    """queuectl on PostgreSQL beside queuectl on SQLite, paired in each round."""
    sqlite = next((d for d in drainers if d.key == "queuectl"), None)
    for d in drainers:
        backend = getattr(d, "backend", None)
        if sqlite is None or backend is None or backend.pg_url is None:
            continue
        for n in worker_counts:
            k, s = f"{d.key}/{wl.name}/{n}", f"{sqlite.key}/{wl.name}/{n}"
            if not (_runs_with(d, n) and _runs_with(sqlite, n)):
                continue
            note = (
                f"queuectl on {backend.title} ÷ on SQLite, {n} worker{'s' if n > 1 else ''}, "
                f"same round: rate {res.ratio(k, s, 'rate').fmt('.2f')}, "
                f"CPU per job {res.ratio(k, s, 'cpu_us').fmt('.2f')}."
            )
            if "server_cpu_us" in res.samples[k][0]:
                note += (
                    " The PostgreSQL server's own CPU per job (its postmaster and every process "
                    "under it, from `/proc`; the whole server, so other users' queries on it count "
                    f"too): {res.stat(k, 'server_cpu_us').fmt(',.0f')} µs, beside the workers' "
                    f"{res.stat(k, 'cpu_us').fmt(',.0f')} µs."
                )
            sec.add(note)
