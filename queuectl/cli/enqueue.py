"""`queuectl enqueue`, built from enqueue_options.OPTIONS (the pre-parser in
fast_enqueue.py reads the same declarations and makes the same call)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from queuectl.cli.context import SECONDS, Ctx, pass_ctx
from queuectl.cli.enqueue_options import OPTIONS, seconds, submit

F = TypeVar("F", bound=Callable[..., Any])

#: Options of the click command alone, not in OPTIONS: the pre-parser does not know
#: them, so a command line with one goes to click (they are not worth its speed).
CLICK_ONLY = ("--wait",)


def _declared_options(f: F) -> F:
    """enqueue's options, as OPTIONS declares them (in its order)."""
    for o in reversed(OPTIONS):
        kind: Any = click.Choice(o.choices) if o.choices is not None else o.kind
        if kind is seconds:
            kind = SECONDS  # the same conversion, with click's wording of an error
        f = click.option(o.flag, o.param, type=kind, multiple=o.multiple, help=o.help)(f)
    return f


@click.command()
@click.argument("job", nargs=-1, required=True)
@_declared_options
@click.option(
    "--wait",
    "wait_",
    is_flag=True,
    help="Wait for the job to end, print its stdout and stderr, exit with its exit code.",
)
@pass_ctx
def enqueue(c: Ctx, /, job: tuple[str, ...], wait_: bool, **options: Any) -> int:
    """Add a job: a shell command, a JSON object, or - for JSON lines on stdin.

    \b
      queuectl enqueue "echo hi" --max-retries 3 --priority 5
      queuectl enqueue '{"id":"job1","command":"sleep 2","max_retries":3}'
      printf '{"command":"true"}\\n{"command":"false"}\\n' | queuectl enqueue -
      queuectl enqueue --queue reports --cwd /srv/app --env MODE=full 'make report'
      queuectl enqueue --unique-key nightly --on-conflict ignore 'backup.sh'
      queuectl enqueue --after JOB1 --after JOB2 'merge.sh'

    Prints the new id (one per line for bulk).  With --wait, prints no id: the job's
    stdout and stderr once it ended, and exits 0 if it completed, else with its own
    exit code (1 if it has none: cancelled, or dead without one).
    """
    ids = submit(c.home, c.db, job, options)
    if wait_:
        # Not an enqueue_options.Option: the pre-parser does not know the flag and
        # hands the command line to click, so the common enqueue stays as fast.
        from queuectl.cli.control import relay

        return relay(c, ids)
    click.echo("\n".join(ids))
    return 0
