"""`queuectl dlq`: the dead-letter queue."""

from __future__ import annotations

import click

from queuectl.cli import render
from queuectl.cli.context import LIMIT, Ctx, pass_ctx
from queuectl.cli.render import json_option, print_jobs
from queuectl.errors import InvalidInput


@click.group()
def dlq() -> None:
    """The dead-letter queue: jobs that failed max_retries + 1 times."""


@dlq.command("list")
@click.option("--limit", type=LIMIT, help="At most N jobs (oldest first).")
@json_option
@pass_ctx
def dlq_list(c: Ctx, limit: int | None, as_json: bool) -> None:
    """List dead jobs."""
    print_jobs(c.queue.dlq_list(limit), as_json)


@dlq.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Retry every dead job.")
@pass_ctx
def dlq_retry(c: Ctx, job_ids: tuple[str, ...], all_: bool) -> None:
    """Move dead jobs back to pending with attempts reset."""
    if all_ == bool(job_ids):
        raise InvalidInput("give job ids or --all (not both)")
    ids = c.queue.dlq_retry_all() if all_ else c.queue.dlq_retry_many(job_ids)
    if ids:
        click.echo("\n".join(map(render.line, ids)))
    elif all_:
        click.echo("no dead jobs", err=True)
