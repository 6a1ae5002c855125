"""The settings table (settings.py) as the CLI reads it: the one place in the CLI that
names it, so the CLI's ranges and the key list of `config set --help` come from it."""

from __future__ import annotations

from queuectl.config import ALL_KEYS, Config
from queuectl.settings import num_text


def key_range(name: str) -> tuple[float, float]:
    """The range of a numeric setting, as the table declares it."""
    key = ALL_KEYS[name]
    return key.low, key.high


def keys_help() -> str:
    """One line per key (its values, its default, what it does), kept as written by
    click's help formatter."""
    defaults = Config().as_dict()
    lines = ["\b", "Keys:"]
    for name, key in ALL_KEYS.items():
        values = "|".join(key.choices) if key.choices else f"{num_text(key.low)}..{num_text(key.high)}"
        default = defaults[name]
        shown = num_text(default) if isinstance(default, int | float) else default
        lines.append(f"  {name:<19} {values} (default {shown}): {key.help}")
    return "\n".join(lines)
