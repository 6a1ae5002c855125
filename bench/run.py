"""queuectl benchmarks: measure on this machine and write docs/benchmarks.md.

    .venv/bin/python bench/run.py            # full run (about 5-10 minutes), writes docs/benchmarks.md
    .venv/bin/python bench/run.py --quick    # smoke run (about a minute), writes bench/results/

Every figure is the median and the min-max of several runs; the things compared run
interleaved in the same invocation and are reported as ratios to a baseline measured
in that same run (the spawn limit, SQLite alone, `python -c pass`, the small queue).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import drain
import enqueue
import scale
from harness import ROOT, load_now, machine, say, use_this_checkout
from report import Doc, table

SECTIONS = ("drain", "enqueue", "scale")


@dataclass(frozen=True)
class Mode:
    name: str
    drain_jobs: int
    drain_rounds: int
    enqueue_jobs: int
    enqueue_rounds: int
    small_queue: int
    big_queue: int
    claims: int
    claim_rounds: int
    status_rounds: int


FULL = Mode(
    name="full",
    drain_jobs=2_000,
    drain_rounds=15,
    enqueue_jobs=50_000,
    enqueue_rounds=7,
    small_queue=1_000,
    big_queue=1_000_000,
    claims=5_000,
    claim_rounds=11,
    status_rounds=15,
)
QUICK = Mode(
    name="quick",
    drain_jobs=500,
    drain_rounds=5,
    enqueue_jobs=10_000,
    enqueue_rounds=5,
    small_queue=1_000,
    big_queue=100_000,
    claims=1_000,
    claim_rounds=5,
    status_rounds=5,
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
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    use_this_checkout()
    # The benchmark's homes are chosen by --home; an inherited queue must not leak in.
    for key in [k for k in os.environ if k.startswith("QUEUECTL_")]:
        del os.environ[key]
    mode = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 5:
            sys.exit("bench: --rounds must be at least 5")
        r = args.rounds
        mode = replace(mode, drain_rounds=r, enqueue_rounds=r, claim_rounds=r, status_rounds=r)
    only = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(only) - set(SECTIONS)
    if unknown:
        sys.exit(f"bench: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    results_dir = ROOT / "bench" / "results"
    out = args.out or (results_dir / "benchmarks-quick.md" if args.quick else ROOT / "docs" / "benchmarks.md")
    raw_path = args.json or results_dir / f"benchmarks-{mode.name}.json"

    command = shlex.join([_rel(sys.executable), "bench/run.py", *argv])
    info = machine()
    say(f"bench: {mode.name} mode; sections {', '.join(only)}; writing {out}")
    doc = Doc()
    raw: dict[str, object] = {"mode": asdict(mode), "machine": info, "command": command}
    t0 = time.monotonic()
    if "drain" in only:
        raw["drain"] = drain.run(doc, jobs=mode.drain_jobs, rounds=mode.drain_rounds)
    if "enqueue" in only:
        raw["enqueue"] = enqueue.run(doc, jobs=mode.enqueue_jobs, rounds=mode.enqueue_rounds)
    if "scale" in only:
        raw["scale"] = scale.run(
            doc,
            small=mode.small_queue,
            big=mode.big_queue,
            claims=mode.claims,
            claim_rounds=mode.claim_rounds,
            status_rounds=mode.status_rounds,
        )
    minutes = (time.monotonic() - t0) / 60
    info["Load average at end"] = load_now()
    info["Duration"] = f"{minutes:.1f} min"

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc.render(_head(command, mode, info)))
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1))
    say(f"bench: wrote {out} and {raw_path} in {minutes:.1f} min")
    return 0


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
- This machine is shared: another engineer runs test suites on the same 2 cores, so absolute
  rates move from run to run (see the load averages above and the min–max ranges). Read the
  **ratios**; the absolute numbers are secondary.
- Temporary homes live under `/tmp` and are removed afterwards. Targets are judged on the
  median; "(not in every run)" marks a median that meets its target while a run did not.
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
