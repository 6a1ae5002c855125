"""Where queuectl keeps its state, and a queue's settings as typed values.

Two kinds of setting live here:

* `Paths`: the home folder and the database URL, chosen per process by flags
  (`--home`, `--db`) or the environment (`QUEUECTL_HOME`, `QUEUECTL_DB`).
* `Config`: the queue's behaviour, stored in the database's `config` table so that
  every worker and monitor of one queue agrees on it; `queuectl config set` writes it.
  Each key's type, default, range and help are in settings.SETTINGS.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from queuectl import rules
from queuectl.errors import InvalidInput
from queuectl.settings import SETTINGS, Setting, num_text

# Not typing.TYPE_CHECKING, which would import typing at every start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: The longest unix socket path supervisord can bind (sun_path is 108 bytes on Linux,
#: 104 on macOS); a home deeper than this gets a clear error instead of a crash.
MAX_SOCKET_PATH = 100

#: The settings table under the names the CLI and the tests know it by: every key,
#: and the numeric ones.
ALL_KEYS: Mapping[str, Setting] = SETTINGS
KEYS: Mapping[str, Setting] = {name: s for name, s in SETTINGS.items() if not s.choices}


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


def resolve_paths(home: str | None = None, db: str | None = None) -> Paths:
    """Flags beat the environment; the default home is the current directory (the
    rule is rules.resolve_locations, which the enqueue fast path calls too)."""
    home_text, db_url = rules.resolve_locations(home, db)
    return Paths(home=Path(home_text), db_url=db_url)


def _default(name: str) -> Any:
    return SETTINGS[name].default


@dataclass(frozen=True)
class Config:
    """Typed view of the config table: one field per row of settings.SETTINGS, in its
    order, with its default (tests/unit/test_settings.py checks that they agree)."""

    max_retries: int = _default("max_retries")
    backoff_base: float = _default("backoff_base")
    backoff_max: float = _default("backoff_max")
    job_timeout: float = _default("job_timeout")
    kill_grace: float = _default("kill_grace")
    timeout_grace: float = _default("timeout_grace")
    heartbeat_interval: float = _default("heartbeat_interval")
    heartbeat_timeout: float = _default("heartbeat_timeout")
    monitor_interval: float = _default("monitor_interval")
    output_limit: int = _default("output_limit")
    poll_interval: float = _default("poll_interval")
    stop_timeout: float = _default("stop_timeout")
    synchronous: str = _default("synchronous")
    cpu_affinity: str = _default("cpu_affinity")
    job_cgroup: str = _default("job_cgroup")
    retention_completed: float = _default("retention_completed")
    retention_dead: float = _default("retention_dead")
    retention_cancelled: float = _default("retention_cancelled")

    @classmethod
    def from_stored(cls, stored: Mapping[str, str]) -> Config:
        """Build from the table's text values; a bad stored value falls back to its default."""
        return cls(**{name: s.stored(stored) for name, s in SETTINGS.items()})

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
            f"heartbeat_interval ({num_text(hb)}) must be at most a quarter of heartbeat_timeout "
            f"({num_text(hb_timeout)}): a worker cut off from the database kills its job two "
            "intervals before it may be declared dead"
        )
