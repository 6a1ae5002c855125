"""`queuectl health`: is the queue served?  Exit 0 yes, 1 no, one line per problem."""

from __future__ import annotations

from typing import Any

import click

from queuectl.cli.context import Ctx, pass_ctx
from queuectl.cli.render import emit_json, json_option, line


@click.command()
@json_option
@pass_ctx
def health(c: Ctx, as_json: bool) -> int:
    """Exit 0 when the queue is served: a recovery pass within three monitor
    intervals, the workers asked for (`worker start --count N`) running under this
    home's supervisord, and no job processing past its timeout.  Otherwise exit 1 and
    print one line per problem (stdout; with --json, {"healthy", "problems"})."""
    problems: list[dict[str, Any]] = list(c.queue.health())
    problems.extend(_supervisor_problems(c))
    if as_json:
        emit_json({"healthy": not problems, "problems": problems})
    elif not problems:
        click.echo("ok")
    else:
        for p in problems:
            click.echo(f"{p['check']}: {line(p['message'])}")
    return 1 if problems else 0


def _supervisor_problems(c: Ctx) -> list[dict[str, Any]]:
    from queuectl import home
    from queuectl.supervisor import Supervisor

    home.secure(str(c.paths.home))
    problem = Supervisor(c.paths).shortfall()
    return [] if problem is None else [{"check": "workers", "message": problem}]
