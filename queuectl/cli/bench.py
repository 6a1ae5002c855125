"""`queuectl bench`: this machine's drain rate next to its spawn limit (benchmark.py)."""

from __future__ import annotations

import click

from queuectl.cli.render import json_option
from queuectl.errors import InvalidInput


@click.command()
@click.option("--jobs", type=click.IntRange(1, 1_000_000), default=2000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--command", "command", default="true", show_default=True, help="The job to run.")
@json_option
def bench(jobs: int, workers: int, rounds: int, command: str, as_json: bool) -> None:
    """Drain no-op jobs on a temporary home; print jobs/s next to the spawn limit.

    The spawn limit is how fast as many processes start the same command with no
    queue at all: the ratio tells how close queuectl gets to this machine's limit.
    """
    from queuectl import benchmark

    if not command.strip():
        raise InvalidInput("--command must not be empty")
    result = benchmark.run(jobs=jobs, workers=workers, command=command, rounds=rounds)
    click.echo(benchmark.render(result, as_json))
