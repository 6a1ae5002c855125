"""The job commands: status, list, inspect, logs, purge."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import click

from queuectl.cli import render
from queuectl.cli.context import DURATION, LIMIT, Ctx, pass_ctx
from queuectl.cli.render import emit_json, json_option, print_jobs, table
from queuectl.errors import InvalidInput

#: The lines of `queuectl status`, in order, before the recovery line.
STATUS_KEYS = (
    "pending",
    "processing",
    "completed",
    "failed",
    "dead",
    "waiting",
    "cancelled",
    "total",
    "workers",
)


@click.command()
@click.option("--by-queue", is_flag=True, help="Also each queue's counts (one pass over every job).")
@json_option
@pass_ctx
def status(c: Ctx, by_queue: bool, as_json: bool) -> None:
    """Jobs per state, the total, and the live workers."""
    counts = c.queue.status(by_queue=by_queue)
    if as_json:
        emit_json(counts)
        return
    out, warning = _status_text(counts)
    click.echo(out, nl=False)
    if by_queue:
        from queuectl.cli.queues import queue_table

        click.echo()
        queue_table(counts["queues"])
    if warning is not None:
        click.echo(warning, err=True)


def _status_text(counts: Mapping[str, Any]) -> tuple[str, str | None]:
    """`queuectl status`'s text for Queue.status() counts: (stdout, a warning for
    stderr or None)."""
    lines = [f"{key:<11} {counts[key]}" for key in STATUS_KEYS]
    rec = counts["recovery"]
    if rec["last_pass_at"] is None:
        lines.append("recovery    no recovery pass has run yet (no monitor or worker has started)")
    else:
        by = f"{rec['last_pass_by']} ({rec['last_pass_kind']})"
        lines.append(f"recovery    last pass {rec['age_s']:.1f}s ago by {by}")
    warning = None
    if rec["overdue"] and (counts["processing"] or counts["workers"]):
        warning = "warning: no recovery pass for over 3 monitor intervals: is a monitor or worker running?"
    return "".join(line + "\n" for line in lines), warning


#: How many jobs `list` shows without --limit or --all.
LIST_DEFAULT = 100


@click.command("list")
@click.option("--state", "states", multiple=True, help="Only jobs in this state (repeatable).")
@click.option("--queue", "queues", multiple=True, help="Only jobs of this queue (repeatable).")
@click.option("--command-contains", metavar="TEXT", help="Only commands holding TEXT (literally).")
@click.option("--since", metavar="WHEN", help="Created at or after WHEN: ISO-8601, or ago: 30s, 15m, 2h, 7d.")
@click.option("--until", metavar="WHEN", help="Created before WHEN (same forms as --since).")
@click.option("--limit", type=LIMIT, help=f"At most N jobs (default {LIST_DEFAULT}).")
@click.option("--all", "all_", is_flag=True, help="Every matching job (no limit).")
@click.option("--newest-first", is_flag=True, help="Newest first (the limit keeps the newest).")
@json_option
@pass_ctx
def list_(
    c: Ctx,
    states: tuple[str, ...],
    queues: tuple[str, ...],
    command_contains: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    all_: bool,
    newest_first: bool,
    as_json: bool,
) -> None:
    """List jobs, oldest first (filters combine: every one must hold)."""
    if all_ and limit is not None:
        raise InvalidInput("give --limit or --all, not both")
    jobs = c.queue.list(
        None,
        None if all_ else (LIST_DEFAULT if limit is None else limit),
        states=states,
        queues=queues,
        command_contains=command_contains,
        since=since,
        until=until,
        newest_first=newest_first,
    )
    print_jobs(jobs, as_json)


@click.command()
@click.argument("job_id")
@json_option
@pass_ctx
def inspect(c: Ctx, job_id: str, as_json: bool) -> None:
    """Every field of a job, its captured output and its full history."""
    job, events = c.queue.inspect(job_id)
    data = job.to_dict()
    data["after"] = c.queue.parents(job_id)
    data["history"] = [e.to_dict() for e in events]
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if key in ("history", "stdout", "stderr"):
            continue
        if key == "env":
            value = " ".join(f"{k}={v}" for k, v in value.items())
        elif key == "after":
            value = " ".join(value)
        click.echo(f"{key:<12} {'' if value is None else render.line(str(value))}")
    for stream in ("stdout", "stderr"):
        click.echo(f"--- {stream} ---")
        text = render.block(data[stream] or "")
        click.echo(text, nl=not text.endswith("\n"))
    click.echo("--- history ---")
    rows = [
        (
            e["at"],
            e["from"] or "-",
            e["to"],
            e["attempt"],
            e["worker_id"],
            e["exit_code"],
            e["reason"] or e["error"],
        )
        for e in data["history"]
    ]
    table(rows, ("at", "from", "to", "attempt", "worker", "exit", "reason/error"))


@click.command()
@click.argument("job_id")
@click.option("--stream", type=click.Choice(["both", "stdout", "stderr"]), default="both")
@click.option("--raw", is_flag=True, help="Print the output as the job wrote it (control characters too).")
@click.option(
    "--follow", "-f", is_flag=True, help="Print new output as it is saved, until the job ends (exit as wait)."
)
@json_option
@pass_ctx
def logs(c: Ctx, job_id: str, stream: str, raw: bool, follow: bool, as_json: bool) -> int:
    """The stdout and stderr of a job's last attempt, or of its running attempt so
    far (saved at its worker's heartbeats); terminal control characters shown
    escaped, unless --raw.  With --follow, JSON lines under --json."""
    if follow:
        from queuectl.cli.follow import follow as follow_job

        return follow_job(c.queue, job_id, stream, raw, as_json)
    job = c.queue.get(job_id)
    if as_json:
        data = {"id": job.id, "state": job.state.value, "attempts": job.attempts}
        emit_json(
            {**data, **{s: getattr(job, s) or "" for s in ("stdout", "stderr") if stream in ("both", s)}}
        )
        return 0
    shown = (lambda text: text) if raw else render.block
    if stream in ("both", "stdout") and job.stdout:
        click.echo(shown(job.stdout), nl=False)
    if stream in ("both", "stderr") and job.stderr:
        click.echo(shown(job.stderr), nl=False, err=stream == "both")
    return 0


@click.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    required=True,
    type=click.Choice(["completed", "dead", "cancelled"]),
    help="Purge jobs in this state (repeatable).",
)
@click.option(
    "--older-than", type=DURATION, help="Only jobs finished this long ago: seconds, or 12h, 7d, 1h30m."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def purge(c: Ctx, states: tuple[str, ...], older_than: float | None, yes: bool) -> None:
    """Delete finished jobs and their history for good."""
    if not yes:
        n = c.queue.purgeable(list(states), older_than)
        what = f"{n} {'/'.join(states)} job{'' if n == 1 else 's'}"
        if not confirm(f"Delete {what} and their history?"):
            raise InvalidInput("not confirmed: nothing deleted")
    n = c.queue.purge(list(states), older_than)
    click.echo(f"purged {n} jobs")


def confirm(
    question: str, nothing: str = "nothing deleted", hint: str = "give --yes to purge without asking"
) -> bool:
    """Ask on stderr, read one answer from stdin: yes, or no (the default).  No answer
    at all (stdin closed or at its end) is a usage error; ^C stays an interrupt."""
    click.echo(f"{question} [y/N]: ", nl=False, err=True)
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    if not answer:
        click.echo(err=True)
        raise InvalidInput(f"no answer on stdin: {nothing} ({hint})")
    return answer.strip().lower() in ("y", "yes")
