"""`queuectl schedule add/list/remove/pause/resume`: named cron schedules (the work
is in api.Queue and schedules.py; the runs are fired by the recovery pass)."""

from __future__ import annotations

from typing import Any

import click

from queuectl.cli.context import SECONDS, Ctx, pass_ctx
from queuectl.cli.render import emit_json, json_option, table


@click.group()
def schedule() -> None:
    """Enqueue a job at the times a cron expression names (fired by the monitor, or a
    worker covering for it; a run missed while nothing ran is enqueued once)."""


@schedule.command("add")
@click.argument("name")
@click.argument("cron")
@click.argument("command", nargs=-1, required=True)
@click.option(
    "--tz", default="UTC", show_default=True, help="Time zone the cron expression is read in (IANA)."
)
@click.option("--max-retries", type=int, help="Retries after the first attempt (default: config).")
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--timeout", type=SECONDS, help="Time limit: seconds, or 10m, 2h (default: job_timeout).")
@click.option("--queue", help="Named queue (default: default).")
@click.option("--cwd", help="Directory to run in (default: the current directory).")
@click.option(
    "--env", multiple=True, help="KEY=VALUE added to the job's environment (KEY alone: its value here)."
)
@json_option
@pass_ctx
def schedule_add(
    c: Ctx, /, name: str, cron: str, command: tuple[str, ...], tz: str, as_json: bool, **options: Any
) -> None:
    """Add schedule NAME: enqueue COMMAND at each time CRON names, e.g.

    \b
      queuectl schedule add nightly '0 3 * * *' 'backup.sh' --tz Europe/Paris
      queuectl schedule add every-5 '*/5 * * * *' 'sync.sh' --queue sync --timeout 4m
    """
    from queuectl.cli.enqueue_options import env_pairs

    spec: dict[str, Any] = {"command": " ".join(command)}
    spec.update({k: v for k, v in options.items() if v not in (None, ())})
    if "env" in spec:
        spec["env"] = env_pairs(spec["env"])
    s = c.queue.schedule_add(name, cron, spec, tz)
    if as_json:
        emit_json(s.to_dict())
    else:
        click.echo(f"{s.name}: next run at {s.to_dict()['next_run_at']}")


@schedule.command("list")
@json_option
@pass_ctx
def schedule_list(c: Ctx, as_json: bool) -> None:
    """Every schedule: its cron, zone, next and last run, paused or not."""
    rows = [s.to_dict() for s in c.queue.schedules()]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no schedules")
        return
    table(
        [
            (
                r["name"],
                r["cron"],
                r["tz"],
                "paused" if r["paused"] else "active",
                r["next_run_at"],
                r["last_run_at"] or "-",
                r["last_job_id"] or "-",
                r["job"]["command"],
            )
            for r in rows
        ],
        ("name", "cron", "tz", "state", "next_run_at", "last_run_at", "last_job", "command"),
    )


@schedule.command("remove")
@click.argument("name")
@pass_ctx
def schedule_remove(c: Ctx, name: str) -> None:
    """Delete schedule NAME (the jobs it enqueued stay)."""
    c.queue.schedule_remove(name)
    click.echo(f"removed schedule {name}")


@schedule.command("pause")
@click.argument("name")
@pass_ctx
def schedule_pause(c: Ctx, name: str) -> None:
    """Stop enqueueing runs of NAME until it is resumed."""
    changed = c.queue.schedule_pause(name)
    click.echo(f"paused schedule {name}" if changed else f"schedule {name} was paused already")


@schedule.command("resume")
@click.argument("name")
@pass_ctx
def schedule_resume(c: Ctx, name: str) -> None:
    """Enqueue runs of NAME again, from the first cron time after now (runs missed
    while paused are not made up)."""
    changed = c.queue.schedule_resume(name)
    click.echo(f"resumed schedule {name}" if changed else f"schedule {name} was not paused")
