"""Shared machinery: interleaved runs, statistics, temporary homes, the machine.

A *subject* is anything measured: a zero-argument callable that does one run and
returns its metrics (a dict of floats).  `interleave()` runs a set of subjects in
rounds (A B C, A B C, ...), so a noisy neighbour or a slow drift of the machine hits
all of them alike; a ratio between two subjects is taken inside each round (paired)
before its median and range are reported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
#: The interpreter that runs the benchmark also runs every queuectl process.
PYTHON = sys.executable

Sample = dict[str, float]
Subject = Callable[[], Sample]

_T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress on stderr (the document is the only output that matters)."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --- statistics ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, spec: str) -> str:
        return f"{self.median:{spec}} ({self.lo:{spec}}–{self.hi:{spec}})"


@dataclass
class Results:
    """Samples per subject; sample i of every subject was taken in round i."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def values(self, subject: str, metric: str) -> list[float]:
        return [s[metric] for s in self.samples[subject]]

    def stat(self, subject: str, metric: str) -> Stat:
        return Stat.of(self.values(subject, metric))

    def ratio(self, num: str, den: str, metric: str, den_metric: str | None = None) -> Stat:
        """num/den per round (paired), then median and range over the rounds."""
        a = self.values(num, metric)
        b = self.values(den, den_metric or metric)
        return Stat.of([x / y for x, y in zip(a, b, strict=True)])

    def as_json(self) -> dict[str, list[Sample]]:
        return self.samples


def interleave(subjects: Mapping[str, Subject], rounds: int, *, label: str, warmup: bool = True) -> Results:
    """Run every subject once per round, in the same order each round.

    With `warmup`, each subject first runs once untimed (cold caches, first imports,
    lazily built files), and that run is discarded.
    """
    if warmup:
        for name, fn in subjects.items():
            say(f"{label}: warm-up {name}")
            fn()
    res = Results({name: [] for name in subjects})
    for r in range(rounds):
        for name, fn in subjects.items():
            sample = fn()
            res.samples[name].append(sample)
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sample.items())
            say(f"{label}: round {r + 1}/{rounds} {name}: {shown}")
    return res


# --- temporary homes and processes -------------------------------------------------


@contextlib.contextmanager
def temp_dir(tag: str = "") -> Iterator[Path]:
    """A short path under /tmp (supervisord sockets must stay short), removed after."""
    path = Path(tempfile.mkdtemp(prefix=f"qb{tag}-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Procs:
    """Processes this benchmark started: waited for, or killed by pid on the way out."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def wait_all(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        return codes

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()


def use_this_checkout() -> None:
    """Measure the queuectl next to this bench/, in this process and in every process it
    starts (PYTHONPATH comes before the venv's editable install), so a benchmark run
    from a clean checkout (`git worktree add`) measures exactly that commit."""
    sys.path.insert(0, str(ROOT))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")
    try:
        import queuectl
    except ImportError:
        sys.exit("bench: queuectl's dependencies are missing: run with the project's venv, .venv/bin/python")
    if Path(queuectl.__file__).resolve().parent != ROOT / "queuectl":
        sys.exit(f"bench: imported queuectl from {queuectl.__file__}, not from {ROOT}")


# --- the machine -----------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def code_version() -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "queuectl")
    return f"{commit}" + (" + uncommitted changes in queuectl/" if dirty else "")


def machine() -> dict[str, str]:
    import apsw

    import queuectl

    load = os.getloadavg()
    return {
        "CPU": _cpu_model(),
        "Cores": f"{os.cpu_count()} (usable by this process: {len(os.sched_getaffinity(0))})",
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()} ({PYTHON})",
        "SQLite": apsw.sqlite_lib_version(),
        "APSW": apsw.apsw_version(),
        "queuectl": f"{queuectl.__version__}, commit {code_version()}, from {ROOT}",
        "Date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "Load average at start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


def load_now() -> str:
    load = os.getloadavg()
    return f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
