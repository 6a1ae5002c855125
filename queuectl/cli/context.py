"""What the commands that use a queue share: the invocation's state (Ctx) and the
--limit type of the list commands."""

from __future__ import annotations

from typing import Any

import click

from queuectl.config import Paths
from queuectl.settings import LIMIT as LIMIT_SETTING


class Ctx:
    """Per-invocation state: the group options as given, the paths they resolve to,
    and the queue opened on first use."""

    def __init__(self, home: str | None, db: str | None, paths: Paths) -> None:
        self.home = home
        self.db = db
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

#: --limit of the list commands: what every backend can take as a row count.
LIMIT = click.IntRange(int(LIMIT_SETTING.low), int(LIMIT_SETTING.high))


class Duration(click.ParamType):  # type: ignore[type-arg]
    """Seconds, or a duration such as 90s, 10m, 2h, 7d, 1h30m (durations.parse),
    between `low` and `high` seconds (ranged=False: any number, for options whose
    range a later check owns, as enqueue's job rules do)."""

    name = "duration"

    def __init__(self, low: float = 0.0, high: float = float("inf"), *, ranged: bool = True) -> None:
        self.low = low
        self.high = high
        self.ranged = ranged

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float | int) and not isinstance(value, bool):
            return float(value)
        from queuectl import durations

        try:
            seconds = durations.parse(str(value))
        except ValueError:
            self.fail(f"{value!r} is not {durations.FORMS}", param, ctx)
        if self.ranged and not self.low <= seconds <= self.high:
            from queuectl.settings import num_text

            if self.high == float("inf"):
                self.fail(f"{value!r} is not at least {num_text(self.low)} seconds", param, ctx)
            self.fail(
                f"{value!r} is not between {num_text(self.low)} and {num_text(self.high)} seconds", param, ctx
            )
        return seconds


DURATION = Duration()
#: enqueue's --delay and --timeout: converted as the pre-parser does, checked by the job rules.
SECONDS = Duration(ranged=False)
