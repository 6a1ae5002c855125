"""`queuectl bench`: how fast this machine drains no-op jobs, next to its spawn limit.

For a queue of shell commands the physical limit is starting processes, so the
figure that helps size a pool is the drain rate as a fraction of that limit: the
rate at which the same number of processes can start `/bin/sh -c true` with the
executor's own spawn path and no queue at all.  Both run on a temporary home that is
removed afterwards; the two measurements alternate so that other load on the
machine touches both alike.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: A process that starts `count` no-op jobs through the executor and prints its rate.
_SPAWN_LOOP = """
import sys, time
from queuectl import executor
files = executor.OutputFiles()
job = executor.Command(command=sys.argv[2], timeout=60, env={"PATH": "/usr/bin:/bin"})
count = int(sys.argv[1])
t0 = time.perf_counter()
for _ in range(count):
    executor.run(job, files)
print(count / (time.perf_counter() - t0))
"""


@dataclass(frozen=True)
class BenchResult:
    jobs: int
    workers: int
    command: str
    rounds: int
    spawn_limit_per_s: float
    drain_per_s: float
    wall_per_s: float
    ratio: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def spawn_limit(processes: int, jobs: int, command: str) -> float:
    """Jobs/s when `processes` processes start `jobs` commands between them."""
    each = max(1, jobs // processes)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SPAWN_LOOP, str(each), command],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    return sum(float(p.communicate()[0]) for p in procs)


def drain(workers: int, jobs: int, command: str) -> tuple[float, float]:
    """(jobs/s from the first start to the last finish, jobs/s of the wall clock)."""
    from queuectl.api import Queue
    from queuectl.config import resolve_paths

    home = Path(tempfile.mkdtemp(prefix="qbench"))
    try:
        paths = resolve_paths(str(home))
        queue = Queue.open(paths)
        try:
            queue.enqueue_many([{"command": command}] * jobs)
        finally:
            queue.close()
        cmd = [sys.executable, "-m", "queuectl", "--home", str(home), "worker", "run", "--burst"]
        t0 = time.monotonic()
        procs = [subprocess.Popen(cmd, stderr=subprocess.DEVNULL) for _ in range(workers)]
        for p in procs:
            p.wait()
        wall = time.monotonic() - t0
        queue = Queue.open(paths)
        try:
            done = queue.list("completed")
        finally:
            queue.close()
        if len(done) != jobs:
            raise RuntimeError(f"only {len(done)} of {jobs} jobs completed")
        first = min(j.started_at for j in done if j.started_at is not None)
        last = max(j.finished_at for j in done if j.finished_at is not None)
        return jobs / max(last - first, 1e-9), jobs / wall
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(*, jobs: int, workers: int, command: str, rounds: int) -> BenchResult:
    """Alternate spawn-limit and drain runs `rounds` times; report the medians (the
    defaults of `queuectl bench` are its options')."""
    limits, drains, walls = [], [], []
    for _ in range(rounds):
        limits.append(spawn_limit(workers, jobs, command))
        rate, wall = drain(workers, jobs, command)
        drains.append(rate)
        walls.append(wall)
    limit = statistics.median(limits)
    rate = statistics.median(drains)
    return BenchResult(
        jobs=jobs,
        workers=workers,
        command=command,
        rounds=rounds,
        spawn_limit_per_s=round(limit, 1),
        drain_per_s=round(rate, 1),
        wall_per_s=round(statistics.median(walls), 1),
        ratio=round(rate / limit, 3),
    )


def render(result: BenchResult, as_json: bool) -> str:
    if as_json:
        return json.dumps(result.to_dict())
    r = result
    return "\n".join(
        [
            f"{r.jobs} x `{r.command}` with {r.workers} worker(s), median of {r.rounds} rounds:",
            f"  spawn limit ({r.workers} process(es)) {r.spawn_limit_per_s:>10,.0f} jobs/s",
            f"  queuectl drain            {r.drain_per_s:>10,.0f} jobs/s  ({r.ratio:.2f} of the limit)",
            f"  queuectl, wall clock      {r.wall_per_s:>10,.0f} jobs/s  (worker start-up included)",
        ]
    )
