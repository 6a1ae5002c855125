"""One task-spooler drain: a private server, jobs queued behind a gate, released at once.

    python tsp_drain.py --tsp /usr/bin/tsp --dir DIR --jobs N --slots S --command CMD

task-spooler starts a job as soon as it is queued and a slot is free (and refuses
`-S 0`), so the first job queued is a gate that takes every slot (`-N S`) and blocks
on a FIFO; the jobs (`tsp /bin/sh -c CMD`, output to a file in DIR as by default)
queue behind it, and writing to the FIFO releases them all.  The server takes fewer
than about 1,000 queued jobs at once, so a larger run is done in equal batches of at
most `BATCH`, each behind its own gate, and the batches' figures are added up.

task-spooler has no worker process: every `tsp CMD` leaves a client process behind
that waits for the server's go, runs the command and reports its exit.  This
process makes itself their subreaper (PR_SET_CHILD_SUBREAPER), so the server and
every such client become its children, and it can count their CPU time.  Per batch:

- span: from the gate's release (`time.time()` just before writing to the FIFO) to
  the server reporting every job finished (`tsp -w` on the last ones);
- wall: from the release to the exit of the last job's client process (reaped here);
- CPU: each job's client process from the release to its exit (its own CPU and its
  command's, from `wait4`, less what it had used before the release, from
  /proc/PID/sched), plus the server's CPU over the same span.

Prints one JSON object: span and wall (seconds, summed over the batches), cpu
(seconds), jobs (finished), failed (a non-zero exit level), and the smallest and
largest output file (the gates' empty ones included).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a live process (its main thread: these are single-threaded)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/sched").read_text().splitlines():
            if line.startswith("se.sum_exec_runtime"):
                return float(line.split(":")[1]) / 1e3  # milliseconds, to the nanosecond
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children() -> set[int]:
    """Processes whose parent is this one (orphans included: this process is a subreaper)."""
    me, found = os.getpid(), set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                    found.add(int(entry.name))
    return found


def job_states(tsp: str) -> dict[int, tuple[str, str]]:
    """`tsp -l` as {id: (state, exit level)}."""
    out = subprocess.run([tsp, "-l"], capture_output=True, text=True, check=True).stdout
    states = {}
    for line in out.splitlines()[1:]:
        f = line.split()
        states[int(f[0])] = (f[1], f[3] if f[1] == "finished" else "")
    return states


#: The server holds a connection for every queued job and will not take about 1,000
#: at once (TS_MAXCONN or not: it blocks the next `tsp`), so larger runs are drained
#: in batches of at most this many, each queued behind its own gate.
BATCH = 900


def drain(tsp: str, home: Path, jobs: int, slots: int, command: str, timeout: float) -> dict[str, float]:
    """Every batch in turn; the spans, wall times and CPU of the batches add up."""
    deadline = time.monotonic() + timeout
    # The server is the first child; every `tsp CMD` then leaves one client child.
    subprocess.run([tsp, "-S", str(slots)], check=True, stdout=subprocess.DEVNULL)
    (server,) = children()
    total = {"span": 0.0, "wall": 0.0, "cpu": 0.0, "jobs": 0, "failed": 0}
    batches = -(-jobs // BATCH)
    for i in range(batches):
        size = jobs // batches + (1 if i < jobs % batches else 0)
        for key, value in batch(tsp, home / f"gate{i}", server, size, slots, command, deadline).items():
            total[key] += value
    return total


def batch(
    tsp: str, gate: Path, server: int, jobs: int, slots: int, command: str, deadline: float
) -> dict[str, float]:
    os.mkfifo(gate)
    argv = [tsp, "-N", str(slots), "/bin/sh", "-c", f"read _ < {gate}"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    first = int(out.stdout) + 1
    ids = range(first, first + jobs)
    for _ in ids:
        subprocess.run([tsp, "/bin/sh", "-c", command], check=True, stdout=subprocess.DEVNULL)
    clients = children() - {server}
    states = job_states(tsp)
    if len(clients) != jobs + 1 or states.get(first - 1, ("",))[0] != "running":
        raise RuntimeError(f"tsp: {len(clients)} client processes for {jobs} jobs and the gate")
    before = sum(cpu_seconds(p) for p in clients)
    server0 = cpu_seconds(server)

    start = time.time()
    with open(gate, "w") as f:
        f.write("go\n")
    # Jobs start in id order, so once the last `slots` have ended every job has ended;
    # `tsp -l` then checks, and any straggler is waited for too.
    waits = list(ids[-slots:])
    while waits:
        for jid in waits:
            left = max(0.1, deadline - time.monotonic())
            subprocess.run([tsp, "-w", str(jid)], stdout=subprocess.DEVNULL, check=False, timeout=left)
        end = time.time()
        states = job_states(tsp)
        waits = [jid for jid in ids if states[jid][0] != "finished"]
    server_cpu = cpu_seconds(server) - server0
    used = 0.0
    for pid in clients:
        _, _, ru = os.wait4(pid, 0)
        used += ru.ru_utime + ru.ru_stime
    wall_end = time.time()
    return {
        "span": end - start,
        "wall": wall_end - start,
        "cpu": used - before + server_cpu,
        "jobs": sum(1 for jid in ids if states[jid][0] == "finished"),
        "failed": sum(1 for jid in ids if states[jid][1] != "0"),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsp", required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--jobs", type=int, required=True)
    ap.add_argument("--slots", type=int, required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--timeout", type=float, default=300.0, help="Seconds for the drain after the release.")
    a = ap.parse_args(argv)
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    out = a.dir / "out"
    out.mkdir()
    os.environ.update(
        TS_SOCKET=str(a.dir / "socket"),
        TMPDIR=str(out),  # where the jobs' output files go
        TS_SLOTS=str(a.slots),
        TS_MAXFINISHED=str(2 * a.jobs + 10),  # default 1000: finished jobs would drop off the list
    )
    # SIGTERM (the benchmark's timeout) must still run the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        res = drain(a.tsp, a.dir, a.jobs, a.slots, a.command, a.timeout)
        sizes = [f.stat().st_size for f in out.iterdir()] or [0]  # the gates' files are empty
        print(json.dumps({**res, "out_min": min(sizes), "out_max": max(sizes)}))
    finally:
        subprocess.run([a.tsp, "-K"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        kill_children()
    return 0


def kill_children(timeout: float = 10.0) -> None:
    """Kill and reap every child left (after a failure: the gate, queued clients, running
    jobs); a killed client's job becomes a child in turn, so repeat until none is left."""
    deadline = time.monotonic() + timeout
    while (left := children()) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
