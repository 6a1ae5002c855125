"""The recovery commands: `monitor run` (the monitor's loop) and `recover` (one pass
now).  Parsing and rendering only: the work is in monitor.py (the
loop) and recovery.py (the pass)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from queuectl.cli import render
from queuectl.cli.context import Ctx, pass_ctx
from queuectl.cli.render import emit_json, json_option
from queuectl.errors import InvalidInput


@click.group()
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


@click.command()
@click.option("--dry-run", is_flag=True, help="Only print what would be recovered.")
@click.option("--job", "job_id", help="Recover this processing job now (reason: manual).")
@json_option
@pass_ctx
def recover(c: Ctx, dry_run: bool, job_id: str | None, as_json: bool) -> None:
    """Run one monitor pass now and print what it recovered (and killed)."""
    mon = _monitor(c)
    c.queue.changed = True  # its recoveries go to the audit trail as the command ends
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
    if r.event == "jobs_purged":
        n = r.evidence["deleted"]
        return (
            f"{'would purge' if dry_run else 'purged'} {n} {r.job_state} job{'' if n == 1 else 's'}"
            f" finished before {r.evidence['before']} (retention)"
        )
    return f"{kill} orphan process {r.pid} of job {r.job_id} (attempt {r.attempt})"
