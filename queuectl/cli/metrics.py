"""`queuectl metrics [--serve HOST:PORT]`: the queue in Prometheus's text format."""

from __future__ import annotations

import click

from queuectl.cli.context import Ctx, pass_ctx
from queuectl.errors import InvalidInput


@click.command()
@click.option(
    "--serve",
    metavar="HOST:PORT",
    help="Serve /metrics over HTTP until Ctrl+C (HOST defaults to 127.0.0.1: `--serve :9464`).",
)
@pass_ctx
def metrics(c: Ctx, serve: str | None) -> int:
    """Print Prometheus metrics: jobs by queue and state, attempts, run time as a
    histogram, recoveries by reason, workers alive, heartbeat ages, the oldest due
    job's age, the last recovery pass's age.  For node_exporter's textfile collector:
    `queuectl metrics > DIR/queuectl.prom.tmp && mv DIR/queuectl.prom.tmp DIR/queuectl.prom`."""
    from queuectl import metrics as m

    if serve is None:
        click.echo(m.render(c.queue), nl=False)
        return 0
    try:
        host, port = m.parse_listen(serve)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    queue = c.queue

    def ready(url: str) -> None:
        click.echo(f"queuectl: serving {url} (Ctrl+C stops)", err=True)

    try:
        m.serve(queue, host, port, ready)
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        return 0
    return 0
