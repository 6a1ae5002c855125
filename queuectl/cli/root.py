"""The root click group: the group options, and every command, each imported from its
module only when it is asked for (or listed by --help)."""

from __future__ import annotations

import importlib

import click

from queuectl import __version__
from queuectl.cli.context import Ctx
from queuectl.config import resolve_paths
from queuectl.errors import EXIT_CODES

EPILOG = "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."

#: Each command of the root group: name -> "module:attribute" under queuectl.cli.
COMMANDS = {
    "enqueue": "enqueue:enqueue",
    "status": "jobs:status",
    "list": "jobs:list_",
    "inspect": "jobs:inspect",
    "logs": "jobs:logs",
    "purge": "jobs:purge",
    "queue": "queues:queue",
    "cancel": "control:cancel",
    "wait": "control:wait",
    "dlq": "dlq:dlq",
    "config": "config:config",
    "worker": "workers:worker",
    "stop-workers": "workers:stop_workers",
    "shutdown": "workers:shutdown",
    "supervisorctl": "workers:supervisorctl",
    "health": "health:health",
    "metrics": "metrics:metrics",
    "schedule": "schedule:schedule",
    "completion": "complete:completion",
    "top": "top:top",
    "monitor": "recovery:monitor",
    "recover": "recovery:recover",
    "bench": "bench:bench",
    "audit": "audit:audit",
}


class LazyGroup(click.Group):
    """A group whose commands are imported from COMMANDS when one is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(f"queuectl.cli.{module}"), attribute)
        if ctx.resilient_parsing:  # a shell completion: give it job ids, queue names, ...
            from queuectl.cli.complete import attach

            attach(command, cmd_name)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="Queue home folder (db/, logs/, conf/). Default: $QUEUECTL_HOME or the current folder.",
)
@click.option(
    "--db",
    help="Database: a SQLite file path or postgresql://... Default: $QUEUECTL_DB or HOME/db/queue.db.",
)
@click.version_option(__version__, "-V", "--version", prog_name="queuectl")
@click.pass_context
def cli(ctx: click.Context, home: str | None, db: str | None) -> None:
    """queuectl: a durable background job queue for shell commands."""
    state = Ctx(home, db, resolve_paths(home, db))
    ctx.obj = state
    ctx.call_on_close(state.close)
