"""The audit trail's commands: `audit verify`, `export`, `checkpoint` and `flush`.
Parsing and rendering only: the files are trail_files.py's, the checks
trail_verify.py's."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from queuectl.cli import render
from queuectl.cli.context import Ctx, pass_ctx
from queuectl.cli.render import emit_json, json_option
from queuectl.errors import InvalidInput

#: `audit verify`'s exit code when the trail is broken (0: clean).
BROKEN = 1
#: The most later problems `audit verify` prints after the first.
SHOWN = 10

dir_option = click.option(
    "--dir",
    "files_dir",
    type=click.Path(file_okay=False, exists=True),
    help="Read the trail files in DIR (a copy of this home's logs/), not logs/ itself.",
)


@click.group()
def audit() -> None:
    """The tamper-evident audit trail: logs/audit-<UTC date>.jsonl."""


def _flush(c: Ctx, quiet: bool = False) -> None:
    """Bring this home's files up to date first; a home this user cannot write to
    (an auditor's read-only account) is read as it is, with a warning."""
    from queuectl import trail_files

    try:
        trail_files.flush(c.queue.store, c.paths.logs)
    except OSError as exc:
        if not quiet:
            click.echo(
                f"queuectl: warning: cannot bring the trail files up to date ({exc.strerror})", err=True
            )


@audit.command("verify")
@click.option("--against-db", is_flag=True, help="Also compare the job lines with each job's history.")
@dir_option
@json_option
@pass_ctx
def verify(c: Ctx, against_db: bool, files_dir: str | None, as_json: bool) -> None:
    """Check the whole chain; exit 0 clean, 1 at the first broken link (file and line)."""
    from queuectl.trail_files import home_key
    from queuectl.trail_verify import verify as run

    if files_dir is None:
        _flush(c, quiet=as_json)
    where = Path(files_dir) if files_dir is not None else c.paths.logs
    report = run(where, c.queue.store, home=home_key(c.paths.logs), against_db=against_db)
    if as_json:
        emit_json(report.as_dict())
    else:
        _print(report)
    if not report.ok:
        sys.exit(BROKEN)


def _print(report: Any) -> None:
    span = f"seq {report.first_seq}-{report.last_seq}" if report.lines else "no lines"
    head = f", head seq {report.head[0]}" if report.head is not None else ""
    summary = f"{report.lines} lines in {len(report.files)} file(s), {span}{head}; start: {report.start}"
    if report.ok:
        click.echo(render.line(f"audit trail intact: {summary}"))
    else:
        click.echo(render.line(f"audit trail BROKEN: {report.problems[0].text()}"))
        for p in report.problems[1 : SHOWN + 1]:
            click.echo(render.line(f"  also: {p.text()}"))
        if len(report.problems) > SHOWN + 1:
            click.echo(f"  ... and {len(report.problems) - SHOWN - 1} more (--json lists them)")
        click.echo(render.line(f"checked {summary}"))
    if report.compared:
        click.echo(f"compared {report.compared} history events with their lines")
    for note in report.notes:
        click.echo(render.line(f"note: {note}"))


@audit.command("export")
@click.option("--since", help="Events at or after this time (ISO-8601 UTC, or ago: 30m, 2h, 7d).")
@click.option("--until", help="Events at or before this time (same forms).")
@click.option("--job", "job_id", help="Only this job's events.")
@click.option("--actor", help="Only events by this actor (user@host, a worker id, monitor:host:pid).")
@dir_option
@pass_ctx
def export(
    c: Ctx, since: str | None, until: str | None, job_id: str | None, actor: str | None, files_dir: str | None
) -> None:
    """Print the matching events as JSON Lines, in chain order, exactly as written."""
    import time

    from queuectl.rules import parse_moment
    from queuectl.trail_verify import export as run

    now = time.time()
    low = None if since is None else parse_moment(since, now, "--since")
    high = None if until is None else parse_moment(until, now, "--until")
    if files_dir is None:
        _flush(c, quiet=True)
    # Bytes, as the files hold them (UTF-8): the terminal's encoding must not change
    # or refuse a line.
    out = sys.stdout.buffer
    for text in run(
        Path(files_dir) if files_dir else c.paths.logs, since=low, until=high, job=job_id, actor=actor
    ):
        out.write((text + "\n").encode("utf-8"))
    out.flush()


@audit.command("checkpoint")
@click.option(
    "--through",
    type=click.Path(dir_okay=False, exists=True),
    help="The last trail file to archive (default: the newest file before today's, UTC).",
)
@pass_ctx
def checkpoint(c: Ctx, through: str | None) -> None:
    """Record a checkpoint at the end of a file, after a clean verify: the files up to
    it may then be moved away, and verification starts after it."""
    from queuectl import trail_files
    from queuectl.trail_verify import verify as run

    _flush(c)
    logs = c.paths.logs
    report = run(logs, c.queue.store)
    if not report.ok:
        click.echo(
            render.line(
                f"queuectl: the trail is broken, no checkpoint recorded: {report.problems[0].text()}"
            ),
            err=True,
        )
        sys.exit(BROKEN)
    target = _through(logs, through)
    end = trail_files.file_end(target)
    if end is None or end.seq <= 0:
        raise InvalidInput(f"{target} holds no line of the trail")
    c.queue.store.trail.add_checkpoint(end.seq, end.hash)
    _flush(c)
    click.echo(
        render.line(
            f"checkpoint at seq {end.seq} ({target.name}); the files up to {target.name} may now be"
            " moved away, and verification starts after it"
        )
    )


def _through(logs: Path, through: str | None) -> Path:
    import time

    from queuectl import trail_files

    names = trail_files.files(logs)
    # Today's file (UTC), or a later one after a clock step, may still take lines;
    # an older one never does (trail_files._target).
    today = f"audit-{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl"
    if through is not None:
        path = Path(through).resolve()
        if path not in [p.resolve() for p in names]:
            raise InvalidInput(f"{through} is not one of this home's trail files (logs/audit-*.jsonl)")
        if path.name >= today:
            raise InvalidInput(f"{through} may still take lines (today's file, UTC): not archivable yet")
        return path
    older = [p for p in names if p.name < today]
    if not older:
        raise InvalidInput("no trail file before today's to archive: name one with --through")
    return older[-1]


@audit.command("flush")
@pass_ctx
def flush(c: Ctx) -> None:
    """Seal the events waiting in the database and append them to this home's files now
    (workers and the monitor do this every second)."""
    from queuectl import trail_files

    n = trail_files.flush(c.queue.store, c.paths.logs)
    click.echo(f"{n} line(s) appended")
