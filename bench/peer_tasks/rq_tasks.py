"""RQ's side of the benchmark: the job function, imported by `rq worker --path <this folder>`."""

from __future__ import annotations

from jobs import run_shell


def shell(command: str) -> dict[str, float]:
    return run_shell(command)
