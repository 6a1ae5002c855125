"""`queuectl top`: a live view of the queue, redrawn every --interval until q or
Ctrl+C; `--once` (and any stdout that is not a terminal) prints one plain frame.

A frame (frame()) is plain text: counts per queue and state, throughput over the last
minute, running jobs with their elapsed time, workers with heartbeat age and
supervisord state, the last recovery pass.  Only the redraw adds escape codes (clear
and home), and every text from users and jobs is escaped (render.line).  No terminal
library: the standard library's termios puts the terminal in cbreak mode for the
single-key q, restored on every exit.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Iterator
from typing import Any

import click

from queuectl.cli.context import Ctx, Duration, pass_ctx
from queuectl.cli.render import line, table_lines
from queuectl.models import JobState, iso

#: Clear the screen and move home: each redraw.
CLEAR = "\x1b[H\x1b[2J"


@click.command()
@click.option("--once", is_flag=True, help="Print one plain frame (no escape codes) and exit.")
@click.option(
    "--interval",
    type=Duration(0.05, 86400.0),
    default=1.0,
    show_default=True,
    help="Seconds between redraws (0.05 to a day).",
)
@pass_ctx
def top(c: Ctx, once: bool, interval: float) -> int:
    """A live view of the queue until q or Ctrl+C: jobs per queue and state,
    throughput over the last minute, running jobs, workers (heartbeat age,
    supervisord state), the last recovery pass.  Not a terminal: one frame."""
    from queuectl import home
    from queuectl.procs import hostname
    from queuectl.supervisor import Supervisor

    home.secure(str(c.paths.home))
    sv = Supervisor(c.paths)
    queue, host = c.queue, hostname()

    def draw() -> str:
        return frame(queue, sv.processes() if sv.is_running() else [], host)

    if once or not sys.stdout.isatty():
        click.echo(draw(), nl=False)
        return 0
    try:
        with _cbreak(sys.stdin) as keys:
            while True:
                click.echo(CLEAR + draw(), nl=False)
                if _quit(keys, max(interval, 0.05)):
                    return 0
    except KeyboardInterrupt:
        return 0


@contextlib.contextmanager
def _cbreak(stdin: Any) -> Iterator[int | None]:
    """Single keys from the terminal (no Enter, no echo) while inside; the terminal's
    mode restored after, however the block ends.  None: stdin is not a terminal (only
    Ctrl+C stops)."""
    if not stdin.isatty():
        yield None
        return
    import termios
    import tty

    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit(fd: int | None, timeout: float) -> bool:
    """Wait up to `timeout` for a key; True when it was q (or stdin ended)."""
    ready = select.select([fd] if fd is not None else [], [], [], timeout)[0]
    if not ready or fd is None:
        return False
    key = os.read(fd, 32)
    return not key or b"q" in key.lower()


#: The window of the throughput line, seconds.
WINDOW = 60.0
#: The most running jobs and workers a frame lists.
MOST = 20


def frame(queue: Any, processes: list[Any], host: str, now: float | None = None) -> str:
    """The frame of `queue` at `now`; `processes`: this home's supervisord processes
    (empty when it is not running), matched to workers by (this host, pid)."""
    store = queue.store
    t = store.now() if now is None else now
    out = [f"queuectl top  {iso(t)}  (q or Ctrl+C quits)", ""]
    out += _counts(queue.queues())
    out.append("")
    out.append(_throughput(store.finished_since(t - WINDOW)))
    out.append(_recovery(queue.recovery_status()))
    out.append("")
    running = store.processing()
    out += _running(running, t)
    out.append("")
    out += _workers(queue.workers(), processes, host, t, {j.worker_id: j.id for j in running})
    return "\n".join(out) + "\n"


def _counts(queues: list[Any]) -> list[str]:
    states = [s.value for s in JobState]
    rows = [
        [q.name + (" (paused)" if q.paused else ""), *(q.counts.get(s, 0) for s in states)] for q in queues
    ]
    rows.append(["total", *(sum(q.counts.get(s, 0) for q in queues) for s in states)])
    return table_lines(rows, ["queue", *states])


def _throughput(done: dict[str, int]) -> str:
    n = sum(done.values())
    parts = ", ".join(f"{done.get(s, 0)} {s}" for s in ("completed", "failed", "dead"))
    return f"last {WINDOW:.0f}s: {n} attempts ended ({parts}), {n / WINDOW:.2f}/s"


def _recovery(rec: dict[str, Any]) -> str:
    if rec["last_pass_at"] is None:
        return "recovery: no pass has run yet"
    late = "  OVERDUE" if rec["overdue"] else ""
    return f"recovery: last pass {rec['age_s']:.1f}s ago by {line(rec['last_pass_by'] or '-')}{late}"


def _running(jobs: list[Any], t: float) -> list[str]:
    rows = [
        (j.id, j.queue, f"{t - (j.started_at or t):.1f}s", j.attempts, j.worker_id or "-", j.command)
        for j in sorted(jobs, key=lambda j: j.started_at or t)[:MOST]
    ]
    more = [f"... and {len(jobs) - MOST} more"] if len(jobs) > MOST else []
    head = f"running jobs: {len(jobs)}"
    if not rows:
        return [head]
    return [head, *table_lines(rows, ["job", "queue", "elapsed", "attempt", "worker", "command"]), *more]


def _workers(
    workers: list[Any], processes: list[Any], host: str, t: float, jobs: dict[str, str]
) -> list[str]:
    by_pid = {p.pid: p for p in processes if p.pid}
    rows = []
    for w in sorted(workers, key=lambda w: w.id)[:MOST]:
        p = by_pid.pop(w.pid, None) if w.host == host else None
        name, state = (p.group, p.state) if p is not None else ("-", "-")
        rows.append((name, state, w.host, w.pid, f"{max(0.0, t - w.heartbeat_at):.1f}s", jobs.get(w.id, "-")))
    for p in by_pid.values():  # supervised, not (or no longer) registered
        if p.group != "monitor":
            rows.append((p.group, p.state, host, p.pid, "-", "-"))
    head = f"workers: {len(workers)}"
    if not rows:
        return [head]
    return [head, *table_lines(rows, ["name", "process", "host", "pid", "heartbeat_age", "job"])]
