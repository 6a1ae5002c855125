"""`queuectl enqueue`, built from enqueue_options.OPTIONS (the pre-parser in
fast_enqueue.py reads the same declarations and makes the same call)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from queuectl.cli.context import Ctx, pass_ctx
from queuectl.cli.enqueue_options import OPTIONS, submit

F = TypeVar("F", bound=Callable[..., Any])


def _declared_options(f: F) -> F:
    """enqueue's options, as OPTIONS declares them (in its order)."""
    for o in reversed(OPTIONS):
        kind: Any = click.Choice(o.choices) if o.choices is not None else o.kind
        f = click.option(o.flag, o.param, type=kind, multiple=o.multiple, help=o.help)(f)
    return f


@click.command()
@click.argument("job", nargs=-1, required=True)
@_declared_options
@pass_ctx
def enqueue(c: Ctx, /, job: tuple[str, ...], **options: Any) -> None:
    """Add a job: a shell command, a JSON object, or - for JSON lines on stdin.

    \b
      queuectl enqueue "echo hi" --max-retries 3 --priority 5
      queuectl enqueue '{"id":"job1","command":"sleep 2","max_retries":3}'
      printf '{"command":"true"}\\n{"command":"false"}\\n' | queuectl enqueue -
      queuectl enqueue --queue reports --cwd /srv/app --env MODE=full 'make report'
      queuectl enqueue --unique-key nightly --on-conflict ignore 'backup.sh'
      queuectl enqueue --after JOB1 --after JOB2 'merge.sh'

    Prints the new id (one per line for bulk).
    """
    click.echo("\n".join(submit(c.home, c.db, job, options)))
