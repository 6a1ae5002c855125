"""Durations as people write them: `90` or `90s`, `1.5m`, `10m`, `12h`, `7d`, `2w`,
and sums such as `1h30m`.  A bare number is seconds, as every option and setting
that takes seconds always took.

Imports nothing (not even `re`): the `queuectl enqueue` pre-parser converts --delay
and --timeout with it.
"""

from __future__ import annotations

#: Seconds in each unit.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}

#: How a bad duration is described in errors.
FORMS = "seconds, or a duration such as 90s, 10m, 2h, 7d, 1h30m"


def parse(text: str) -> float:
    """Seconds `text` stands for; ValueError when it is neither a number nor a
    duration.  A bare number parses as float() does (negative, inf or nan): ranges
    and finiteness are the caller's to check, as they were before durations."""
    raw = text.strip().lower()
    try:
        return float(raw)
    except ValueError:
        return _sum(raw)


def _sum(raw: str) -> float:
    """`1h30m` -> 5400.0: one or more NUMBER UNIT parts, each number unsigned."""
    total, number, parts = 0.0, "", 0
    for ch in raw:
        if ch in UNITS:
            if not number or number.count(".") > 1 or number == ".":
                raise ValueError(f"not a duration: {raw!r}")
            total += float(number) * UNITS[ch]
            number, parts = "", parts + 1
        elif ch.isascii() and (ch.isdigit() or ch == "."):
            number += ch
        else:
            raise ValueError(f"not a duration: {raw!r}")
    if number or not parts:
        raise ValueError(f"not a duration: {raw!r}")
    return total


def text(seconds: float) -> str:
    """A number of seconds the short way back (`604800` -> `7d`, `5400` -> `1h30m`,
    `0.5` -> `0.5s`)."""
    if seconds <= 0 or not float(seconds).is_integer():
        return f"{seconds:g}s"
    left, out = int(seconds), []
    for unit in ("w", "d", "h", "m", "s"):
        size = int(UNITS[unit])
        if left >= size:
            out.append(f"{left // size}{unit}")
            left %= size
    return "".join(out)
