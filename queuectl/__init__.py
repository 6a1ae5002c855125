"""queuectl: a durable background job queue for shell commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Job", "JobState", "Queue", "__version__"]

if TYPE_CHECKING:
    from queuectl.api import Queue
    from queuectl.models import Job, JobState


def __getattr__(name: str) -> object:
    # Lazy, so `queuectl status` does not pay for importing what it never uses.
    if name == "Queue":
        from queuectl.api import Queue

        return Queue
    if name in ("Job", "JobState"):
        from queuectl import models

        return getattr(models, name)
    raise AttributeError(name)
