"""The job control commands: cancel and wait, and what `enqueue --wait` prints."""

from __future__ import annotations

import sys
from typing import Any

import click

from queuectl.api import WAIT_TIMEOUT, wait_exit_code
from queuectl.cli import one_line, render
from queuectl.cli.context import DURATION, Ctx, pass_ctx
from queuectl.cli.render import emit_json, json_option, table
from queuectl.errors import InvalidInput
from queuectl.models import Job, JobState


@click.command()
@click.argument("job_ids", nargs=-1)
@click.option("--state", help="Cancel every job in this state (waiting, pending, failed, processing).")
@click.option("--queue", "queue_name", help="Cancel every cancellable job of this queue.")
@click.option("--yes", is_flag=True, help="With --state/--queue: do not ask for confirmation.")
@json_option
@pass_ctx
def cancel(
    c: Ctx, job_ids: tuple[str, ...], state: str | None, queue_name: str | None, yes: bool, as_json: bool
) -> int:
    """Cancel jobs that may still run; a running one is killed by its worker within
    one heartbeat interval.  Exit 3 if an id is unknown, 4 if a job had ended already
    (the worst of them; the others are cancelled all the same).

    \b
      queuectl cancel 01JD8X 01JD8Y
      queuectl cancel --state pending --queue reports --yes
    """
    if job_ids and (state or queue_name):
        raise InvalidInput("give job ids or --state/--queue, not both")
    if not job_ids and not (state or queue_name):
        raise InvalidInput("give job ids, or --state and/or --queue to cancel many")
    if not job_ids:
        return _cancel_many(c, state, queue_name, yes, as_json)
    moved, errors = c.queue.cancel(job_ids)
    if as_json:
        emit_json(
            {
                "cancelled": moved,
                "errors": [{"id": e.job_id, "error": str(e), "exit_code": e.exit_code} for e in errors],
            }
        )
    else:
        for job_id in moved:
            click.echo(f"cancelled {render.line(job_id)}")
    for e in errors:
        click.echo(f"queuectl: error: {one_line(str(e))}", err=True)
    return max((e.exit_code for e in errors), default=0)


def _cancel_many(c: Ctx, state: str | None, queue_name: str | None, yes: bool, as_json: bool) -> int:
    jobs = c.queue.cancellable(state, queue_name)
    if jobs and not yes:  # nothing to cancel: nothing to ask
        from queuectl.cli.jobs import confirm

        n = len(jobs)
        click.echo(f"{n} job{'' if n == 1 else 's'} would be cancelled:", err=True)
        for j in jobs[:20]:
            click.echo(f"  {render.line(j.id)}  {j.state.value:<10}  {render.line(j.command)}", err=True)
        if n > 20:
            click.echo(f"  ... and {n - 20} more", err=True)
        if not confirm("Cancel them?", "nothing cancelled", "give --yes to cancel without asking"):
            raise InvalidInput("not confirmed: nothing cancelled")
    moved, _ = c.queue.cancel([j.id for j in jobs]) if jobs else ([], [])
    if as_json:
        emit_json({"cancelled": moved, "ended_meanwhile": len(jobs) - len(moved)})
    else:
        click.echo(f"cancelled {len(moved)} jobs")
    return 0


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--timeout", type=DURATION, help="Give up after this long (exit 124): seconds, or 10m, 2h.")
@json_option
@pass_ctx
def wait(c: Ctx, job_ids: tuple[str, ...], timeout: float | None, as_json: bool) -> int:
    """Block until every job has ended: exit 0 if all completed, 1 if any is dead or
    cancelled, 124 on timeout, 3 for an unknown id."""
    jobs = c.queue.wait(job_ids, timeout)
    code = wait_exit_code(jobs)
    if as_json:
        emit_json([_summary(j) for j in jobs])
    else:
        table(
            [(j.id, j.state.value, j.attempts, j.exit_code) for j in jobs],
            ("id", "state", "attempts", "exit"),
        )
    if code == WAIT_TIMEOUT:
        left = sum(j.state.value not in ("completed", "dead", "cancelled") for j in jobs)
        click.echo(f"queuectl: timed out after {timeout:g}s: {left} job(s) not ended", err=True)
    return code


def _summary(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": job.state.value, "attempts": job.attempts, "exit_code": job.exit_code}


def relay(c: Ctx, job_ids: list[str]) -> int:
    """`enqueue --wait`: wait for the jobs, write each one's stdout to stdout and its
    stderr to stderr (escaped as `logs` shows them), and exit as the command would:
    0 if all completed, else the first failed job's own exit code (1 if it has none,
    as a job cancelled or dead without one)."""
    jobs = c.queue.wait(job_ids)
    for job in jobs:
        if job.stdout:
            sys.stdout.write(render.block(job.stdout))
            sys.stdout.flush()
        if job.stderr:
            sys.stderr.write(render.block(job.stderr))
            sys.stderr.flush()
    for job in jobs:
        if job.state is not JobState.COMPLETED:
            return job.exit_code if job.exit_code else 1
    return 0
