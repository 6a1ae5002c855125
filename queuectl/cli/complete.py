"""Shell completion: `queuectl completion bash|zsh|fish` prints click's completion
script, and the values completed beyond click's own (commands, options, choices):
job ids, states, queue names, schedule names and config keys, read from the queue the
command line names (--home/--db, or the environment).

The completers are attached by parameter name when the root group loads a command
(root.LazyGroup.get_command), so the command modules stay as they are.  A completer
never creates a database and never fails: a queue it cannot read completes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.shell_completion import CompletionItem

SHELLS = ("bash", "zsh", "fish")

#: The most job ids offered (the newest first).
JOB_IDS = 200


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (see README: "Shell completion").

    \b
      queuectl completion bash > ~/.local/share/bash-completion/completions/queuectl
      queuectl completion zsh > "${fpath[1]}/_queuectl"
      queuectl completion fish > ~/.config/fish/completions/queuectl.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # one of SHELLS, which click knows
    root = ctx.find_root().command  # the root group (not imported: root imports this module)
    click.echo(cls(root, {}, "queuectl", "_QUEUECTL_COMPLETE").source())


def _queue(ctx: click.Context) -> Any:
    """The queue the command line names, or None when there is no database yet (a
    completion must not create one)."""
    import os

    from queuectl.api import Queue
    from queuectl.config import resolve_paths
    from queuectl.rules import is_postgres_url

    root = ctx.find_root().params
    paths = resolve_paths(root.get("home"), root.get("db"))
    if not is_postgres_url(paths.db_url) and not os.path.isfile(paths.db_url):
        return None
    return Queue.open(paths)


def _values(read: Callable[[Any], list[str]]) -> Callable[[click.Context, click.Parameter, str], list[Any]]:
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        try:
            queue = _queue(ctx)
            if queue is None:
                return []
            try:
                values = read(queue)
            finally:
                queue.close()
        except Exception:  # the shell's prompt is the boundary: offer nothing, say nothing
            return []
        return [CompletionItem(v) for v in values if v.startswith(incomplete)]

    return complete


def _states(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from queuectl.models import JobState

    return [CompletionItem(s.value) for s in JobState if s.value.startswith(incomplete)]


def _keys(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from queuectl.settings import SETTINGS

    return [CompletionItem(k) for k in SETTINGS if k.startswith(incomplete)]


job_ids = _values(lambda q: [j.id for j in q.list(limit=JOB_IDS, newest_first=True)])
queue_names = _values(lambda q: [i.name for i in q.queues()])
schedule_names = _values(lambda q: [s.name for s in q.schedules()])

#: (group or command name, parameter name) -> completer; group None: any.
_BY_NAME: dict[tuple[str | None, str], Any] = {
    (None, "job_id"): job_ids,
    (None, "job_ids"): job_ids,
    (None, "state"): _states,
    (None, "states"): _states,
    (None, "queue"): queue_names,
    (None, "queues"): queue_names,
    (None, "queue_name"): queue_names,
    ("queue", "name"): queue_names,
    ("schedule", "name"): schedule_names,
    ("config", "key"): _keys,
}


def attach(command: click.Command, group: str) -> None:
    """Give `command` (loaded as `group`, and its subcommands) the completers its
    parameters' names call for.  `schedule add NAME` names a new schedule: none."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            attach(sub, group)
        return
    if group == "schedule" and command.name == "add":
        return
    for param in command.params:
        name = param.name or ""
        found = _BY_NAME.get((group, name)) or _BY_NAME.get((None, name))
        if found is not None and not isinstance(param.type, click.Choice | click.types.BoolParamType):
            # click keeps a parameter's completer here (Parameter(shell_complete=...)).
            param._custom_shell_complete = found
