"""The click commands: parse, call the library, render text or --json.

No SQL, no subprocesses, no sleeps here.  Errors are raised, not printed: the entry
point (cli.main) turns each into one line on stderr and an exit code (see
`queuectl --help` and errors.EXIT_CODES).  This module is imported only when a
command needs click: cli.py, which the `queuectl` script imports, stays light.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from queuectl import __version__, render
from queuectl.config import Paths, resolve_paths
from queuectl.errors import EXIT_CODES, InvalidInput

EPILOG = "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."


class Ctx:
    """Per-invocation state: the paths, and the queue opened on first use."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._queue: Any = None

    @property
    def queue(self) -> Any:
        if self._queue is None:
            from queuectl.api import Queue

            self._queue = Queue.open(self.paths)
        return self._queue

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()


pass_ctx = click.make_pass_decorator(Ctx)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[("" if c is None else render.line(str(c))) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = min(max(widths[i], len(c)), 60)
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    click.echo(line.rstrip())
    for r in cells:
        click.echo("  ".join(_clip(c, w).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _clip(text: str, width: int) -> str:
    text = render.line(text)
    return text if len(text) <= width else text[: width - 1] + "…"


#: --limit of the list commands: what every backend can take as a row count.
LIMIT = click.IntRange(0, 1_000_000_000)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only (stable format).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="Queue home folder (db/, logs/, conf/). Default: $QUEUECTL_HOME or the current folder.",
)
@click.option(
    "--db",
    help="Database: a SQLite file path or postgresql://... Default: $QUEUECTL_DB or HOME/db/queue.db.",
)
@click.version_option(__version__, prog_name="queuectl")
@click.pass_context
def cli(ctx: click.Context, home: str | None, db: str | None) -> None:
    """queuectl: a durable background job queue for shell commands."""
    state = Ctx(resolve_paths(home, db))
    ctx.obj = state
    ctx.call_on_close(state.close)


# --- enqueue -----------------------------------------------------------------------


@cli.command()
@click.argument("job", nargs=-1, required=True)
@click.option("--id", "job_id", help="Job id (default: a new sortable id).")
@click.option("--max-retries", type=int, help="Retries after the first attempt (default: config).")
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--delay", type=float, help="Seconds to wait before the first run.")
@click.option("--run-at", help="Earliest start, ISO-8601 (UTC if no zone).")
@click.option("--timeout", type=float, help="Time limit in seconds (default: config job_timeout).")
@pass_ctx
def enqueue(
    c: Ctx,
    job: tuple[str, ...],
    job_id: str | None,
    max_retries: int | None,
    priority: int | None,
    delay: float | None,
    run_at: str | None,
    timeout: float | None,
) -> None:
    """Add a job: a shell command, a JSON object, or - for JSON lines on stdin.

    \b
      queuectl enqueue "echo hi" --max-retries 3 --priority 5
      queuectl enqueue '{"id":"job1","command":"sleep 2","max_retries":3}'
      printf '{"command":"true"}\\n{"command":"false"}\\n' | queuectl enqueue -

    Prints the new id (one per line for bulk).
    """
    from queuectl.cli import enqueue_one, stdin_specs

    options = {
        "job_id": job_id,
        "max_retries": max_retries,
        "priority": priority,
        "delay": delay,
        "run_at": run_at,
        "timeout": timeout,
    }
    if job == ("-",):
        # The same calls as cli.py's fast path makes (it takes the queue's database
        # itself where it can, without the library).
        specs = stdin_specs(sys.stdin, options)
        click.echo("\n".join(c.queue.enqueue_many(specs)))
        return
    # The same call as cli.py's fast path makes without click.
    click.echo(enqueue_one(lambda: c.queue, job, options))


# --- reading -----------------------------------------------------------------------


@cli.command()
@json_option
@pass_ctx
def status(c: Ctx, as_json: bool) -> None:
    """Jobs per state, the total, and the live workers."""
    from queuectl.cli import status_report

    out, warning = status_report(c.queue.status(), as_json)
    click.echo(out, nl=False)
    if warning is not None:
        click.echo(warning, err=True)


@cli.command("list")
@click.option("--state", help="Only jobs in this state.")
@click.option("--limit", type=LIMIT, help="At most N jobs (oldest first).")
@json_option
@pass_ctx
def list_(c: Ctx, state: str | None, limit: int | None, as_json: bool) -> None:
    """List jobs, oldest first."""
    jobs = c.queue.list(state, limit)
    _print_jobs(jobs, as_json)


def _print_jobs(jobs: Sequence[Any], as_json: bool) -> None:
    if as_json:
        emit_json([j.to_dict(output=False) for j in jobs])
        return
    rows = [
        (j.id, j.state.value, f"{j.attempts}/{j.max_retries + 1}", j.priority, _short_time(j), j.command)
        for j in jobs
    ]
    table(rows, ("id", "state", "attempts", "priority", "updated", "command"))


def _short_time(job: Any) -> str:
    from queuectl.models import iso

    return (iso(job.updated_at) or "")[:19].replace("T", " ")


@cli.command()
@click.argument("job_id")
@json_option
@pass_ctx
def inspect(c: Ctx, job_id: str, as_json: bool) -> None:
    """Every field of a job, its captured output and its full history."""
    job, events = c.queue.inspect(job_id)
    data = job.to_dict()
    data["history"] = [e.to_dict() for e in events]
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if key in ("history", "stdout", "stderr"):
            continue
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


@cli.command()
@click.argument("job_id")
@click.option("--stream", type=click.Choice(["both", "stdout", "stderr"]), default="both")
@click.option("--raw", is_flag=True, help="Print the output as the job wrote it (control characters too).")
@pass_ctx
def logs(c: Ctx, job_id: str, stream: str, raw: bool) -> None:
    """The stdout and stderr of a job's last attempt (terminal control characters
    shown escaped, unless --raw)."""
    job = c.queue.get(job_id)
    shown = (lambda text: text) if raw else render.block
    if stream in ("both", "stdout") and job.stdout:
        click.echo(shown(job.stdout), nl=False)
    if stream in ("both", "stderr") and job.stderr:
        click.echo(shown(job.stderr), nl=False, err=stream == "both")


# --- dead-letter queue ---------------------------------------------------------------


@cli.group()
def dlq() -> None:
    """The dead-letter queue: jobs that failed max_retries + 1 times."""


@dlq.command("list")
@click.option("--limit", type=LIMIT, help="At most N jobs (oldest first).")
@json_option
@pass_ctx
def dlq_list(c: Ctx, limit: int | None, as_json: bool) -> None:
    """List dead jobs."""
    _print_jobs(c.queue.dlq_list(limit), as_json)


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


# --- config ----------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Read and change the queue's settings (stored in its database)."""


@config.command("get")
@click.argument("key", required=False)
@json_option
@pass_ctx
def config_get(c: Ctx, key: str | None, as_json: bool) -> None:
    """Show one setting or all of them."""
    values = c.queue.config_get(key)
    if as_json:
        emit_json(values)
    elif key is not None:
        click.echo(_fmt(next(iter(values.values()))))
    else:
        for k, v in values.items():
            click.echo(f"{k:<19} {_fmt(v)}")


@config.command("set", context_settings={"ignore_unknown_options": True})  # so "-1" is a value
@click.argument("key")
@click.argument("value")
@pass_ctx
def config_set(c: Ctx, key: str, value: str) -> None:
    """Change a setting (max-retries and max_retries are the same key)."""
    name, parsed = c.queue.config_set(key, value)
    click.echo(f"{name} = {_fmt(parsed)}")


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


@cli.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    required=True,
    type=click.Choice(["completed", "dead"]),
    help="Purge jobs in this state (repeatable).",
)
@click.option("--older-than", type=click.FloatRange(min=0), help="Only jobs finished this many seconds ago.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def purge(c: Ctx, states: tuple[str, ...], older_than: float | None, yes: bool) -> None:
    """Delete finished jobs and their history for good."""
    if not yes:
        n = c.queue.purgeable(list(states), older_than)
        what = f"{n} {'/'.join(states)} job{'' if n == 1 else 's'}"
        if not _confirm(f"Delete {what} and their history?"):
            raise InvalidInput("not confirmed: nothing deleted")
    n = c.queue.purge(list(states), older_than)
    click.echo(f"purged {n} jobs")


def _confirm(question: str) -> bool:
    """Ask on stderr, read one answer from stdin: yes, or no (the default).  No answer
    at all (stdin closed or at its end) is a usage error; ^C stays an interrupt."""
    click.echo(f"{question} [y/N]: ", nl=False, err=True)
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    if not answer:
        click.echo(err=True)
        raise InvalidInput("no answer on stdin: nothing deleted (give --yes to purge without asking)")
    return answer.strip().lower() in ("y", "yes")


# The process commands (worker, monitor, recover, shutdown) live in cli_workers.py;
# importing it registers them on `cli`.
from queuectl import cli_workers  # noqa: E402, F401
