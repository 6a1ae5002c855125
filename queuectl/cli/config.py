"""`queuectl config`: read and change the queue's settings."""

from __future__ import annotations

from typing import Any

import click

from queuectl.cli.context import Ctx, pass_ctx
from queuectl.cli.render import emit_json, json_option
from queuectl.cli.settings import keys_help


@click.group()
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


@config.command(
    "set",
    context_settings={"ignore_unknown_options": True},  # so "-1" is a value
    epilog=keys_help(),
)
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
