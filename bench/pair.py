"""A paired drain of two checkouts of queuectl: is a change inside the noise?

    .venv/bin/python bench/pair.py BASE_CHECKOUT [NEW_CHECKOUT] [--rounds 9]
        [--jobs 2000] [--workers 2] [--command true] [--pg URL]

Each round drains the same workload once with each checkout, in alternating order
(A B, B A, ...), with bare `worker run --burst` processes on a fresh SQLite home
(and, with --pg, on a fresh PostgreSQL schema).  Each checkout's processes import its
own `queuectl/` (PYTHONPATH), and its own CLI fills its queue, so two schema versions
never meet.  The ratio NEW / BASE is computed inside each round (the two runs were
seconds apart) and summarised as median (min-max): on a shared machine read the
ratio, not the rates.  Make BASE a clean checkout of the commit before the change:
`git worktree add /tmp/base <commit>`.
"""

from __future__ import annotations

import argparse
import json
import os
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


def drain(checkout: Path, jobs: int, workers: int, command: str, db: str | None) -> float:
    """Jobs per second from the first worker's start to the last one's exit."""
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
    return jobs / wall


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
        ratios, rates = [], {"base": [], "new": []}  # type: ignore[var-annotated]
        for r in range(args.rounds + 1):  # round 0: warm-up, discarded
            order = ["base", "new"] if r % 2 else ["new", "base"]
            got = {}
            for name in order:
                if store is None:
                    got[name] = drain(checkouts[name], args.jobs, args.workers, args.command, None)
                else:
                    with _pg_schema(store) as url:
                        got[name] = drain(checkouts[name], args.jobs, args.workers, args.command, url)
            if r == 0:
                continue
            for name in got:
                rates[name].append(got[name])
            ratios.append(got["new"] / got["base"])
            print(
                f"{label} round {r}: base {got['base']:.0f}/s new {got['new']:.0f}/s ratio {ratios[-1]:.3f}"
            )
        print(
            f"{label}: {args.jobs} x `{args.command}`, {args.workers} workers, {args.rounds} rounds:"
            f" base {_summary(rates['base'])} jobs/s, new {_summary(rates['new'])} jobs/s,"
            f" new/base {_summary(ratios)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
