"""CLI commands that run or control processes: workers, supervisord, the monitor.

Registered on the `cli` group of cli.py (which imports this module).  Parsing and
rendering only: the work is in worker.py, supervisor.py and monitor.py.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from queuectl.cli import Ctx, cli, emit_json, json_option, pass_ctx
from queuectl.errors import InvalidInput

# --- workers and the monitor ---------------------------------------------------------


@cli.group()
def worker() -> None:
    """Run workers: one in this terminal, or a pool under supervisord."""


@worker.command("run")
@click.option("--burst", is_flag=True, help="Exit when no job is due and none is processing.")
@click.option("--poll-interval", type=click.FloatRange(min=0.005, max=60), help="Longest idle wait, seconds.")
@pass_ctx
def worker_run(c: Ctx, burst: bool, poll_interval: float | None) -> None:
    """One worker in the foreground (what supervisord runs).

    The first SIGTERM/SIGINT finishes the current job and exits 0; a second one
    kills the job, records the attempt, and exits.
    """
    from queuectl import procs
    from queuectl.signals import StopSignals
    from queuectl.worker import Worker

    signals = StopSignals()
    signals.install()
    w = Worker(
        c.queue.store,
        queue=procs.queue_key(c.paths.db_url),
        signals=signals,
        watch_parent=bool(os.environ.get("SUPERVISOR_ENABLED")),
        logs_dir=c.paths.logs,
        overrides={"poll_interval": poll_interval} if poll_interval is not None else None,
    )
    sys.exit(w.run(burst=burst))


@cli.group()
def monitor() -> None:
    """The monitor that recovers crashed and hung jobs."""


@monitor.command("run")
@pass_ctx
def monitor_run(c: Ctx) -> None:
    """Run recovery passes every monitor_interval until stopped."""
    from queuectl.signals import StopSignals, die_with_parent

    signals = StopSignals()
    signals.install()
    if os.environ.get("SUPERVISOR_ENABLED"):
        die_with_parent()
    sys.exit(_monitor(c, signals).run())


def _monitor(c: Ctx, signals: Any = None) -> Any:
    from queuectl import procs
    from queuectl.monitor import Monitor

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
    """Run one monitor pass now and print what it recovered."""
    from dataclasses import asdict

    mon = _monitor(c)
    if job_id is not None:
        if dry_run:
            raise InvalidInput("--dry-run and --job cannot be combined")
        done = [mon.recover_job(job_id)]
    else:
        done = mon.run_once(dry_run=dry_run)
    if as_json:
        emit_json([asdict(r) for r in done])
        return
    if not done:
        click.echo("nothing to recover")
    for r in done:
        verb = "would recover" if dry_run else "recovered"
        if r.event == "job_recovered":
            click.echo(f"{verb} job {r.job_id} ({r.reason}): attempt {r.attempt} -> {r.state_after}")
        elif r.event == "worker_removed":
            click.echo(f"{verb} worker {r.worker_id} ({r.reason}): removed")
        else:
            click.echo(f"{verb} orphan process {r.pid} of job {r.job_id}")
