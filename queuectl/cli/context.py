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
