"""Claim cost with named queues: flat in the number of jobs, also behind a paused queue
or a queue at its concurrency that holds the best jobs.

    .venv/bin/python bench/claim_queues.py                 # SQLite and PostgreSQL
    .venv/bin/python bench/claim_queues.py --pg none       # SQLite only

Three layouts, each built at a small and a big size N (all jobs pending and due):

- plain: N jobs in the default queue;
- paused: N jobs at priority 9 in a paused queue, ahead of 1,000 claimable jobs at
  priority 0 in another queue;
- full: the same N jobs in a queue of concurrency 1 whose one slot is taken (one of
  its jobs processing), ahead of the same 1,000 claimable jobs.

Each run claims K jobs with `store.claim(worker_id)` in batches; between batches
(untimed) the claimed jobs are finished and as many new claimable jobs enqueued, so
every queue keeps its size.  A run's figure is the median batch's time per claim; the
small and the big database of a layout run interleaved (harness.interleave), and the
ratio big ÷ small is taken per round.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import PG_DEFAULT_URL, Sample, interleave, pg_schema, say, temp_dir

BATCH = 250
CHUNK = 50_000
WORK = 1_000
LAYOUTS = ("plain", "paused", "full")


class Layout:
    """One database of one layout at size n, and an open store on it."""

    def __init__(self, store: Any, layout: str, n: int) -> None:
        self.store = store
        self.layout = layout
        self.n = n
        self._next = 0
        self.work = "default" if layout == "plain" else "work"
        if layout == "plain":
            self._add(n, "default", 0)
            return
        held = "held" if layout == "paused" else "capped"
        self._add(n, held, 9)
        self._add(WORK, self.work, 0)
        if layout == "paused":
            store.set_paused(held, True)
        else:
            store.set_concurrency(held, 1)
            taken = store.claim("bench-holder", queues=[held])  # its one slot, kept
            assert taken is not None and taken.queue == held

    def _add(self, k: int, queue: str, priority: int) -> None:
        from queuectl.models import NewJob

        for start in range(0, k, CHUNK):
            now = self.store.now()
            size = min(CHUNK, k - start)
            jobs = [
                NewJob(f"j{i:010d}", "true", 3, priority, 60.0, now - 1, queue=queue)
                for i in range(self._next, self._next + size)
            ]
            self._next += size
            self.store.enqueue(jobs, now)

    def claim_run(self, claims: int) -> Sample:
        from queuectl.store.outcome import Completed

        per_claim = []
        left = claims
        while left:
            b = min(BATCH, left)
            t0 = time.perf_counter()
            got = [self.store.claim("bench-claimer") for _ in range(b)]
            per_claim.append((time.perf_counter() - t0) / b)
            for j in got:
                if j is None or j.queue != self.work:
                    raise RuntimeError(f"{self.layout}: claimed {j!r}, not a job of {self.work}")
                self.store.finish(j.id, j.lease, Completed("", ""))
            self._add(b, self.work, 0)
            left -= b
        return {"us": statistics.median(per_claim) * 1e6}


@contextlib.contextmanager
def opened(backend: str, pg: str) -> Iterator[Any]:
    from queuectl.store import open_store

    if backend == "sqlite":
        with temp_dir("c") as d:
            store = open_store(str(Path(d) / "queue.db"))
            try:
                yield store
            finally:
                store.close()
        return
    with pg_schema(pg) as url:
        store = open_store(url)
        try:
            yield store
        finally:
            store.close()


def measure(backend: str, pg: str, small: int, big: int, claims: int, rounds: int) -> list[tuple[str, ...]]:
    rows = []
    for layout in LAYOUTS:
        with opened(backend, pg) as s_small, opened(backend, pg) as s_big:
            say(f"{backend} {layout}: building {small:,} and {big:,} jobs")
            a, b = Layout(s_small, layout, small), Layout(s_big, layout, big)
            if backend == "sqlite":
                for s in (s_small, s_big):
                    s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            res = interleave(
                {"small": lambda a=a: a.claim_run(claims), "big": lambda b=b: b.claim_run(claims)},
                rounds,
                label=f"{backend} {layout}",
            )
        rows.append(
            (
                backend,
                layout,
                res.stat("small", "us").fmt(".0f"),
                res.stat("big", "us").fmt(".0f"),
                res.ratio("big", "small", "us").fmt(".2f"),
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default=PG_DEFAULT_URL, help="PostgreSQL server URL, or 'none'")
    ap.add_argument("--small", type=int, default=1_000)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--claims", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    backends = ["sqlite"] + ([] if args.pg == "none" else ["postgres"])
    rows = []
    for backend in backends:
        rows += measure(backend, args.pg, args.small, args.big, args.claims, args.rounds)
    head = ("Store", "Layout", f"µs per claim, {args.small:,}", f"µs per claim, {args.big:,}", "big ÷ small")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
