"""Where queuectl keeps its state, and the tunable settings with their rules.

Two kinds of setting live here:

* `Paths`: the home folder and the database URL, chosen per process by flags
  (`--home`, `--db`) or the environment (`QUEUECTL_HOME`, `QUEUECTL_DB`).
* `Config`: the queue's behaviour, stored in the database's `config` table so that
  every worker and monitor of one queue agrees on it; `queuectl config set` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from queuectl import rules
from queuectl.errors import InvalidInput

# Not typing.TYPE_CHECKING, which would import typing at every start (issue 6).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: The longest unix socket path supervisord can bind (sun_path is 108 bytes on Linux,
#: 104 on macOS); a home deeper than this gets a clear error instead of a crash.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Paths:
    """Where one queue lives: its home folder and its database (a file or a URL)."""

    home: Path
    db_url: str

    @property
    def db_dir(self) -> Path:
        return self.home / "db"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        """Runtime files: supervisord's socket and pid file, workers' output buffers."""
        return self.home / "run"

    @property
    def conf(self) -> Path:
        return self.home / "conf"

    @property
    def is_sqlite(self) -> bool:
        return not rules.is_postgres_url(self.db_url)


def resolve_paths(home: str | None = None, db: str | None = None) -> Paths:
    """Flags beat the environment; the default home is the current directory (the
    rule is rules.resolve_locations, which the enqueue fast path calls too)."""
    home_text, db_url = rules.resolve_locations(home, db)
    return Paths(home=Path(home_text), db_url=db_url)


# --- the config table -------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One setting of the config table: its type, its range (or choices), its help."""

    name: str
    kind: type
    low: float
    high: float
    help: str
    choices: tuple[str, ...] = ()


def _k(name: str, kind: type, low: float, high: float, help: str) -> Key:
    return Key(name, kind, low, high, help)


KEYS: Mapping[str, Key] = {
    k.name: k
    for k in (
        # How many retries a job gets after its first attempt; taken by each job at
        # enqueue, so a later change does not touch jobs already queued.
        _k(
            "max_retries",
            int,
            *rules.MAX_RETRIES_RANGE,
            "retries after the first attempt (per job at enqueue)",
        ),
        # The retry after attempt n waits backoff_base ** n seconds (2, 4, 8, ...).
        _k("backoff_base", float, 1.0, 1000.0, "retry delay = backoff_base ** attempts seconds"),
        # No retry waits longer than this, however many attempts came before.
        _k("backoff_max", float, 0.0, 31_536_000.0, "cap on one retry delay, seconds"),
        # A job's default time limit; each job takes it at enqueue unless it names one.
        _k("job_timeout", float, *rules.JOB_TIMEOUT_RANGE, "default time limit of a job, seconds"),
        # After SIGTERM on a timeout, how long a job may take to exit before SIGKILL.
        _k("kill_grace", float, 0.0, 600.0, "seconds from SIGTERM to SIGKILL on timeout"),
        # The monitor treats a job as hung once it has run timeout + this many seconds
        # (its worker should have killed it at `timeout`).
        _k(
            "timeout_grace",
            float,
            0.0,
            3600.0,
            "extra seconds before the monitor reaps a timed-out job",
        ),
        # Workers write a heartbeat this often, also while a job runs.
        _k("heartbeat_interval", float, 0.05, 3600.0, "seconds between worker heartbeats"),
        # A worker silent for longer than this is declared dead and its job recovered.
        _k(
            "heartbeat_timeout",
            float,
            0.2,
            86_400.0,
            "seconds without heartbeat before a worker is stale",
        ),
        # How often the monitor runs a recovery pass.
        _k("monitor_interval", float, 0.05, 3600.0, "seconds between monitor passes"),
        # How much of each stream the job row keeps: the last N KiB.
        _k("output_limit", int, 0, 10_240, "KiB of stdout and of stderr kept per job (the tail)"),
        # The longest an idle worker waits before it looks for due work again (a new
        # job wakes it sooner: SQLite's data_version, PostgreSQL's NOTIFY).
        _k("poll_interval", float, 0.005, 60.0, "longest idle wait between claim attempts, seconds"),
        # On a graceful stop, how long a worker lets its running job go on before it
        # kills it; keep it below supervisord's stopwaitsecs (90 in conf/).
        _k("stop_timeout", float, 0.0, 86_400.0, "seconds a stopping worker lets its job finish"),
    )
}

SYNC_KEY = Key(
    "synchronous",
    str,
    0,
    0,
    "SQLite durability: normal (survives process crashes) or full (also power loss)",
    ("normal", "full"),
)
# auto (the default): each worker keeps to one CPU of those it may use (worker k on
# CPU k mod n); its job's shell starts there (posix_spawn has no affinity attribute)
# and is then allowed on every CPU the worker was (affinity.widen_one), whatever it
# forked meanwhile from 5 ms in (executor.WIDEN_AFTER, affinity.widen).  A worker
# alternates with its job's shell, so the shell starting on the worker's idle CPU is
# the right place; left free, the kernel starts it on the other CPU, busy with the
# other worker, while this one idles in vfork: two workers draining short jobs on two
# cores ran ~20% slower (docs/benchmarks.md).
# off: the kernel places workers and jobs freely.
AFFINITY_KEY = Key(
    "cpu_affinity",
    str,
    0,
    0,
    "auto: each worker keeps to one CPU (faster short jobs); off: no pinning",
    ("auto", "off"),
)
# auto (the default): where the machine delegates a cgroup v2 subtree, each worker
# runs its jobs in a cgroup of its own and kills it whole at each attempt's end
# (contain.py); off: the subreaper alone.  Read when a worker starts.
JOB_CGROUP_KEY = Key(
    "job_cgroup",
    str,
    0,
    0,
    "auto: each worker's jobs run in a cgroup of its own where one can be made; off: never",
    ("auto", "off"),
)
ALL_KEYS: Mapping[str, Key] = {
    **KEYS,
    SYNC_KEY.name: SYNC_KEY,
    AFFINITY_KEY.name: AFFINITY_KEY,
    JOB_CGROUP_KEY.name: JOB_CGROUP_KEY,
}


def normalize_key(name: str) -> str:
    """`max-retries` and `max_retries` name the same key."""
    key = name.strip().lower().replace("-", "_")
    if key not in ALL_KEYS:
        known = ", ".join(sorted(ALL_KEYS))
        raise InvalidInput(f"unknown config key {name!r} (known: {known})")
    return key


def parse_value(key: str, text: str) -> Any:
    """Validate one value for `key`; raise InvalidInput with the reason."""
    spec = ALL_KEYS[key]
    raw = text.strip()
    if spec.choices:
        if raw.lower() not in spec.choices:
            raise InvalidInput(f"{key} must be one of {', '.join(spec.choices)}, not {text!r}")
        return raw.lower()
    return rules.parse_number(key, text, spec.kind, spec.low, spec.high)


_num = rules.num_text


@dataclass(frozen=True)
class Config:
    """Typed view of the config table.  Its defaults are the only ones: KEYS holds each
    key's type, range and help."""

    max_retries: int = rules.DEFAULT_MAX_RETRIES
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    job_timeout: float = rules.DEFAULT_JOB_TIMEOUT
    kill_grace: float = 5.0
    timeout_grace: float = 10.0
    heartbeat_interval: float = 3.0
    heartbeat_timeout: float = 15.0
    monitor_interval: float = 5.0
    output_limit: int = 64
    poll_interval: float = 1.0
    stop_timeout: float = 80.0
    synchronous: str = "normal"
    cpu_affinity: str = "auto"
    job_cgroup: str = "auto"

    @classmethod
    def from_stored(cls, stored: Mapping[str, str]) -> Config:
        """Build from the table's text values; a bad stored value falls back to its default."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in stored:
                try:
                    values[f.name] = parse_value(f.name, stored[f.name])
                except InvalidInput:
                    continue
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def call_timeout(self) -> float:
        """How long one store call of a worker or monitor may take before a hung
        connection is cut: about a heartbeat interval, never under a second."""
        return max(1.0, 0.8 * self.heartbeat_interval)


def check_combination(values: Mapping[str, Any]) -> None:
    """Reject settings that are valid alone but make no sense together."""
    hb, hb_timeout = values["heartbeat_interval"], values["heartbeat_timeout"]
    # A worker cut off from the store kills its job two intervals before any monitor
    # may recover it (fence.deadline_after); that deadline must leave two intervals
    # after its last heartbeat, so the next heartbeat has a whole interval to come
    # back before a healthy job would be killed.
    if hb * 4 > hb_timeout:
        raise InvalidInput(
            f"heartbeat_interval ({_num(hb)}) must be at most a quarter of heartbeat_timeout "
            f"({_num(hb_timeout)}): a worker cut off from the database kills its job two "
            "intervals before it may be declared dead"
        )
