"""Queue size: claim cost and `queuectl status` time at a small, a middle and a large queue.

The databases are built with the store's bulk enqueue (all jobs pending and due),
then checkpointed, as a long-lived queue's would be.  `queuectl status` runs first,
on the untouched queues, as fresh processes interleaved with `python -c pass`.  Then
the claim runs: each run claims K jobs with `store.claim(worker_id)` in batches;
between batches (untimed) the claimed jobs are finished through the store and as
many new jobs are enqueued, so the number of pending jobs stays exactly N.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import PYTHON, Results, Sample, interleave, say, temp_dir
from report import Doc, Target, table

QUEUECTL = str(Path(PYTHON).parent / "queuectl")
BATCH = 250
CHUNK = 50_000


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n:,}"


class BigQueue:
    """A database of `n` pending jobs, and an open store to claim from it."""

    def __init__(self, home: Path, n: int) -> None:
        from queuectl.api import Queue
        from queuectl.config import resolve_paths

        self.home = home
        self.n = n
        self.queue = Queue.open(resolve_paths(str(home)))
        self.store: Any = self.queue.store
        self._next = 0
        t0 = time.perf_counter()
        for start in range(0, n, CHUNK):
            self._add(min(CHUNK, n - start))
        self.build_rate = n / (time.perf_counter() - t0)
        self.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self.queue.close()  # reopened for the claims, after the status runs

    def _add(self, k: int) -> None:
        from queuectl.models import NewJob

        now = time.time()
        jobs = [
            NewJob(id=f"j{i:010d}", command="true", max_retries=3, priority=0, timeout=60.0, run_at=now)
            for i in range(self._next, self._next + k)
        ]
        self._next += k
        self.store.enqueue(jobs, now)

    def open(self) -> None:
        from queuectl.api import Queue
        from queuectl.config import resolve_paths

        self.queue = Queue.open(resolve_paths(str(self.home)))
        self.store = self.queue.store

    def claim_run(self, claims: int) -> Sample:
        """Claim `claims` jobs in batches; only the claims are timed.  The run's figure
        is the median over its batches of the time per claim, so a burst of load from
        elsewhere that hits one batch does not move it."""
        from queuectl.store.outcome import Completed

        store = self.store
        wid = "bench-claimer"
        per_claim = []
        left = claims
        while left:
            b = min(BATCH, left)
            t0 = time.perf_counter()
            got = [store.claim(wid) for _ in range(b)]
            per_claim.append((time.perf_counter() - t0) / b)
            if any(j is None for j in got):
                raise RuntimeError("claim returned None from a non-empty queue")
            for j in got:  # PROCESSING -> COMPLETED, fenced like a worker's finish
                if not store.finish(j.id, j.lease, Completed("", "")):
                    raise RuntimeError(f"finish lost the lease of {j.id}")
            self._add(b)
            left -= b
        return {"us": statistics.median(per_claim) * 1e6}


def _timed(argv: list[str], total: int | None = None) -> Sample:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, timeout=60)
    ms = (time.perf_counter() - t0) * 1000
    wrong = total is not None and not re.search(rb"^total\s+%d$" % total, out.stdout, re.M)
    if out.returncode != 0 or wrong:
        raise RuntimeError(f"{argv} failed ({out.returncode}): {out.stderr[-500:]!r}")
    return {"ms": ms}


def run(
    doc: Doc,
    *,
    small: int,
    big: int,
    claims: int,
    claim_rounds: int,
    status_rounds: int,
    mid: int | None = None,
) -> dict[str, Any]:
    """Claim cost and `status` time at `small`, `mid` (optional) and `big` jobs."""
    sizes = {"small": small, **({"mid": mid} if mid else {}), "big": big}
    with contextlib.ExitStack() as stack:
        queues: dict[str, BigQueue] = {}
        for key, n in sizes.items():
            home = stack.enter_context(temp_dir(key[0]))
            say(f"scale: building a queue of {n:,} pending jobs")
            queues[key] = BigQueue(home, n)
            say(f"scale: built at {queues[key].build_rate:,.0f} jobs/s")
        status: dict[str, Any] = {"pass": lambda: _timed([PYTHON, "-c", "pass"])}
        for key, q in queues.items():
            status[key] = lambda q=q: _timed([QUEUECTL, "--home", str(q.home), "status"], q.n)
        res_status = interleave(status, status_rounds, label="status")
        for q in queues.values():
            q.open()
        try:
            res_claim = interleave(
                {k: (lambda q=q: q.claim_run(claims)) for k, q in queues.items()}, claim_rounds, label="claim"
            )
        finally:
            for q in queues.values():
                q.queue.close()
    _report(doc, res_status, res_claim, queues, claims, claim_rounds, status_rounds)
    return {
        "status": res_status.as_json(),
        "claim": res_claim.as_json(),
        "build_rate": {k: q.build_rate for k, q in queues.items()},
    }


def _report(
    doc: Doc,
    rs: Results,
    rc: Results,
    queues: dict[str, BigQueue],
    claims: int,
    claim_rounds: int,
    status_rounds: int,
) -> None:
    small, big = _size(queues["small"].n), _size(queues["big"].n)
    sizes = " and ".join(_size(q.n) for q in queues.values())
    sec = doc.section("Claim cost and queue size")
    sec.add(
        f"`store.claim(worker_id)` from queues of {sizes} pending jobs (each kept at its "
        f"size: see `bench/scale.py`), {claims:,} claims per run in batches of {BATCH} (a run's "
        f"figure: the median batch), {claim_rounds} rounds, the queues interleaved. Each "
        "claim is one `BEGIN IMMEDIATE` transaction with its commit (synchronous=NORMAL) and "
        "its history event."
    )
    rows = []
    for key, q in queues.items():
        rows.append(
            (
                _size(q.n),
                rc.stat(key, "us").fmt(".1f"),
                f"{1e6 / rc.stat(key, 'us').median:,.0f}",
                "1 (baseline)" if key == "small" else rc.ratio(key, "small", "us").fmt(".2f"),
            )
        )
    sec.add(table(("Pending jobs", "µs per claim", "Claims/s", f"÷ cost at {small}"), rows))
    sec.add(
        f"Building the {big} queue with `SQLiteStore.enqueue` in transactions of {CHUNK:,} "
        f"(once, not repeated): {queues['big'].build_rate:,.0f} jobs/s."
    )
    doc.targets.append(
        Target(
            f"Claim cost at {big} ÷ at {small} pending",
            rc.ratio("big", "small", "us"),
            1.3,
            at_least=False,
            spec=".2f",
        )
    )

    sec = doc.section("`queuectl status` wall time")
    sec.add(
        f"A fresh process each time (`{Path(QUEUECTL).name} --home H status`, the venv's "
        f"console script), {status_rounds} rounds, interleaved with `python -c pass` (the "
        "same interpreter); measured from spawn to exit."
    )
    rows = [("`python -c pass`", rs.stat("pass", "ms").fmt(".0f"), "1 (baseline)", "")]
    for key, q in queues.items():
        rows.append(
            (
                f"`queuectl status`, {_size(q.n)} jobs",
                rs.stat(key, "ms").fmt(".0f"),
                rs.ratio(key, "pass", "ms").fmt(".1f"),
                "" if key == "small" else rs.ratio(key, "small", "ms").fmt(".2f"),
            )
        )
    sec.add(table(("Command", "ms", "÷ `python -c pass`", f"÷ status at {small}"), rows))
    doc.targets.append(
        Target(
            f"`queuectl status` at {big} jobs",
            rs.stat("big", "ms"),
            150,
            at_least=False,
            spec=".0f",
            unit=" ms",
        )
    )
