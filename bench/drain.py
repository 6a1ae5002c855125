"""Drain rate: N jobs of a workload with W worker processes, next to the spawn limit.

For a queue of shell commands the physical limit is starting processes, so the
baseline is `SpawnLimit`: W Python processes that do nothing but start
`/bin/sh -c COMMAND` with the executor's flags and wait for it.  Every system drains
the same workload with the same number of processes, interleaved with the baseline
in each round, and is reported as a ratio to it.

To compare another system (issue 6: huey, RQ, task-spooler), write a class with
`key`, `title` and `drain()` like `QueuectlBare` (optionally `worker_counts` and
`workloads`, the counts and workload names it runs, and `backend`, a PostgreSQL one
making its runs redone when the shared server restarts) and add it to the
`drainers` passed to `run()`; to add a workload or worker counts, add a `Workload`.
queuectl on PostgreSQL is `QueuectlBare(postgres(url))`; queuectl under supervisord
is `QueuectlSupervised()`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    home_pids,
    interleave,
    steady,
    tree_cpu,
    wait_until,
)
from report import Doc, Section, Target, table


@dataclass(frozen=True)
class Workload:
    """A command every job runs, at some worker counts, for some rounds (None: the
    run's).  The same workload may appear more than once with other counts and rounds
    (e.g. `true` at 1 and 2 workers for 15 rounds, at 4 and 8 for 5): one table."""

    name: str
    command: str
    counts: tuple[int, ...] = (1, 2)
    rounds: int | None = None
    about: str = ""  # one sentence for the document


TRUE = Workload("true", "true", about="The shell starts and exits: the cost of a job itself.")
#: Issue 6's other two workloads.
SLEEP = Workload(
    "sleep",
    "sleep 0.01",
    about="A job that waits 10 ms: more workers than cores overlap the waits.",
)
OUTPUT = Workload(
    "out64k",
    "printf '%065536d' 0",
    about="A job that prints 64 KiB (65,536 bytes) from the shell's builtin `printf`, so still "
    "one process per job, into the output file; queuectl keeps the last `output_limit` KiB "
    "(64 by default) of it in the database, so all of it. The spawn limit's processes "
    "write it to a file too.",
)


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


def children_cpu() -> float:
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
        cpu0 = children_cpu()
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
        cpu_us = (children_cpu() - cpu0) / jobs * 1e6
        return {"rate": jobs / span, "wall_rate": jobs / wall, "cpu_us": cpu_us}


def _fill(qh: QueueHome, workload: Workload, jobs: int, config: dict[str, str]) -> None:
    """Enqueue the run's jobs (and its settings) before any worker starts."""
    q = qh.open()
    try:
        for key, value in config.items():
            q.config_set(key, value)
        q.enqueue_many([{"command": workload.command} for _ in range(jobs)])
    finally:
        q.close()


def completed_jobs(qh: QueueHome, jobs: int, who: str) -> list[Any]:
    """Every job of the queue, read back from the database; each of the `jobs` must
    have completed in one attempt."""
    q = qh.open()
    try:
        done = q.list()
    finally:
        q.close()
    bad = [j for j in done if j.state.value != "completed" or j.attempts != 1]
    if len(done) != jobs or bad:
        kinds = Counter((j.state.value, j.attempts) for j in bad).most_common(3)
        raise RuntimeError(
            f"{who}: {len(done)} jobs, {len(bad)} not completed in 1 attempt: (state, attempts) {kinds}"
        )
    return done


def _span_rate(qh: QueueHome, jobs: int, who: str) -> float:
    """Jobs/s from the first `started_at` to the last `finished_at`."""
    done = completed_jobs(qh, jobs, who)
    span = max(j.finished_at or 0.0 for j in done) - min(j.started_at or 0.0 for j in done)
    return jobs / span


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


class QueuectlBare:
    """queuectl: W bare `python -m queuectl worker run --burst` processes, on SQLite
    (the home's database) or on PostgreSQL (`--db URL`, a fresh schema each run);
    `worker_counts` and `workloads` limit the counts and workloads it runs (None: all)."""

    def __init__(
        self,
        backend: Backend = SQLITE,
        worker_counts: Sequence[int] | None = None,
        config: dict[str, str] | None = None,
        workloads: Sequence[str] | None = None,
    ) -> None:
        self.backend = backend
        if worker_counts is not None:
            self.worker_counts = tuple(worker_counts)
        if workloads is not None:
            self.workloads = tuple(workloads)
        self.config = dict(config or {})
        suffix = "".join(f"-{k}={v}" for k, v in self.config.items())
        self.key = ("queuectl" if backend.key == "sqlite" else f"queuectl-{backend.key}") + suffix
        settings = "".join(f", `{k}={v}`" for k, v in self.config.items())
        self.title = f"queuectl, {backend.title}, `worker run --burst`{settings}"

    def drain(self, workload: Workload, jobs: int, workers: int) -> Sample:
        with self.backend.fresh("d") as qh:
            _fill(qh, workload, jobs, self.config)
            server = ServerCPU(self.backend.pg_url) if self.backend.pg_url else None
            server0 = server.seconds() if server else 0.0
            cpu0 = children_cpu()
            wall = self._run_workers(qh, workers, timeout=max(60.0, jobs * 0.05))
            cpu_us = (children_cpu() - cpu0) / jobs * 1e6
            server_us = (server.seconds() - server0) / jobs * 1e6 if server else None
            rate = _span_rate(qh, jobs, "queuectl drain")
        out = {"rate": rate, "wall_rate": jobs / wall, "cpu_us": cpu_us}
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
            tail = _log_tail(logs / "worker0.log")
            raise RuntimeError(f"queuectl worker exited with {codes}; worker0.log ends:\n{tail}")
        return wall


class QueuectlSupervised:
    """queuectl under supervisord: `queuectl worker start --count W --detach` on a home
    whose jobs are already enqueued (supervisord, W `worker run` processes without
    `--burst`, and the monitor), polled until every job has finished, then
    `queuectl shutdown`.  Every process of the home must be gone afterwards; one that
    is not is killed by pid and the run fails."""

    #: How often this process checks whether every job has finished.
    POLL = 0.05

    def __init__(
        self,
        backend: Backend = SQLITE,
        worker_counts: Sequence[int] | None = None,
        workloads: Sequence[str] | None = None,
        rounds: int | None = None,
    ) -> None:
        self.backend = backend
        if worker_counts is not None:
            self.worker_counts = tuple(worker_counts)
        if workloads is not None:
            self.workloads = tuple(workloads)
        self.rounds = rounds
        self.key = "queuectl-sv" if backend.key == "sqlite" else f"queuectl-{backend.key}-sv"
        self.title = f"queuectl, {backend.title}, `worker start --count N` (supervisord)"

    def drain(self, workload: Workload, jobs: int, workers: int) -> Sample:
        with self.backend.fresh("s") as qh:
            _fill(qh, workload, jobs, {})
            cli = [PYTHON, "-m", "queuectl", *qh.cli]
            try:
                wall, cpu = self._drain(qh, cli, jobs, workers)
            finally:
                leftover = self._stop(qh, cli)
            if leftover:
                raise RuntimeError(f"queuectl under supervisord: pids {leftover} outlived shutdown (killed)")
            rate = _span_rate(qh, jobs, "queuectl under supervisord")
        return {"rate": rate, "wall_rate": jobs / wall, "cpu_us": cpu / jobs * 1e6}

    def _drain(self, qh: QueueHome, cli: list[str], jobs: int, workers: int) -> tuple[float, float]:
        """Start the pool and wait for the last job; returns (wall s, CPU s)."""
        cpu0 = children_cpu()
        t0 = time.perf_counter()
        _cli([*cli, "worker", "start", "--count", str(workers), "--detach"], timeout=60)
        supervisord = int((qh.home / "run" / "supervisord.pid").read_text().strip())
        q = qh.open()
        try:
            wait_until(
                lambda: _finished(q) >= jobs,
                max(60.0, jobs * 0.05),
                "the jobs under supervisord",
                interval=self.POLL,
            )
            wall = time.perf_counter() - t0
        except RuntimeError as exc:
            tail = _log_tail(qh.home / "logs" / "workers_00.log")
            raise RuntimeError(f"{exc}; workers_00.log ends:\n{tail}") from None
        finally:
            q.close()
        # supervisord is not our child (it daemonized): read its CPU and its children's
        # (the workers with their jobs, the monitor) from /proc while they still live;
        # the `worker start` process is ours, in RUSAGE_CHILDREN.
        cpu = tree_cpu(supervisord) + children_cpu() - cpu0
        return wall, cpu

    @staticmethod
    def _stop(qh: QueueHome, cli: list[str]) -> list[int]:
        """`queuectl shutdown`, then wait until no process of the home is left; kill
        any that is by pid.  Returns the pids that had to be killed."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _cli([*cli, "shutdown"], timeout=150)
        with contextlib.suppress(RuntimeError):
            wait_until(lambda: not home_pids(qh.home), 15, "the home's processes to exit", interval=0.1)
        left = home_pids(qh.home)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


def _cli(argv: list[str], timeout: float) -> None:
    """Run one `queuectl` command to its end; RuntimeError with its output if it fails."""
    out = subprocess.run(argv, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if out.returncode:
        text = (out.stdout + out.stderr).decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv[2:])} exited with {out.returncode}:\n{text}")


def _finished(q: Any) -> int:
    counts = q.store.counts()
    return int(counts["completed"] + counts["dead"])


def _runs(d: Drainer, wl: Workload, n: int) -> bool:
    """A drainer may run only some worker counts (`worker_counts`) and some workloads
    (`workloads`, by name); default: all."""
    return n in getattr(d, "worker_counts", (n,)) and wl.name in getattr(d, "workloads", (wl.name,))


def run(
    doc: Doc,
    *,
    jobs: int,
    rounds: int,
    workloads: Sequence[Workload] = (TRUE,),
    drainers: Sequence[Drainer] = (QueuectlBare(),),
) -> dict[str, object]:
    """Every workload at each of its worker counts: the spawn limit, then every drainer
    that runs it; `rounds` rounds, or fewer: the workload's own `rounds`, or a drainer's
    (an optional `rounds` attribute, for slow ones)."""
    cells = [(wl, n) for wl in workloads for n in wl.counts]
    if len({(wl.name, n) for wl, n in cells}) != len(cells):
        raise ValueError("drain: a workload appears twice with the same worker count")
    base = SpawnLimit()
    subjects: dict[str, Subject] = {}
    rounds_of: dict[str, int] = {}
    for wl, n in cells:
        for d in (base, *drainers):
            if _runs(d, wl, n):
                key = f"{d.key}/{wl.name}/{n}"
                fn = functools.partial(d.drain, wl, jobs, n)
                backend = getattr(d, "backend", None)
                subjects[key] = steady(backend, fn, f"drain {key}") if backend else fn
                rounds_of[key] = min(wl.rounds or rounds, getattr(d, "rounds", None) or rounds)
    res = interleave(subjects, rounds, label="drain", rounds_of=rounds_of)
    _report(doc, res, jobs, rounds, workloads, drainers, base)
    return res.as_json()


HEADERS = (
    "System",
    "Processes",
    "Runs",
    "Rate, jobs/s",
    "Rate ÷ spawn limit",
    "Wall, jobs/s",
    "Wall ÷ spawn limit",
    "CPU per job, µs",
    "CPU ÷ spawn limit",
)


def _report(
    doc: Doc,
    res: Results,
    jobs: int,
    rounds: int,
    workloads: Sequence[Workload],
    drainers: Sequence[Drainer],
    base: SpawnLimit,
) -> None:
    sec = doc.section("Spawn limit and drain rate")
    sec.add(
        f"{jobs:,} jobs per run; the number of runs is given with each table. In each round, "
        "for each workload and number of processes, the spawn limit runs and then every "
        "system drains the same jobs, so a ratio compares runs made seconds apart (a figure "
        "with fewer runs comes from the first rounds, paired with the spawn limit's runs "
        "of those same rounds)."
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
        "jobs are enqueued with `Queue.enqueue_many` before the workers start, as for SQLite.\n"
        "- **Under supervisord**: on a home whose jobs are already enqueued, "
        "`queuectl worker start --count N --detach` starts supervisord, N `worker run` "
        "processes (not `--burst`: they stay up) and the monitor; this process polls the "
        f"job counts every {QueuectlSupervised.POLL * 1000:.0f} ms until every job has "
        "finished, then runs `queuectl shutdown` and checks that no process of the home is "
        "left. Rate as for bare workers. Wall: from launching `worker start` to the poll "
        "that sees the last job finished (supervisord's start-up, `startsecs`, included; "
        "the shutdown is not). CPU: the `worker start` process (`RUSAGE_CHILDREN`) plus "
        "supervisord, the workers with their jobs' shells and the monitor, read from "
        "`/proc` just before the shutdown (supervisord daemonizes, so it is not this "
        "process's child)."
    )
    groups: dict[str, list[Workload]] = {}
    for wl in workloads:
        groups.setdefault(wl.name, []).append(wl)
    for entries in groups.values():
        rows = []
        for wl in entries:
            for n in wl.counts:
                b = f"{base.key}/{wl.name}/{n}"
                rows.append(_row(res, base.title, n, b, None))
                rows += [
                    _row(res, d.title, n, f"{d.key}/{wl.name}/{n}", b) for d in drainers if _runs(d, wl, n)
                ]
        about = f" {entries[0].about}" if entries[0].about else ""
        sec.add(f"Workload `{entries[0].command}`.{about} Median (min–max) over the runs counted in *Runs*:")
        sec.add(table(HEADERS, rows))
        for wl in entries:
            _compare(sec, res, wl, drainers)
    one, two = f"{base.key}/{TRUE.name}/1", f"{base.key}/{TRUE.name}/2"
    if one in res.samples and two in res.samples:
        sec.add(
            "The spawn limit with 2 processes ÷ with 1 process: "
            + res.ratio(two, one, "rate").fmt(".2f")
            + " (2 cores, each also running the shells)."
        )
    _targets(doc, res, drainers, base)


#: The drainers (by key) issue 6 asks queuectl to drain at least twice as fast as.
PEERS_TO_BEAT = {"huey": "huey", "tsp": "task-spooler"}


def _targets(doc: Doc, res: Results, drainers: Sequence[Drainer], base: SpawnLimit) -> None:
    """The drain targets of issues 2 and 6, judged on `true` with 2 workers."""
    if "queuectl/true/2" not in res.samples:
        return
    to_spawn = res.ratio("queuectl/true/2", f"{base.key}/true/2", "rate")
    for goal, issue in ((0.70, 2), (0.80, 6)):
        doc.targets.append(
            Target(
                f"Drain of `true`, 2 workers ÷ 2-process spawn limit (issue {issue})",
                to_spawn,
                goal,
                at_least=True,
                spec=".2f",
            )
        )
    # Issue 6: at least twice the peers' drain rate, each ratio paired in its round.
    for d in drainers:
        if d.key in PEERS_TO_BEAT and f"{d.key}/true/2" in res.samples:
            doc.targets.append(
                Target(
                    f"Drain of `true`, 2 workers, queuectl ÷ {PEERS_TO_BEAT[d.key]}, same round (issue 6)",
                    res.ratio("queuectl/true/2", f"{d.key}/true/2", "rate"),
                    2.0,
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
        str(len(res.samples[key])),
        res.stat(key, "rate").fmt(",.0f"),
        ratio("rate", bold=True),
        res.stat(key, "wall_rate").fmt(",.0f"),
        ratio("wall_rate"),
        res.stat(key, "cpu_us").fmt(",.0f"),
        ratio("cpu_us"),
    )


def _compare(sec: Section, res: Results, wl: Workload, drainers: Sequence[Drainer]) -> None:
    """queuectl on PostgreSQL, and under supervisord, beside bare queuectl on SQLite,
    paired in each round."""
    bare = next((d for d in drainers if d.key == "queuectl"), None)
    if bare is None:
        return
    for d in drainers:
        backend = getattr(d, "backend", None)
        if isinstance(d, QueuectlSupervised) and d.backend.pg_url is None:
            what = "queuectl under supervisord ÷ bare `worker run --burst` processes"
        elif isinstance(d, QueuectlBare) and backend is not None and backend.pg_url is not None:
            what = f"queuectl on {backend.title} ÷ on SQLite"
        else:
            continue
        for n in wl.counts:
            k, s = f"{d.key}/{wl.name}/{n}", f"{bare.key}/{wl.name}/{n}"
            if not (k in res.samples and s in res.samples):
                continue
            rate = res.ratio(k, s, "rate")
            note = (
                f"{what}, `{wl.command}`, {n} worker{'s' if n > 1 else ''}, same round "
                f"({rate.n} rounds): rate {rate.fmt('.2f')}, "
                f"wall {res.ratio(k, s, 'wall_rate').fmt('.2f')}, "
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
