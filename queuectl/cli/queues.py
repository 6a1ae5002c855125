"""The `queue` commands: list the named queues, pause and resume one, set its
concurrency.  Parsing and rendering only: the work is in api.Queue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from queuectl.cli.context import Ctx, pass_ctx
from queuectl.cli.render import emit_json, json_option, table
from queuectl.errors import InvalidInput
from queuectl.models import JobState


@click.group()
def queue() -> None:
    """Named queues: counts, pause and resume, concurrency limits.

    A name that has no queue yet is created by pause, resume and set, so a queue can
    be set up before its first job."""


@queue.command("list")
@json_option
@pass_ctx
def queue_list(c: Ctx, as_json: bool) -> None:
    """Each queue: paused or not, its concurrency, its jobs per state."""
    queues = [q.to_dict() for q in c.queue.queues()]
    if as_json:
        emit_json(queues)
        return
    queue_table(queues)


def queue_table(queues: Sequence[dict[str, Any]]) -> None:
    """The table of `queue list` and `status --by-queue`."""
    states = [s.value for s in JobState]
    rows = [
        (
            q["name"],
            "yes" if q["paused"] else "no",
            "-" if q["concurrency"] is None else q["concurrency"],
            *(q["counts"][s] for s in states),
            q["total"],
        )
        for q in queues
    ]
    table(rows, ("queue", "paused", "concurrency", *states, "total"))


@queue.command("pause")
@click.argument("name")
@pass_ctx
def queue_pause(c: Ctx, name: str) -> None:
    """Stop workers from claiming NAME's jobs (running ones finish)."""
    changed = c.queue.pause(name)
    click.echo(f"queue {name} paused" if changed else f"queue {name} was already paused")


@queue.command("resume")
@click.argument("name")
@pass_ctx
def queue_resume(c: Ctx, name: str) -> None:
    """Let workers claim NAME's jobs again."""
    changed = c.queue.resume(name)
    click.echo(f"queue {name} resumed" if changed else f"queue {name} was not paused")


@queue.command("set")
@click.argument("name")
@click.option("--concurrency", type=int, help="At most N of its jobs processing at once, on every host.")
@click.option("--no-limit", is_flag=True, help="Remove the concurrency limit.")
@pass_ctx
def queue_set(c: Ctx, name: str, concurrency: int | None, no_limit: bool) -> None:
    """Set NAME's concurrency (--concurrency N, N >= 1) or remove it (--no-limit).
    Lowering it below the jobs running now stops new claims until they finish."""
    if (concurrency is None) == (not no_limit):
        raise InvalidInput("give one of --concurrency N or --no-limit")
    changed = c.queue.set_concurrency(name, None if no_limit else concurrency)
    what = "no limit" if no_limit else f"concurrency {concurrency}"
    click.echo(f"queue {name}: {what}" if changed else f"queue {name} already has {what}")
