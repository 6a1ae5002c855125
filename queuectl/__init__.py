"""queuectl: a durable background job queue for shell commands."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Job", "JobState", "Queue", "__version__"]

# Not typing.TYPE_CHECKING: importing typing costs milliseconds at every start (issue
# 6), and mypy gives a constant of this name the same meaning.
TYPE_CHECKING = False
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
