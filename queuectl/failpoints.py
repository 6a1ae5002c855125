"""Deterministic crash points for the chaos tests.

`QUEUECTL_FAILPOINT=after_claim_commit` (a comma-separated list) makes the process
call `os._exit(137)` when it reaches that point, as if SIGKILLed there.  Read once at
import: a check costs one set lookup.
"""

from __future__ import annotations

import os

_ACTIVE = frozenset(p.strip() for p in os.environ.get("QUEUECTL_FAILPOINT", "").split(",") if p.strip())


def hit(name: str) -> None:
    if name in _ACTIVE:
        os._exit(137)


def armed(name: str) -> bool:
    """Whether `name` is set: for a crash point that needs to do part of its work
    first (a write cut in the middle)."""
    return name in _ACTIVE
