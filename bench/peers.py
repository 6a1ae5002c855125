"""Peer queues for the drain benchmark (issue 6): huey, RQ and task-spooler.

Each class is a `Drainer` (drain.py): pass it in `drainers=` to `drain.run()`.  The
peers' Python packages live in their own virtual environment, bench/.venv-peers
(`ensure_peers()` creates it and installs the Debian packages that are missing), and
their workers run under it as separate processes, so queuectl's own environment
stays clean.  Their side of the code is bench/peer_tasks/.

Every peer runs the workload's command as `/bin/sh -c CMD` in a job of its own, and
its queue is filled before the timed drain starts, as queuectl's is:

- rate: jobs ÷ first job start to last job end.  huey and RQ: the times the task
  itself records around the command (`peer_tasks/jobs.py`); task-spooler, which keeps
  start times to the second only: from releasing the queued jobs to the server
  reporting the last one finished (`peer_tasks/tsp_drain.py`).
- wall: jobs ÷ launching the workers to all done: RQ, to the exit of the last
  `rq worker --burst`; huey (no burst mode), to every result being in the store
  (then the consumer is stopped); task-spooler (no workers: a client process per
  job, started at enqueue), from the release to the exit of the last job's client.
- CPU per job: every process of the peer and the jobs' commands (`RUSAGE_CHILDREN`;
  task-spooler: `wait4` and /proc, see tsp_drain.py), start-up included; Redis's own
  CPU is given beside it as `server_cpu_us`, as PostgreSQL's is for queuectl.

    .venv/bin/python bench/peers.py --jobs 300   # smoke run: each peer once, beside
                                                 # the spawn limit and queuectl
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from drain import OUTPUT, SLEEP, TRUE, Drainer, QueuectlBare, SpawnLimit, Workload, children_cpu
from harness import BENCH, Procs, Sample, say, temp_dir, use_this_checkout, wait_until

PEER_VENV = BENCH / ".venv-peers"
TASKS = BENCH / "peer_tasks"
#: The peers' Python packages, pinned (bench/README.md names them too).
PINS = {"huey": "3.5.4", "rq": "3.0.0", "redis": "8.1.0"}
#: Debian packages, by the command the benchmark needs from them.
DEBIAN = {"tsp": "task-spooler", "redis-server": "redis-server"}

# --- the peers' environment ------------------------------------------------------------


@dataclass(frozen=True)
class Peers:
    """bench/.venv-peers and the Debian commands, ready; `versions` for the docs."""

    python: Path
    versions: dict[str, str] = field(default_factory=dict)

    def bin(self, name: str) -> str:
        return str(self.python.parent / name)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a peer process: peer_tasks/ importable, nothing of queuectl's."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("QUEUECTL_", "TS_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
        }
        return {**env, "PYTHONPATH": str(TASKS), **extra}


@cache
def ensure_peers() -> Peers:
    """Create bench/.venv-peers with the pinned packages, and apt-get install
    task-spooler and redis-server if their commands are missing (as root).  Idempotent:
    a ready environment costs one `python -c`."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        say(f"peers: creating {PEER_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    if _installed(python) != PINS:
        say(f"peers: pip install {' '.join(f'{k}=={v}' for k, v in PINS.items())}")
        pins = [f"{k}=={v}" for k, v in PINS.items()]
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins], check=True
        )
    missing = [pkg for cmd, pkg in DEBIAN.items() if shutil.which(cmd) is None]
    if missing:
        _apt_install(missing)
    versions = {f"{k} (PyPI)": v for k, v in _installed(python).items()}
    for pkg in DEBIAN.values():
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
        versions[f"{pkg} (Debian)"] = out.stdout.strip() or "not from Debian"
    return Peers(python, versions)


def _installed(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "v = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: v[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(v))"
    )
    out = subprocess.run([str(python), "-c", code, *PINS], capture_output=True, text=True)
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


def _apt_install(packages: Sequence[str]) -> None:
    say(f"peers: apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *packages]
    if subprocess.run(argv, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        # A stale package list: refresh it once (others share this machine's apt).
        subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"], env=env, check=True)
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)


def _ctl(peers: Peers, *args: str, env: dict[str, str]) -> dict[str, float]:
    """peer_tasks/ctl.py under the peers' python; its JSON, if it printed any."""
    argv = [str(peers.python), str(TASKS / "ctl.py"), *args]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"ctl.py {args[0]} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout)) if out.stdout.strip() else {}


def _sample(name: str, jobs: int, res: dict[str, float], wall: float, cpu: float) -> Sample:
    if res["jobs"] != jobs or res["failed"]:
        raise RuntimeError(f"{name}: {res['jobs']:.0f} of {jobs} jobs reported, {res['failed']:.0f} failed")
    return {"rate": jobs / (res["end"] - res["start"]), "wall_rate": jobs / wall, "cpu_us": cpu / jobs * 1e6}


def _timeout(jobs: int) -> float:
    return max(60.0, jobs * 0.05)


class Peer:
    """What drain.run() reads besides `drain()`: `worker_counts` and `workloads` (names)
    limit the figures a peer runs (None: all), `rounds` gives it fewer rounds (None: the
    run's).  `last` keeps the last run's summary (jobs, failures, output sizes)."""

    def __init__(
        self,
        worker_counts: Sequence[int] | None = None,
        workloads: Sequence[str] | None = None,
        rounds: int | None = None,
    ) -> None:
        if worker_counts is not None:
            self.worker_counts = tuple(worker_counts)
        if workloads is not None:
            self.workloads = tuple(workloads)
        self.rounds = rounds
        self.last: dict[str, float] = {}


# --- huey --------------------------------------------------------------------------------


class HueyDrainer(Peer):
    """huey: SqliteHuey on a temporary file, one `huey_consumer -k process -w N`."""

    key = "huey"
    title = f"huey {PINS['huey']}, SqliteHuey, `huey_consumer -k process -w N`"

    def drain(self, workload: Workload, jobs: int, workers: int) -> Sample:
        peers = ensure_peers()
        with temp_dir("hy") as d:
            db = d / "huey.db"
            env = peers.env(QB_HUEY_DB=str(db))
            _ctl(peers, "huey-enqueue", "--count", str(jobs), "--command", workload.command, env=env)
            argv = [peers.bin("huey_consumer"), "huey_tasks.huey", "-k", "process", "-w", str(workers)]
            cpu0 = children_cpu()
            with open(d / "consumer.log", "wb") as log, Procs() as ps:
                t0 = time.perf_counter()
                consumer = ps.start(argv, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                self._wait_results(db, jobs, consumer, _timeout(jobs))
                wall = time.perf_counter() - t0
                consumer.send_signal(signal.SIGINT)  # huey's graceful stop
                code = consumer.wait(timeout=30)
            cpu = children_cpu() - cpu0
            if code != 0:
                tail = (d / "consumer.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"huey_consumer exited with {code}; its log ends:\n{tail}")
            self.last = _ctl(peers, "huey-collect", env=env)
        return _sample("huey", jobs, self.last, wall, cpu)

    @staticmethod
    def _wait_results(db: Path, jobs: int, consumer: subprocess.Popen[bytes], timeout: float) -> None:
        """Until every task's result is in huey's `kv` table (huey has no burst mode)."""
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:

            def done() -> bool:
                if consumer.poll() is not None:
                    raise RuntimeError(f"huey_consumer exited early with {consumer.returncode}")
                return int(conn.execute("SELECT count(*) FROM kv").fetchone()[0]) >= jobs

            wait_until(done, timeout, "huey's results", interval=0.01)


# --- RQ ------------------------------------------------------------------------------------


class RQDrainer(Peer):
    """RQ: N `rq worker --burst` processes; the default `Worker` forks a work horse per
    job, `simple=True` uses `SimpleWorker` (runs jobs in the worker itself)."""

    def __init__(
        self,
        simple: bool = False,
        worker_counts: Sequence[int] | None = None,
        workloads: Sequence[str] | None = None,
        rounds: int | None = None,
    ) -> None:
        super().__init__(worker_counts, workloads, rounds)
        self.simple = simple
        self.key = "rq-simple" if simple else "rq"
        kind = "SimpleWorker" if simple else "Worker (a fork per job)"
        self.title = f"RQ {PINS['rq']}, `rq worker --burst`, {kind}"

    def drain(self, workload: Workload, jobs: int, workers: int) -> Sample:
        peers = ensure_peers()
        with redis_server() as redis, temp_dir("rq") as d:
            queue = f"qb-{os.getpid()}-{secrets.token_hex(4)}"
            where = ["--url", redis.url, "--queue", queue, "--ids", str(d / "ids")]
            env = peers.env()
            _ctl(peers, "rq-enqueue", *where, "--count", str(jobs), "--command", workload.command, env=env)
            simple = ["--worker-class", "rq.worker.SimpleWorker"] if self.simple else []
            argv = [peers.bin("rq"), "worker", "--burst", "--url", redis.url, "--path", str(TASKS), *simple]
            argv.append(queue)
            server0 = redis.cpu()
            cpu0 = children_cpu()
            try:
                with contextlib.ExitStack() as stack, Procs() as ps:
                    logs = [stack.enter_context(open(d / f"worker{i}.log", "wb")) for i in range(workers)]
                    t0 = time.perf_counter()
                    for i, log in enumerate(logs):
                        # Named after the queue, so that the run's clean-up finds their keys too.
                        named = [*argv[:2], "--name", f"{queue}-w{i}", *argv[2:]]
                        ps.start(named, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                    codes = ps.wait_all(_timeout(jobs))
                    wall = time.perf_counter() - t0
                cpu = children_cpu() - cpu0
                server_us = (redis.cpu() - server0) / jobs * 1e6
            finally:
                self.last = _ctl(peers, "rq-collect", *where, env=env)  # also deletes the run's keys
            if any(codes):
                tail = (d / "worker0.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"rq worker exited with {codes}; worker0.log ends:\n{tail}")
        sample = _sample(self.key, jobs, self.last, wall, cpu)
        if redis.pid is not None:
            sample["server_cpu_us"] = server_us
        return sample


@dataclass(frozen=True)
class Redis:
    url: str
    pid: int | None  # None: not on this host's /proc (its CPU is then not known)

    def cpu(self) -> float:
        """CPU seconds the server has used (/proc; 0 if its pid is unknown)."""
        if self.pid is None:
            return 0.0
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    """The Redis at 127.0.0.1:6379 if one answers (database 15: the benchmark deletes only
    its own keys there), else a private `redis-server` on a spare loopback port, without
    persistence, stopped by pid afterwards."""
    pid = _redis_pid(6379)
    if pid is not None:
        yield Redis("redis://127.0.0.1:6379/15", pid if Path(f"/proc/{pid}").exists() else None)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with temp_dir("rd") as d, open(d / "redis.log", "wb") as log, Procs() as ps:
        proc = ps.start([*argv, "--dir", str(d)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def up() -> bool:
            if proc.poll() is not None:
                text = (d / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {text}")
            return _redis_pid(port) is not None

        wait_until(up, 10.0, f"redis-server on port {port}")
        try:
            yield Redis(f"redis://127.0.0.1:{port}/0", proc.pid)
        finally:
            ps.stop_all(10.0)


def _redis_pid(port: int) -> int | None:
    """The pid of the Redis answering on 127.0.0.1:port (INFO server), or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    m = re.search(rb"process_id:(\d+)", data)
    return int(m.group(1)) if m else None


# --- task-spooler --------------------------------------------------------------------------


class TaskSpoolerDrainer(Peer):
    """task-spooler (`tsp`): a private server (TS_SOCKET in a temporary directory) with
    `-S N` slots; the jobs are queued behind a gate and released at once."""

    key = "tsp"
    title = "task-spooler, `tsp -S N`"

    def drain(self, workload: Workload, jobs: int, workers: int) -> Sample:
        peers = ensure_peers()
        tsp = shutil.which("tsp")
        if tsp is None:
            raise RuntimeError("task-spooler's tsp is not installed")
        timeout = _timeout(jobs)
        argv = [str(peers.python), str(TASKS / "tsp_drain.py"), "--tsp", tsp, "--jobs", str(jobs)]
        argv += ["--slots", str(workers), "--command", workload.command, "--timeout", str(timeout)]
        with temp_dir("ts") as d, Procs() as ps:
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            proc = ps.start([*argv, "--dir", str(d)], env=peers.env(), stdin=subprocess.DEVNULL, **pipes)
            try:
                out, err = proc.communicate(timeout=timeout + jobs * 0.02 + 60)  # + enqueueing
            except subprocess.TimeoutExpired:
                proc.terminate()  # tsp_drain.py then kills its server and clients
                proc.communicate(timeout=30)
                raise
        if proc.returncode != 0:
            raise RuntimeError(f"tsp_drain.py exited with {proc.returncode}:\n{err.decode()[-2000:]}")
        self.last = json.loads(out)
        r = self.last
        if r["jobs"] != jobs or r["failed"]:
            raise RuntimeError(f"tsp: {r['jobs']} of {jobs} jobs finished, {r['failed']} failed")
        return {"rate": jobs / r["span"], "wall_rate": jobs / r["wall"], "cpu_us": r["cpu"] / jobs * 1e6}


PEERS = (HueyDrainer(), RQDrainer(), RQDrainer(simple=True), TaskSpoolerDrainer())


# --- smoke run -----------------------------------------------------------------------------


def smoke(
    jobs: int,
    worker_counts: Sequence[int],
    workloads: Sequence[Workload],
    drainers: Sequence[Drainer] = PEERS,
) -> None:
    """Each drainer once per workload and worker count, after the spawn limit; one table."""
    peers = ensure_peers()
    for k, v in peers.versions.items():
        print(f"{k}: {v}")
    base = SpawnLimit()
    print(f"\n{jobs} jobs per run, one run each (not a benchmark: see bench/run.py)\n")
    head = ("workload", "N", "system", "rate/s", "÷ spawn", "wall/s", "CPU µs/job", "output/job")
    print("{:<8} {:>2} {:<10} {:>8} {:>8} {:>8} {:>10} {:>12}".format(*head))
    for wl in workloads:
        for n in worker_counts:
            ref = base.drain(wl, jobs, n)
            rows = [("spawn", ref, "")]
            for d in drainers:
                s = d.drain(wl, jobs, n)
                last: dict[str, float] = getattr(d, "last", {})
                outs = {last.get("out_min", -1), last.get("out_max", -1)} - {-1}
                rows.append((d.key, s, "/".join(str(int(o)) for o in sorted(outs))))
            for name, s, out in rows:
                print(
                    f"{wl.name:<8} {n:>2} {name:<10} {s['rate']:>8,.0f} {s['rate'] / ref['rate']:>8.2f} "
                    f"{s['wall_rate']:>8,.0f} {s['cpu_us']:>10,.0f} {out:>12}",
                    flush=True,
                )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Smoke run of the peer drainers.")
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--workloads", default="true,sleep,out64k")
    ap.add_argument("--peers", default=",".join(["queuectl", *(d.key for d in PEERS)]))
    a = ap.parse_args()
    use_this_checkout()
    known = {w.name: w for w in (TRUE, SLEEP, OUTPUT)}
    chosen = [d for d in (QueuectlBare(), *PEERS) if d.key in a.peers.split(",")]
    smoke(a.jobs, [int(n) for n in a.workers.split(",")], [known[w] for w in a.workloads.split(",")], chosen)
