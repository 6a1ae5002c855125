"""The settings table: every setting of a queue, and every option a job or a read
command takes, each with its type, default, range (or choices) and help.

This table is the only place a default or a range is written.  config.Config, the
checks of a new job (rules.check_job), `config set`, the CLI's option declarations
and README's settings table (settings_markdown, kept in step by a test) are all made
from it.

Cheap to import (no dataclasses, typing or enum: plain classes and tuples), since
the `queuectl enqueue` fast path reads a queue's job defaults through it.  Imports no
other queuectl module but errors.
"""

from __future__ import annotations

import math

from queuectl.errors import InvalidInput

# Not typing.TYPE_CHECKING: importing typing costs more than this whole module, and
# mypy gives a constant of this name the same meaning.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


class Setting:
    """One row of the table.  `kind` is int, float or str; a number lies in
    [low, high], a text is one of `choices`.  `seconds`: a float of seconds, also
    given as a duration (`90s`, `10m`, `2h`, `7d`, `1h30m`: durations.parse)."""

    __slots__ = ("choices", "default", "help", "high", "kind", "low", "name", "seconds")

    def __init__(
        self,
        name: str,
        kind: type,
        default: Any,
        low: float = 0,
        high: float = 0,
        help: str = "",
        *,
        choices: tuple[str, ...] = (),
        seconds: bool = False,
    ) -> None:
        self.name = name
        self.seconds = seconds
        self.kind = kind
        self.default = default
        self.help = help
        self.low = low
        self.high = high
        self.choices = choices

    def __repr__(self) -> str:
        return f"Setting({self.name!r})"

    def parse(self, text: str) -> Any:
        """The value `text` stands for (`config set`, the config table); InvalidInput
        with the reason when it is not of this setting's type or range."""
        raw = text.strip()
        if self.choices:
            if raw.lower() not in self.choices:
                raise InvalidInput(f"{self.name} must be one of {', '.join(self.choices)}, not {text!r}")
            return raw.lower()
        value: float | int
        try:
            if self.seconds:
                from queuectl import durations

                value = durations.parse(raw)
            else:
                value = int(raw) if self.kind is int else float(raw)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            if self.seconds:
                what = "seconds or a duration such as 90s, 10m, 2h, 7d"
            raise InvalidInput(f"{self.name} must be {what}, not {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{self.name} must be a finite number, not {text!r}")
        if not self.low <= value <= self.high:
            raise InvalidInput(
                f"{self.name} must be between {num_text(self.low)} and {num_text(self.high)}, not {text}"
            )
        return value

    def stored(self, values: Mapping[str, str]) -> Any:
        """This setting's value in a queue's config table `values`: its default when
        it is missing or no longer valid."""
        text = values.get(self.name)
        if text is None:
            return self.default
        try:
            return self.parse(text)
        except InvalidInput:
            return self.default

    def range_text(self) -> str:
        if self.choices:
            return ", ".join(self.choices)
        return f"{num_text(self.low)} to {num_text(self.high)}"


def num_text(x: float) -> str:
    """A number as a user writes it: 60, not 60.0."""
    return str(int(x)) if float(x).is_integer() else str(x)


# --- the config table: one queue's settings, stored in its database -----------------

# One line a setting: name, type, default, low, high (or its choices); its help below.
# fmt: off
SETTINGS: Mapping[str, Setting] = {s.name: s for s in (
    # Taken by each job at enqueue, so a later change does not touch queued jobs.
    Setting("max_retries", int, 3, 0, 1000,
            "retries after the first attempt (taken by each job at enqueue)"),
    Setting("backoff_base", float, 2.0, 1.0, 1000.0,
            "retry delay = backoff_base ** attempts seconds"),
    # Whatever the attempts before, no retry waits longer than this.
    Setting("backoff_max", float, 3600.0, 0.0, 31_536_000.0,
            "cap on one retry delay, seconds", seconds=True),
    # Taken by each job at enqueue unless it names its own `timeout`.
    Setting("job_timeout", float, 60.0, 0.01, 604_800.0,
            "default time limit of a job, seconds (taken by each job at enqueue)", seconds=True),
    Setting("kill_grace", float, 5.0, 0.0, 600.0,
            "seconds from SIGTERM to SIGKILL on a timeout", seconds=True),
    # The worker should have killed the job at `timeout`; the monitor steps in once
    # it has run timeout + this.
    Setting("timeout_grace", float, 10.0, 0.0, 3600.0,
            "extra seconds before the monitor reaps a job its worker did not stop", seconds=True),
    # Also while a job runs.  config.check_combination bounds it by heartbeat_timeout.
    Setting("heartbeat_interval", float, 3.0, 0.05, 3600.0,
            "seconds between worker heartbeats (at most a quarter of heartbeat_timeout)", seconds=True),
    Setting("heartbeat_timeout", float, 15.0, 0.2, 86_400.0,
            "seconds without a heartbeat before a worker is declared dead", seconds=True),
    Setting("monitor_interval", float, 5.0, 0.05, 3600.0,
            "seconds between recovery passes", seconds=True),
    Setting("output_limit", int, 64, 0, 10_240,
            "KiB of stdout and of stderr kept per job (the tail)"),
    # A new job wakes an idle worker sooner: SQLite's data_version, PostgreSQL's NOTIFY.
    Setting("poll_interval", float, 1.0, 0.005, 60.0,
            "longest idle wait between claim attempts, seconds (new jobs wake workers sooner)", seconds=True),
    # Keep it below supervisord's stopwaitsecs (conf/supervisord.conf), which kills
    # the worker itself.
    Setting("stop_timeout", float, 80.0, 0.0, 86_400.0,
            "on a graceful stop, how long a worker lets its job run before killing it, seconds",
            seconds=True),
    Setting("synchronous", str, "normal", choices=("normal", "full"),
            help="SQLite durability: normal survives process crashes, full also power loss"),
    # auto: worker k keeps to CPU k mod n of those it may use.  Its job's shell starts
    # there (posix_spawn has no affinity attribute) and is then allowed on every CPU
    # the worker was (affinity.widen_one), whatever it forked meanwhile from
    # executor.WIDEN_AFTER on.  A worker alternates with its job's shell, so the
    # worker's idle CPU is the right place for the shell to start; left free, the
    # kernel starts it on the CPU busy with another worker.
    Setting("cpu_affinity", str, "auto", choices=("auto", "off"),
            help="auto: each worker keeps to one CPU, where its job's shell starts before it"
            " (and what it forked meanwhile) is allowed on every CPU again (faster short"
            " jobs); off: the kernel places workers and jobs freely"),
    # contain.py makes each cgroup and kills it.
    Setting("job_cgroup", str, "auto", choices=("auto", "off"),
            help="auto: where this machine lets the worker create cgroups under its own (a"
            " delegated cgroup v2 subtree, or root with cgroup v2 mounted), each worker's"
            " jobs run in a cgroup of its own (queuectl.WORKER_ID), killed whole at the"
            " end of each attempt; off: never (read when a worker starts)"),
    # Applied by the recovery pass (retention.py), a batch per state per pass.
    Setting("retention_completed", float, 0.0, 0.0, 100 * 365 * 86_400.0,
            "completed jobs are deleted (with their history) this long after they"
            " finished, by the recovery pass; 0 keeps them", seconds=True),
    Setting("retention_dead", float, 0.0, 0.0, 100 * 365 * 86_400.0,
            "the same for dead jobs (the dead-letter queue); 0 keeps them", seconds=True),
    Setting("retention_cancelled", float, 0.0, 0.0, 100 * 365 * 86_400.0,
            "the same for cancelled jobs; 0 keeps them", seconds=True),
)}
# fmt: on


def normalize_key(name: str) -> str:
    """`max-retries` and `max_retries` name the same key."""
    key = name.strip().lower().replace("-", "_")
    if key not in SETTINGS:
        known = ", ".join(sorted(SETTINGS))
        raise InvalidInput(f"unknown config key {name!r} (known: {known})")
    return key


# --- what a job may set for itself at enqueue ----------------------------------------

#: A job's `priority` and `delay`: their defaults are fixed.  A job's `max_retries`
#: and `timeout` default to the queue's setting of that name (JOB_OPTIONS), and take
#: its range.
# fmt: off
PRIORITY = Setting("priority", int, 0, -1_000_000, 1_000_000,
                   "higher runs first")
DELAY = Setting("delay", float, 0.0, 0.0, 10 * 365 * 86_400.0,
                "seconds to wait before the first run", seconds=True)
# fmt: on

#: The numeric fields of a job object (and `queuectl enqueue` options) -> the row of
#: the table that holds their default and range.
JOB_OPTIONS: Mapping[str, Setting] = {
    "max_retries": SETTINGS["max_retries"],
    "priority": PRIORITY,
    "delay": DELAY,
    "timeout": SETTINGS["job_timeout"],
}

# --- what read commands take ----------------------------------------------------------

#: `--limit` of `list` and `dlq list` (no default: every job).
LIMIT = Setting("limit", int, None, 0, 1_000_000_000, "the most jobs to show")


# --- README's settings table ----------------------------------------------------------

_TYPE_NAMES = {int: "whole number", float: "number", str: "choice"}


def settings_markdown() -> str:
    """README's settings table, made from SETTINGS (tests/unit/test_settings.py checks
    that README holds it as it is)."""
    lines = ["| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS.values():
        default = s.default if s.choices else num_text(s.default)
        kind = "duration" if s.seconds else _TYPE_NAMES[s.kind]
        lines.append(f"| `{s.name}` | {kind} | {default} | {s.range_text()} | {s.help} |")
    return "\n".join(lines) + "\n"
