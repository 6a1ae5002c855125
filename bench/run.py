"""queuectl benchmarks: measure on this machine and write docs/benchmarks.md.

    .venv/bin/python bench/run.py            # full run (about 20 minutes), writes docs/benchmarks.md
    .venv/bin/python bench/run.py --quick    # smoke run (about 3 minutes), writes bench/results/

Every figure is the median and the min-max of several runs; the things compared run
interleaved in the same invocation and are reported as ratios to a baseline measured
in that same run (the spawn limit, the database alone, SQLite, `python -c pass`, the
small queue).  The PostgreSQL store is measured beside SQLite on the server at --pg
(default: the local test server), each run in a fresh schema; `--pg none` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import drain
import enqueue
import harness
import latency
import memory
import scale
from drain import OUTPUT, SLEEP, TRUE, Workload
from harness import (
    PG_DEFAULT_URL,
    ROOT,
    SQLITE,
    Backend,
    load_now,
    machine,
    postgres,
    postgres_info,
    say,
    use_this_checkout,
)
from report import Doc, table

SECTIONS = ("drain", "enqueue", "latency", "scale", "memory")


@dataclass(frozen=True)
class Mode:
    name: str
    drain_jobs: int
    drain_rounds: int
    #: Each workload at its worker counts; its `rounds` (None: drain_rounds).
    drain_workloads: tuple[Workload, ...]
    #: The worker counts and rounds (None: all) of queuectl under supervisord.
    supervised_counts: tuple[int, ...]
    supervised_rounds: int | None
    enqueue_jobs: int
    enqueue_rounds: int
    small_queue: int
    big_queue: int
    claims: int
    claim_rounds: int
    status_rounds: int
    latency_samples: int
    latency_rounds: int
    latency_workers: int
    memory_jobs: int
    #: PostgreSQL's jobs in the memory section (0: SQLite only).
    memory_pg_jobs: int
    #: A middle queue size for claim cost and `status` (issue 6: 1k, 100k, 1M); 0: none.
    mid_queue: int = 0
    #: Drain huey, RQ and task-spooler beside queuectl (bench/peers.py).
    peers: bool = True


#: The first figures (`true`, 1 and 2 processes: issue 2's target) get all the rounds;
#: the other counts and workloads, and queuectl under supervisord (about 3 s more per
#: run: supervisord's start-up and shutdown), 5 each (issue 6's minimum), to keep the
#: full run around 20 minutes on 2 cores.  `sleep 0.01` at 1 or 2 workers would take
#: 10-20 s per run and per system: it runs at 4 and 8.
FEW = 5
FULL = Mode(
    name="full",
    drain_jobs=2_000,
    drain_rounds=15,
    drain_workloads=(
        TRUE,
        replace(TRUE, counts=(4, 8), rounds=FEW),
        replace(SLEEP, counts=(4, 8), rounds=FEW),
        replace(OUTPUT, counts=(2, 8), rounds=FEW),
    ),
    supervised_counts=(1, 2, 4, 8),
    supervised_rounds=FEW,
    enqueue_jobs=50_000,
    enqueue_rounds=7,
    latency_samples=200,
    latency_rounds=5,
    latency_workers=2,
    small_queue=1_000,
    big_queue=1_000_000,
    claims=5_000,
    claim_rounds=11,
    status_rounds=15,
    memory_jobs=100_000,
    mid_queue=100_000,
    memory_pg_jobs=30_000,
)
QUICK = Mode(
    name="quick",
    drain_jobs=500,
    drain_rounds=5,
    drain_workloads=(TRUE, replace(SLEEP, counts=(8,)), replace(OUTPUT, counts=(2,))),
    supervised_counts=(2,),
    supervised_rounds=None,
    enqueue_jobs=10_000,
    enqueue_rounds=5,
    latency_samples=40,
    latency_rounds=5,
    latency_workers=2,
    small_queue=1_000,
    big_queue=100_000,
    claims=1_000,
    claim_rounds=5,
    status_rounds=5,
    memory_jobs=30_000,
    memory_pg_jobs=0,
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="Fewer jobs and runs: a smoke run, not for the docs."
    )
    ap.add_argument("--rounds", type=int, help="Override the number of rounds of every section (at least 5).")
    ap.add_argument("--only", help=f"Comma-separated sections to run: {', '.join(SECTIONS)} (default: all).")
    ap.add_argument(
        "--out",
        type=Path,
        help="Where to write the Markdown (default: docs/benchmarks.md, or bench/results/ with --quick).",
    )
    ap.add_argument(
        "--json", type=Path, help="Also write every raw sample as JSON (default: bench/results/)."
    )
    ap.add_argument(
        "--no-peers",
        action="store_true",
        help="Leave huey, RQ and task-spooler out of the drain section (no bench/.venv-peers).",
    )
    ap.add_argument(
        "--pg",
        default=PG_DEFAULT_URL,
        metavar="URL",
        help=f"PostgreSQL server to measure beside SQLite, each run in a fresh schema it creates "
        f"and drops (default: {PG_DEFAULT_URL}); 'none' leaves PostgreSQL out.",
    )
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    use_this_checkout()
    # The benchmark's homes are chosen by --home; an inherited queue must not leak in.
    for key in [k for k in os.environ if k.startswith("QUEUECTL_")]:
        del os.environ[key]
    # Some machines (this sandbox among them) set PYTHONDONTWRITEBYTECODE: every
    # queuectl process would then compile all its modules from source at every start
    # (an editable install has no bytecode of its own), while the peers' packages,
    # compiled by pip at install time, would not.  Measure what an installed queuectl
    # does: bytecode cached after the first start.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    mode = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 5:
            sys.exit("bench: --rounds must be at least 5")
        r = args.rounds
        mode = replace(
            mode,
            drain_rounds=r,
            drain_workloads=tuple(replace(wl, rounds=None) for wl in mode.drain_workloads),
            supervised_rounds=None,
            enqueue_rounds=r,
            claim_rounds=r,
            status_rounds=r,
            latency_rounds=r,
        )
    if args.no_peers:
        mode = replace(mode, peers=False)
    only = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(only) - set(SECTIONS)
    if unknown:
        sys.exit(f"bench: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    results_dir = ROOT / "bench" / "results"
    out = args.out or (results_dir / "benchmarks-quick.md" if args.quick else ROOT / "docs" / "benchmarks.md")
    raw_path = args.json or results_dir / f"benchmarks-{mode.name}.json"

    command = shlex.join([_rel(sys.executable), "bench/run.py", *argv])
    info = machine()
    backends = [SQLITE]
    if args.pg.lower() != "none":
        try:
            pg_row = postgres_info(args.pg)
        except Exception as exc:
            why = " ".join(str(exc).split())
            sys.exit(f"bench: PostgreSQL at --pg does not answer ({why}); give another URL or --pg none")
        rows = list(info.items())
        at = next(i for i, (k, _) in enumerate(rows) if k == "APSW") + 1
        info = dict([*rows[:at], ("PostgreSQL", pg_row), *rows[at:]])
        backends.append(postgres(args.pg))
    say(f"bench: {mode.name} mode; sections {', '.join(only)}; writing {out}")
    doc = Doc()
    raw: dict[str, object] = {"mode": asdict(mode), "machine": info, "command": command}
    t0 = time.monotonic()
    raw.update(run_sections(doc, only, mode, backends))
    minutes = (time.monotonic() - t0) / 60
    info["Load average at end"] = load_now()
    info["Duration"] = f"{minutes:.1f} min"
    if len(backends) > 1:
        info["PostgreSQL runs redone"] = _redone()
    raw["redone"] = list(harness.REDONE)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc.render(_head(command, mode, info)))
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1))
    say(f"bench: wrote {out} and {raw_path} in {minutes:.1f} min")
    return 0


def run_sections(doc: Doc, only: Sequence[str], mode: Mode, backends: Sequence[Backend]) -> dict[str, object]:
    """Run the chosen sections in order; returns their raw samples by section."""
    raw: dict[str, object] = {}
    pg = backends[1:]
    if "drain" in only:
        # PostgreSQL and the pinning with `true` at 1-2 workers only (the issues'
        # figures), to keep the run short.
        drainers = [
            drain.QueuectlBare(),
            # Without the worker pinning (cpu_affinity=off), beside the default (auto).
            drain.QueuectlBare(config={"cpu_affinity": "off"}, worker_counts=(1, 2), workloads=("true",)),
            drain.QueuectlSupervised(worker_counts=mode.supervised_counts, rounds=mode.supervised_rounds),
            *(drain.QueuectlBare(b, worker_counts=(2,), workloads=("true",)) for b in pg),
            *peer_drainers(mode),
        ]
        raw["drain"] = drain.run(
            doc,
            jobs=mode.drain_jobs,
            rounds=mode.drain_rounds,
            workloads=mode.drain_workloads,
            drainers=drainers,
        )
    if "enqueue" in only:
        raw["enqueue"] = enqueue.run(
            doc, jobs=mode.enqueue_jobs, rounds=mode.enqueue_rounds, backends=backends
        )
    if "latency" in only:
        raw["latency"] = latency.run(
            doc,
            backends=backends,
            samples=mode.latency_samples,
            rounds=mode.latency_rounds,
            workers=mode.latency_workers,
        )
    if "scale" in only:
        raw["scale"] = scale.run(
            doc,
            small=mode.small_queue,
            big=mode.big_queue,
            mid=mode.mid_queue or None,
            claims=mode.claims,
            claim_rounds=mode.claim_rounds,
            status_rounds=mode.status_rounds,
        )
    if "memory" in only:
        # PostgreSQL with fewer jobs (its one worker drains more slowly), or none.
        pg_mem = [b for b in pg if mode.memory_pg_jobs]
        raw["memory"] = memory.run(
            doc, jobs=mode.memory_jobs, backends=[SQLITE, *pg_mem], pg_jobs=mode.memory_pg_jobs
        )
    return raw


def peer_drainers(mode: Mode) -> list[drain.Drainer]:
    """Other queues drained beside queuectl (issue 6: huey, RQ, task-spooler), each a
    `drain.Drainer` interleaved with the spawn limit and queuectl; their packages are
    installed into bench/.venv-peers first (peers.ensure_peers).  huey and task-spooler
    run every cell queuectl runs; RQ, 10-100 times slower per job, runs `true` only (its
    default forking worker at 2 and 8 processes: about 40 s a run at 2)."""
    if not mode.peers:
        return []
    import peers

    peers.ensure_peers()
    few = min(FEW, mode.drain_rounds)
    return [
        peers.HueyDrainer(rounds=few),
        peers.TaskSpoolerDrainer(rounds=few),
        peers.RQDrainer(simple=True, worker_counts=(1, 2, 4, 8), workloads=("true",), rounds=few),
        peers.RQDrainer(worker_counts=(2, 8), workloads=("true",), rounds=few),
    ]


def _redone() -> str:
    """Runs on the shared PostgreSQL server that were done again, and why."""
    if not harness.REDONE:
        return "none (no run failed and the server did not restart during one)"
    return f"{len(harness.REDONE)}: " + "; ".join(harness.REDONE)


def _rel(path: str) -> str:
    try:
        return os.path.relpath(path, ROOT) if Path(path).is_relative_to(ROOT) else path
    except ValueError:
        return path


def _head(command: str, mode: Mode, info: dict[str, str]) -> str:
    quick = (
        "\n**This is a `--quick` smoke run (fewer jobs, a smaller big queue, fewer runs): "
        "do not quote these numbers.**\n"
        if mode.name == "quick"
        else ""
    )
    return f"""# Benchmarks

Generated by `bench/run.py` on the machine below; do not edit by hand, run it again.
{quick}
Made with this command, run from the root of the checkout named in the *queuectl* row
below (the benchmark measures the `queuectl/` next to its `bench/`; a clean checkout of a
commit, e.g. `git worktree add`, keeps others' work in progress out of the figures):

```sh
{command}
```

## Machine

{table(("", ""), list(info.items()))}

## Method

- Every figure is the **median (min–max)** over the number of runs stated with it, after one
  discarded warm-up run of each thing measured.
- The things compared run **interleaved** in this one invocation (A B A B ...): every round
  runs each of them once, in the same order. A ratio is computed inside each round (paired:
  the two runs were seconds apart) and then summarised, so it is far steadier than the
  absolute numbers.
- This machine is shared: other engineers run test suites on the same 2 cores (and on the
  same PostgreSQL server), so absolute rates move from run to run (see the load averages
  above and the min–max ranges). Read the **ratios**; the absolute numbers are secondary.
- PostgreSQL is the server in the machine table, on this host; every PostgreSQL run uses a
  schema of its own, created before it and dropped after it, and connections named
  `queuectl-bench`. A PostgreSQL run that fails, or during which the server restarts (other
  engineers' tests restart it), is done again, up to 3 times; the machine table says how
  many were.
- Temporary homes live under `/tmp` and are removed afterwards. Targets are judged on the
  median; "(not in every run)" marks a median that meets its target while a run did not.
- Every process runs with Python's bytecode cache on (`PYTHONDONTWRITEBYTECODE`, which this
  machine sets, is removed), as after a `pip install`: otherwise each queuectl process
  would compile its modules from source at every start, and the peers, compiled by pip,
  would not.
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
