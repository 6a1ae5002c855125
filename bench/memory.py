"""Worker memory: one `worker run --burst` draining 100,000 `true` jobs, its RSS sampled.

The jobs are enqueued first with the library API (`Queue.enqueue_many`, as the drain
section does); then one bare worker drains them while this process reads its
`VmRSS` (and `VmHWM`, the peak) from /proc/<pid>/status every `interval` seconds.
Each sample's job count is how many jobs had finished by its time, from the jobs'
`finished_at` read back after the run (the same host clock; nothing queries the
database while the worker runs).  One run per store: it is a size, not a rate, and a
run of 100,000 jobs is long enough to show growth.
"""

from __future__ import annotations

import bisect
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from drain import completed_jobs
from harness import PYTHON, ROOT, SQLITE, Backend, Procs, Stat, say, steady
from report import Doc, Target, table

#: Targets (issue 6): worker RSS under 40 MB and flat over 100,000 jobs.  "Flat" is
#: judged from the sample after 10,000 jobs to the last one: before that, the SQLite
#: page cache (default cache_size: 2,048,000 bytes per connection) fills as the worker
#: touches new pages, about 2 MB over the first ~5,000 jobs, and then stays at its
#: bound (with `PRAGMA cache_size=-256` that early growth disappears: checked once by
#: hand).  1 MB over 90,000 jobs is 11 bytes per job: a leak would show.
RSS_LIMIT_MB = 40.0
GROWTH_LIMIT_MB = 1.0

#: MB here is 10^6 bytes (/proc reports KiB): the stricter reading of "40 MB".
MB = 1e6


def _status(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of a process in MB, or None once it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return tuple(int(fields[k].split()[0]) * 1024 / MB for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]
    except (KeyError, ValueError, IndexError):
        return None  # a zombie has no Vm* lines


class Drain:
    """One store's run: enqueue, drain with one worker, sample its memory."""

    def __init__(self, backend: Backend, jobs: int, interval: float) -> None:
        self.backend = backend
        self.jobs = jobs
        self.interval = interval
        self.trace: list[tuple[float, float, float, int]] = []  # (time, RSS, HWM, jobs done)

    def __call__(self) -> dict[str, float]:
        with self.backend.fresh("m") as qh:
            q = qh.open()
            try:
                t = time.perf_counter()
                q.enqueue_many([{"command": "true"} for _ in range(self.jobs)])
                took = time.perf_counter() - t
                say(f"memory {self.backend.key}: enqueued {self.jobs:,} jobs in {took:.1f}s")
            finally:
                q.close()
            logs = qh.home / "logs"
            logs.mkdir(mode=0o700, exist_ok=True)
            argv = [PYTHON, "-m", "queuectl", *qh.cli, "worker", "run", "--burst"]
            samples: list[tuple[float, float, float]] = []
            with open(logs / "worker.log", "wb") as err, Procs() as ps:
                t0 = time.perf_counter()
                p = ps.start(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
                deadline = time.monotonic() + max(600.0, self.jobs * 0.02)
                while p.poll() is None:
                    now = time.time()
                    st = _status(p.pid)
                    if st is not None:
                        samples.append((now, *st))
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"memory: the worker did not finish {self.jobs:,} jobs in time")
                    time.sleep(self.interval)
                wall = time.perf_counter() - t0
            if p.returncode:
                tail = (logs / "worker.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"memory: the worker exited with {p.returncode}; its log ends:\n{tail}")
            done = completed_jobs(qh, self.jobs, "memory")
        ends = sorted(j.finished_at or 0.0 for j in done)
        self.trace = [(t, rss, hwm, bisect.bisect_right(ends, t)) for t, rss, hwm in samples]
        return self._summary(wall)

    def _summary(self, wall: float) -> dict[str, float]:
        started = [s for s in self.trace if s[3] > 0]
        if len(started) < 2:
            raise RuntimeError("memory: fewer than 2 samples after the first job finished; more jobs needed")
        first, last = started[0], started[-1]
        out = {
            "start_mb": first[1],
            "start_jobs": float(first[3]),
            "end_mb": last[1],
            "end_jobs": float(last[3]),
            "growth_mb": last[1] - first[1],
            "growth_after_mb": last[1] - next((s for s in started if s[3] >= self.marks[0]), last)[1],
            "peak_mb": max(last[2], *(s[1] for s in self.trace)),
            "rate": self.jobs / wall,
            "samples": float(len(self.trace)),
        }
        for mark in self.marks:
            at = next((s for s in started if s[3] >= mark), last)
            out[f"at_{mark}_mb"] = at[1]
            out[f"at_{mark}_jobs"] = float(at[3])
        return out

    @property
    def marks(self) -> tuple[int, int]:
        return marks(self.jobs)


def marks(jobs: int) -> tuple[int, int]:
    """Checkpoints: 10,000 jobs (past the page cache's filling; at most a third of a
    smaller run) and half the jobs."""
    return (min(10_000, jobs // 3), jobs // 2)


def run(
    doc: Doc,
    *,
    jobs: int,
    interval: float = 0.5,
    backends: Sequence[Backend] = (SQLITE,),
    pg_jobs: int | None = None,
) -> dict[str, object]:
    """One run per store; PostgreSQL drains `pg_jobs` jobs if given (its worker is slower)."""
    results: dict[str, dict[str, float]] = {}
    traces: dict[str, list[tuple[float, float, float, int]]] = {}
    counts = {b.key: (pg_jobs or jobs) if b.pg_url else jobs for b in backends}
    for b in backends:
        n = counts[b.key]
        d = Drain(b, n, interval)
        say(f"memory {b.key}: one worker, {n:,} jobs, RSS every {interval:g}s")
        results[b.key] = steady(b, d, f"memory {b.key}")()
        traces[b.key] = d.trace
        say(f"memory {b.key}: " + ", ".join(f"{k}={v:.4g}" for k, v in results[b.key].items()))
    _report(doc, results, counts, interval, backends)
    return {"summary": results, "trace": traces, "jobs": counts}


def _report(
    doc: Doc,
    results: dict[str, dict[str, float]],
    counts: dict[str, int],
    interval: float,
    backends: Sequence[Backend],
) -> None:
    sec = doc.section("Worker memory")
    jobs = " or ".join(dict.fromkeys(f"{n:,}" for n in counts.values()))
    firsts = {marks(n)[0] for n in counts.values()}
    early = f"{firsts.pop():,}" if len(firsts) == 1 else "the early mark (10,000 or a third)"
    sec.add(
        f"One `queuectl worker run --burst` (bare, default settings) drains {jobs} `true` "
        "jobs (see the table), enqueued first with `Queue.enqueue_many`; this process reads "
        f"the worker's `VmRSS` from `/proc/<pid>/status` every {interval:g} s, and `VmHWM` "
        "(its peak RSS). A sample's job count is the number of jobs whose `finished_at` (read "
        "back after the run) is at or before the sample's time. **Start** is the first sample "
        f"after the first job finished; **{early}** and **halfway** the first sample at or "
        "past that count; **end** the last sample before the worker exited. MB = 10^6 bytes. "
        f"The growth is given from the start and from {early} jobs: in the first few "
        "thousand jobs SQLite's page cache (default `cache_size`, 2,048,000 bytes per "
        "connection) fills as the worker touches new pages, and then stays at its bound, so "
        f"*flat* (issue 6) is judged from {early} jobs to the end. One run per store: RSS "
        "is a size, not a rate, so it is not repeated (the drain rate shown is that one "
        "run's, beside the figures of the drain section)."
    )

    def at(mb: float, n: float) -> str:
        return f"{mb:.1f} ({n:,.0f})"

    rows = []
    for b in backends:
        r = results[b.key]
        first, half = marks(counts[b.key])
        rows.append(
            (
                b.title,
                f"{counts[b.key]:,}",
                at(r["start_mb"], r["start_jobs"]),
                at(r[f"at_{first}_mb"], r[f"at_{first}_jobs"]),
                at(r[f"at_{half}_mb"], r[f"at_{half}_jobs"]),
                at(r["end_mb"], r["end_jobs"]),
                f"{r['growth_mb']:+.2f}",
                f"{r['growth_after_mb']:+.2f}",
                f"{r['peak_mb']:.1f}",
                f"{r['rate']:,.0f}",
            )
        )
    sec.add("Worker RSS in MB (jobs finished at that sample):")
    sec.add(
        table(
            (
                "Store",
                "Jobs",
                "Start",
                f"After {early}",
                "Halfway",
                "End",
                "Growth, start to end",
                f"Growth, {early} to end",
                "Peak (VmHWM)",
                "Drain, jobs/s",
            ),
            rows,
        )
    )
    for b in backends:
        r = results[b.key]
        n = counts[b.key]
        tail = f", {b.title}" if len(backends) > 1 else ""
        doc.targets.append(
            Target(
                f"Worker peak RSS over {n:,} jobs{tail} (issue 6)",
                Stat.of([r["peak_mb"]]),
                RSS_LIMIT_MB,
                False,
                ".1f",
                " MB",
            )
        )
        doc.targets.append(
            Target(
                f"Worker RSS growth, {marks(n)[0]:,} to {n:,} jobs{tail} (issue 6: flat)",
                Stat.of([r["growth_after_mb"]]),
                GROWTH_LIMIT_MB,
                False,
                ".2f",
                " MB",
            )
        )
