"""CLI commands that run or control processes: workers, supervisord, the monitor.

Registered on the `cli` group of commands.py (which imports this module).  Parsing and
rendering only: the work is in worker.py, supervisor.py and monitor.py.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from queuectl import render
from queuectl.cli import POLL_INTERVAL_RANGE
from queuectl.commands import Ctx, cli, emit_json, json_option, pass_ctx, table
from queuectl.errors import InvalidInput

# --- workers and the monitor ---------------------------------------------------------


@cli.group()
def worker() -> None:
    """Run workers: one in this terminal, or a pool under supervisord."""


@worker.command("run")
@click.option("--burst", is_flag=True, help="Exit when no job is due and none is processing.")
@click.option(
    "--poll-interval", type=click.FloatRange(*POLL_INTERVAL_RANGE), help="Longest idle wait, seconds."
)
@pass_ctx
def worker_run(c: Ctx, burst: bool, poll_interval: float | None) -> None:
    """One worker in the foreground (what supervisord runs).

    The first SIGTERM/SIGINT finishes the current job and exits 0; a second one
    kills the job, records the attempt, and exits.
    """
    from queuectl.cli import run_worker  # shared with cli.py's fast path

    sys.exit(run_worker(c.queue, c.paths, burst, poll_interval))


def _supervisor(c: Ctx) -> Any:
    from queuectl import home
    from queuectl.supervisor import Supervisor

    # Also the commands that never open the queue (shutdown, a worker start that only
    # scales) check the home before they act on its supervisord.
    home.secure(str(c.paths.home))
    return Supervisor(c.paths)


@worker.command("start")
@click.option("--count", type=int, help="Number of workers (default: the last count, or 1).")
@click.option("--detach", is_flag=True, help="Start supervisord in the background and return.")
@pass_ctx
def worker_start(c: Ctx, count: int | None, detach: bool) -> None:
    """Run N workers and the monitor under supervisord.

    In the foreground it blocks until Ctrl+C, SIGTERM or `queuectl worker stop`,
    then stops every worker gracefully (running jobs finish) and exits 0.  If
    supervisord dies, the workers finish their jobs and exit by themselves; it
    waits for them, then exits 6.  If supervisord already runs for this home, it
    only brings the pool to N and returns.
    """
    from queuectl.supervisor import pool_size, prepare_home, run_foreground

    if count is not None and count < 1:
        raise InvalidInput("--count must be at least 1 (use `queuectl worker stop` to stop all)")
    sv = _supervisor(c)
    n = count if count is not None else (sv.saved_count() or 1)
    if sv.is_running():
        started, stopping = sv.scale(n)
        click.echo(f"{n} worker(s) running (started {len(started)}, stopping {len(stopping)})")
        return
    size = pool_size(prepare_home(c.paths))
    if n > size:  # before supervisord starts: a refused count must leave nothing running
        raise InvalidInput(f"--count must be between 1 and {size} (the pool size in conf/)")
    c.queue  # noqa: B018 - open (and migrate) the database before any worker does
    db = c.paths.db_url if (c.paths.db_url != str(c.paths.db_dir / "queue.db")) else None
    if detach:
        sv.launch(foreground=False, db_url=db)
        sv.scale(n)
        click.echo(f"supervisord started in the background with {n} worker(s) and the monitor")
        return

    def say(msg: str) -> None:
        click.echo(f"queuectl: {msg}", err=True)

    sys.exit(run_foreground(sv, n, db, say))


@worker.command("stop")
@pass_ctx
def worker_stop(c: Ctx) -> None:
    """Stop all workers of this home gracefully (each finishes its current job)."""
    _stop_workers(c)


@cli.command("stop-workers")
@pass_ctx
def stop_workers(c: Ctx) -> None:
    """Same as `worker stop`."""
    _stop_workers(c)


def _stop_workers(c: Ctx) -> None:
    from queuectl import procs

    sv = _supervisor(c)
    stopped = sv.stop_workers() if sv.is_running() else []
    # Workers of this home started by hand (`worker run`) get the same warm stop.
    bare = procs.signal_local_workers(_own_workers(c))
    total = len(stopped) + len(bare)
    click.echo(f"stopped {total} worker(s)" if total else "no workers were running")


def _own_workers(c: Ctx) -> list[Any]:
    """The registered workers started from this home on this host: homes that share a
    database each act on their own."""
    from queuectl import home, procs

    me = home.identity(str(c.paths.home))
    return [w for w in c.queue.workers() if w.host == procs.hostname() and w.home == me]


@worker.command("status")
@click.option(
    "--all", "all_", is_flag=True, help="Also the workers of other homes and hosts on this database."
)
@json_option
@pass_ctx
def worker_status(c: Ctx, all_: bool, as_json: bool) -> None:
    """Each worker of this home: its process state (supervisord) beside its heartbeat
    (database)."""
    sv = _supervisor(c)
    procs_ = [p for p in sv.processes() if p.up or p.group != "workers"] if sv.is_running() else []
    from queuectl.procs import hostname

    rows_db = {(w.host, w.pid): w for w in (c.queue.workers() if all_ else _own_workers(c))}
    now = c.queue.store.now()
    out = []
    for p in procs_:
        w = rows_db.pop((hostname(), p.pid), None) if p.pid else None
        out.append(_worker_row(p.full_name, p.state, p.pid or None, w, now))
    for w in rows_db.values():  # workers not under this supervisord (bare; with --all, any)
        out.append(_worker_row(None, None, w.pid, w, now))
    if as_json:
        emit_json(out)
        return
    if not out:
        click.echo("no workers")
        return
    rows = [
        (r["name"] or "-", r["process_state"] or "-", r["pid"], r["host"], r["heartbeat_age_s"], r["job_id"])
        for r in out
    ]
    table(rows, ("name", "process", "pid", "host", "heartbeat_age_s", "job"))


def _worker_row(name: str | None, state: str | None, pid: int | None, w: Any, now: float) -> dict[str, Any]:
    from queuectl.models import iso

    return {
        "name": name,
        "process_state": state,
        "pid": pid,
        "worker_id": w.id if w else None,
        "host": w.host if w else None,
        "heartbeat_at": iso(w.heartbeat_at) if w else None,
        "heartbeat_age_s": round(now - w.heartbeat_at, 1) if w else None,
        "job_id": w.job_id if w else None,
        "home": w.home if w else None,
    }


@cli.command()
@pass_ctx
def shutdown(c: Ctx) -> None:
    """Stop the workers gracefully, then supervisord itself (and the monitor)."""
    sv = _supervisor(c)
    if not sv.is_running():
        click.echo("supervisord is not running for this home")
        return
    stopped = sv.stop_workers()
    sv.shutdown()
    click.echo(f"stopped {len(stopped)} worker(s) and supervisord")


@cli.group()
def monitor() -> None:
    """The monitor that recovers crashed and hung jobs."""


@monitor.command("run")
@pass_ctx
def monitor_run(c: Ctx) -> None:
    """Run recovery passes every monitor_interval until stopped."""
    from queuectl import logs
    from queuectl.signals import StopSignals

    logs.install(c.paths.logs / "monitor.direct.log")
    signals = StopSignals()
    signals.install()
    if os.environ.get("SUPERVISOR_ENABLED"):
        signals.watch_parent()
    sys.exit(_monitor(c, signals).run())


def _monitor(c: Ctx, signals: Any = None) -> Any:
    from queuectl import home, procs
    from queuectl.monitor import Monitor

    home.secure(str(c.paths.home), writers=True)  # it writes recovery logs in logs/
    return Monitor(
        c.queue.store,
        queue=procs.queue_key(c.paths.db_url),
        logs_dir=c.paths.logs,
        signals=signals,
    )


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only print what would be recovered.")
@click.option("--job", "job_id", help="Recover this processing job now (reason: manual).")
@json_option
@pass_ctx
def recover(c: Ctx, dry_run: bool, job_id: str | None, as_json: bool) -> None:
    """Run one monitor pass now and print what it recovered (and killed)."""
    mon = _monitor(c)
    if job_id is not None:
        if dry_run:
            raise InvalidInput("--dry-run and --job cannot be combined")
        done = [mon.recover_job(job_id)]
    elif dry_run:
        done = mon.run_once(dry_run=True)
    else:
        done = mon.guarded_pass("cli", wait=True) or []
    if mon.log_error is not None:  # the recoveries stand: a warning, not a failure
        click.echo(
            f"queuectl: warning: {mon.log_error}; the records stay in the database"
            " and the next recovery pass writes them",
            err=True,
        )
    if as_json:
        emit_json([r.fields() for r in done])
        return
    if not done:
        click.echo("nothing to recover")
    for r in done:
        click.echo(render.line(_recovery_line(r, dry_run)))


def _recovery_line(r: Any, dry_run: bool) -> str:
    verb = "would recover" if dry_run else "recovered"
    kill = "would kill" if dry_run else "killed"
    pids = f", {kill} pids {' '.join(map(str, r.killed_pids))}" if r.killed_pids else ""
    if r.event == "job_recovered":
        back = " (attempt given back)" if r.attempt_given_back else ""
        return f"{verb} job {r.job_id} ({r.reason}): attempt {r.attempt} -> {r.state_after}{back}{pids}"
    if r.event == "worker_removed":
        return f"{verb} worker {r.worker_id} ({r.reason}): removed"
    return f"{kill} orphan process {r.pid} of job {r.job_id} (attempt {r.attempt})"


@cli.command()
@click.option("--jobs", type=click.IntRange(1, 1_000_000), default=2000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--command", "command", default="true", show_default=True, help="The job to run.")
@json_option
def bench(jobs: int, workers: int, rounds: int, command: str, as_json: bool) -> None:
    """Drain no-op jobs on a temporary home; print jobs/s next to the spawn limit.

    The spawn limit is how fast as many processes start the same command with no
    queue at all: the ratio tells how close queuectl gets to this machine's limit.
    """
    from queuectl import benchmark

    if not command.strip():
        raise InvalidInput("--command must not be empty")
    result = benchmark.run(jobs=jobs, workers=workers, command=command, rounds=rounds)
    click.echo(benchmark.render(result, as_json))
