"""huey's side of the benchmark: a SqliteHuey on the file named by QB_HUEY_DB.

Run by `huey_consumer huey_tasks.huey -k process -w N` (with this folder on
PYTHONPATH), under bench/.venv-peers.
"""

from __future__ import annotations

import os

from huey import SqliteHuey
from jobs import run_shell

huey = SqliteHuey("queuectl-bench", filename=os.environ["QB_HUEY_DB"])


@huey.task()
def shell(command: str) -> dict[str, float]:
    return run_shell(command)
