"""A paired drain of two checkouts of queuectl: is a change inside the noise?

    .venv/bin/python bench/pair.py BASE_CHECKOUT [NEW_CHECKOUT] [--rounds 9]
        [--jobs 2000] [--workers 2] [--command true] [--pg URL]

Each round drains the same workload once with each checkout, in alternating order
(A B, B A, ...), with bare `worker run --burst` processes on a fresh SQLite home
(and, with --pg, on a fresh PostgreSQL schema).  Each checkout's processes import its
own `queuectl/` (PYTHONPATH), and its own CLI fills its queue, so two schema versions
never meet.  The ratio NEW / BASE is computed inside each round (the two runs were
seconds apart) and summarised as median (min-max): on a shared machine read the
ratio, not the rates.  The CPU the workers and their jobs used per job is reported
beside it (as base/new, so that above 1 is better in both): other load on the
machine moves it far less than the wall rate.  Make BASE a clean checkout of the commit before the change:
`git worktree add /tmp/base <commit>`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PYTHON = sys.executable
HERE = Path(__file__).resolve().parent.parent


@contextmanager
def _pg_schema(base: str) -> Iterator[str]:
    import uuid

    import psycopg

    schema = f"qp_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options=-csearch_path%3D{schema}&application_name=queuectl-bench"
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    # `python -m` puts its working folder (the checkout) first on sys.path; PYTHONPATH
    # covers anything imported after a chdir.
    env["PYTHONPATH"] = str(checkout)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def drain(checkout: Path, jobs: int, workers: int, command: str, db: str | None) -> tuple[float, float]:
    """Jobs per second from the first worker's start to the last one's exit, and the
    CPU seconds (user + system) the workers and their jobs used per job: the time a
    drain costs the machine, which other load on a shared machine disturbs far less
    than the wall rate."""
    with tempfile.TemporaryDirectory(prefix="qpair-", dir="/tmp") as tmp:
        home = Path(tmp)
        cli = [PYTHON, "-m", "queuectl", "--home", str(home)] + (["--db", db] if db else [])
        env = _env(checkout)
        lines = "".join(json.dumps({"command": command}) + "\n" for _ in range(jobs))
        subprocess.run(
            [*cli, "enqueue", "-"],
            input=lines,
            text=True,
            env=env,
            cwd=checkout,
            check=True,
            capture_output=True,
        )
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*cli, "worker", "run", "--burst"],
                env=env,
                cwd=checkout,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        codes = [p.wait(timeout=max(120.0, jobs * 0.1)) for p in procs]
        wall = time.perf_counter() - t0
        cpu = _children_cpu() - cpu0
        if any(codes):
            raise RuntimeError(f"{checkout}: workers exited with {codes}")
        done = subprocess.run(
            [*cli, "list", "--state", "completed", "--json", "--limit", str(jobs + 1)],
            env=env,
            cwd=checkout,
            check=True,
            capture_output=True,
            text=True,
        )
        n = len(json.loads(done.stdout))
        if n != jobs:
            raise RuntimeError(f"{checkout}: {n} of {jobs} jobs completed")
    return jobs / wall, cpu / jobs


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path, nargs="?", default=HERE)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--command", default="true")
    ap.add_argument("--pg", help="also drain on this PostgreSQL server (a fresh schema per run)")
    args = ap.parse_args(argv)
    stores: list[str | None] = [None] + ([args.pg] if args.pg else [])
    checkouts = {"base": args.base.resolve(), "new": args.new.resolve()}
    for name, path in checkouts.items():
        if not (path / "queuectl" / "__init__.py").exists():
            ap.error(f"{name}: {path} is not a queuectl checkout")
    for store in stores:
        label = "sqlite" if store is None else "postgres"
        ratios: list[float] = []
        cpu_ratios: list[float] = []
        rates: dict[str, list[float]] = {"base": [], "new": []}
        cpus: dict[str, list[float]] = {"base": [], "new": []}
        for r in range(args.rounds + 1):  # round 0: warm-up, discarded
            order = ["base", "new"] if r % 2 else ["new", "base"]
            got: dict[str, tuple[float, float]] = {}
            for name in order:
                if store is None:
                    got[name] = drain(checkouts[name], args.jobs, args.workers, args.command, None)
                else:
                    with _pg_schema(store) as url:
                        got[name] = drain(checkouts[name], args.jobs, args.workers, args.command, url)
            if r == 0:
                continue
            for name, (rate, cpu) in got.items():
                rates[name].append(rate)
                cpus[name].append(cpu * 1e6)
            ratios.append(got["new"][0] / got["base"][0])
            # CPU per job, inverted so that above 1 is better in both columns.
            cpu_ratios.append(got["base"][1] / got["new"][1])
            print(
                f"{label} round {r}: base {got['base'][0]:.0f}/s new {got['new'][0]:.0f}/s"
                f" ratio {ratios[-1]:.3f}; CPU/job base {got['base'][1] * 1e6:.0f} us"
                f" new {got['new'][1] * 1e6:.0f} us, base/new {cpu_ratios[-1]:.3f}"
            )
        print(
            f"{label}: {args.jobs} x `{args.command}`, {args.workers} workers, {args.rounds} rounds:"
            f" base {_summary(rates['base'])} jobs/s, new {_summary(rates['new'])} jobs/s,"
            f" new/base {_summary(ratios)}"
        )
        print(
            f"{label}: CPU per job (workers and jobs, not a PostgreSQL server):"
            f" base {_summary(cpus['base'])} us, new {_summary(cpus['new'])} us,"
            f" base/new {_summary(cpu_ratios)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
