"""Measure the chaos scenarios and write docs/reliability.md.

    .venv/bin/python -m tests.chaos.reliability --out docs/reliability.md \\
        [--jobs 300] [--backends sqlite,postgres] [--soak FILE.json ...]

Each scenario runs on a fresh queue (a temporary home; a fresh PostgreSQL schema)
with real supervisord and real processes, then the same invariant checker as the
tests (tests/chaos/harness.py).  Where a scenario has a fault-free twin (same
workload, no fault), the twin runs right before it in the same invocation and the
throughput ratio is faulted / fault-free.  --soak adds rows from the JSON files
`QUEUECTL_SOAK_REPORT` made (tests/chaos/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.chaos import scenarios
from tests.chaos.harness import cluster, pg_available

Scenario = Callable[..., scenarios.Result]


def plan(jobs: int) -> list[tuple[str, Scenario, dict[str, Any], bool, tuple[str, ...]]]:
    """(name, function, kwargs, has a fault-free twin, backends)."""
    both = ("sqlite", "postgres")
    return [
        (
            "random worker SIGKILL (every 1 s)",
            scenarios.random_kills,
            {"jobs": jobs, "every": 1.0},
            True,
            both,
        ),
        ("monitor + worker SIGKILLs, 3 monitors", scenarios.monitor_chaos, {"jobs": jobs}, True, both),
        ("supervisord tree SIGKILL + restart", scenarios.supervisord_kill, {"jobs": jobs}, True, both),
        (
            "supervisord alone SIGKILL, workers stop by themselves + restart",
            scenarios.supervisord_kill,
            {"jobs": jobs, "everything": False},
            True,
            both,
        ),
        ("database held busy 4 s", scenarios.busy_database, {"jobs": jobs, "hold": 4.0}, True, both),
        ("pg_terminate_backend every 1 s", scenarios.pg_terminate, {"jobs": jobs}, True, ("postgres",)),
        ("PostgreSQL server restarted mid-drain", scenarios.pg_restart, {"jobs": jobs}, True, ("postgres",)),
        (
            "SIGSTOP/SIGCONT of a worker (x3)",
            scenarios.sigstop,
            {"jobs": jobs // 3, "rounds": 3},
            False,
            both,
        ),
        (
            "SIGTERM-ignoring jobs + grandchildren",
            scenarios.stubborn_timeouts,
            {"jobs": jobs // 3},
            False,
            both,
        ),
        *[
            (f"failpoint {p}", _failpoint(p), {"jobs": 40, "crashes": 5}, False, both)
            for p in (
                "after_claim_commit",
                "before_finish_commit",
                "after_finish_commit",
                "monitor_after_cas",
            )
        ],
    ]


def _failpoint(point: str) -> Scenario:
    def run(c: Any, **kw: Any) -> scenarios.Result:
        return scenarios.failpoint(c, point, **kw)

    return run


def measure(jobs: int, backends: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name, fn, kw, twin, where in plan(jobs):
        for backend in backends:
            if backend not in where:
                continue
            base = None
            if twin:
                with cluster(backend) as c:
                    base = fn(c, **kw, faults=False)
                    base.report.ok()
            with cluster(backend) as c:
                res = fn(c, **kw)
            row = res.row()
            row["scenario"] = name
            row["ratio"] = (res.throughput / base.throughput) if base else None
            row["baseline_jobs_per_s"] = base.throughput if base else None
            row["violations"] = res.report.problems[:5]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def render(rows: list[dict[str, Any]], soak: list[dict[str, Any]], command: str) -> str:
    out = [
        "# Reliability figures",
        "",
        "Produced by the chaos harness (tests/chaos/: real supervisord, real worker and",
        "monitor processes, real PostgreSQL) with this command, on this machine:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}; "
        f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Intervals: heartbeat 0.2 s, heartbeat timeout 2 s, monitor interval 0.3 s, backoff",
        "capped at 0.2 s (the tests' short settings).  Each job appends `start`/`end` lines",
        "with its lease to a file; the checker verifies issue 5's invariants 1-7.",
        "",
        "Columns: **lost**: jobs not in their expected terminal state; **dup**: runs beyond",
        "the first that followed an attempt not ended by a failure; **expl.**: how many of",
        "those follow a recovery recorded in the history (unexplained = dup - expl.);",
        "**recov.**: attempts ended by a recovery; **recovery s**: from a worker's SIGKILL",
        "(or SIGSTOP) to the recovery of its job in the audit log, median / max;",
        "**ratio**: throughput under the fault / fault-free throughput of the same workload",
        "measured just before in the same invocation (n/a: the fault is the workload).",
        "**viol.**: invariant violations found by the checker.",
        "",
        "| scenario | store | jobs | faults | lost | dup | expl. | recov. "
        "| recovery s (med / max) | jobs/s | ratio | viol. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows + soak:
        rec = f"{_f(r['recovery_median_s'])} / {_f(r['recovery_max_s'])}"
        rate = _f(r["jobs_per_s"], "{:.1f}")
        out.append(
            f"| {r['scenario']} | {r['backend']} | {r['jobs']} | {r['faults']} | {r['lost']} "
            f"| {r['duplicates']} | {r['explained']} | {r['recoveries']} | {rec} | {rate} "
            f"| {_f(r.get('ratio'))} | {r['problems']} |"
        )
    notes = [r for r in rows + soak if r.get("notes") or r.get("violations")]
    if notes:
        out += ["", "Notes:", ""]
        for r in notes:
            text = r.get("notes") or ""
            if r.get("violations"):
                text += f" violations: {r['violations']}"
            out.append(f"- {r['scenario']} ({r['backend']}): {text.strip()}")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--soak", nargs="*", default=[])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    backends = args.backends.split(",")
    if "postgres" in backends and (why := pg_available()):
        print(f"skipping PostgreSQL: {why}", file=sys.stderr)
        backends.remove("postgres")
    rows = measure(args.jobs, backends)
    soak = [json.loads(Path(f).read_text()) for f in args.soak]
    command = ".venv/bin/python -m tests.chaos.reliability " + " ".join(sys.argv[1:])
    args.out.write_text(render(rows, soak, command))


if __name__ == "__main__":
    main()
