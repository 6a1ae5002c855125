"""A host cut off from PostgreSQL (a TCP proxy between it and the server) while its
worker runs a job: the worker kills the job on its own clock before any other host
may recover it, so no two attempts ever run at once (docs/reliability.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.conftest import _need_pg
from tests.chaos.harness import Cluster, Workload, check, pg_schema, wait_until
from tests.chaos.proxy import Proxy

pytestmark = pytest.mark.postgres

TIMINGS = {
    "heartbeat_interval": "1",
    "heartbeat_timeout": "5",
    "monitor_interval": "1",
    "backoff_base": "1",
    "backoff_max": "1",
    "poll_interval": "0.2",
}


@pytest.fixture
def two_hosts() -> Iterator[tuple[Cluster, Cluster, Proxy]]:
    """Host A reaches the server through a proxy, host B directly: one schema."""
    _need_pg()
    with pg_schema() as url:
        proxy = Proxy(("127.0.0.1", 5432))
        a, b = Cluster(proxy.url(url)), Cluster(url)
        a.env["QUEUECTL_HOSTNAME"], b.env["QUEUECTL_HOSTNAME"] = "hostA", "hostB"
        try:
            yield a, b, proxy
        finally:
            proxy.close()
            a.cleanup()
            b.cleanup()


def _ticks(path: Path) -> dict[int, list[float]]:
    """lease -> the times its attempt ticked."""
    out: dict[int, list[float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            _jid, lease, at = line.split()
            out.setdefault(int(lease), []).append(float(at))
    return out


def _logs(host: Cluster, tail: int = 2500) -> str:
    """The tail of each of `host`'s process logs."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in sorted(host.path.glob("*.log"))
    )


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
def test_a_host_cut_off_kills_its_job_before_another_host_runs_it_again(
    two_hosts: tuple[Cluster, Cluster, Proxy], mode: str
) -> None:
    a, b, proxy = two_hosts
    b.configure(**TIMINGS)
    w = Workload(b.path / "runs")
    ticks = b.path / "ticks"
    line = "$QUEUECTL_JOB_ID $QUEUECTL_LEASE"
    stamp = "$(date +%s.%N)"
    command = (
        f'echo "start {line} {stamp}" >> {w.out}; for i in $(seq 16); do echo "{line} {stamp}"'
        f' >> {ticks}; sleep 0.5; done; echo "end {line} {stamp}" >> {w.out}'
    )
    b.run("enqueue", json.dumps({"id": "p", "command": command, "max_retries": 3}))
    w.expected["p"] = "completed"
    a.spawn("worker", "run", name="worker")
    a.spawn("monitor", "run", name="monitor")
    wait_until(lambda: 1 in _ticks(ticks), 30, "attempt 1 to run on host A")
    assert (b.store.get("p").worker_id or "").startswith("hostA-")
    b.spawn("worker", "run", name="worker")
    b.spawn("monitor", "run", name="monitor")
    cut = time.time()
    proxy.blackhole() if mode == "blackhole" else proxy.reset()
    try:
        wait_until(lambda: len(_ticks(ticks).get(2, [])) >= 4, 40, "attempt 2 to run on host B")
    except Exception as exc:
        raise AssertionError(f"{exc}\nA:\n{_logs(a)}\nB:\n{_logs(b)}") from None
    finally:
        proxy.heal()
    wait_until(lambda: b.store.get("p").state.value == "completed", 60, "p to complete after healing")
    runs = _ticks(ticks)
    # For docs/reliability.md (pytest -s): when attempt 1 last ran, and attempt 2 first.
    print(
        "partition:",
        json.dumps(
            {
                "mode": mode,
                "attempt1_last_tick_after_cut_s": round(max(runs[1]) - cut, 2),
                "attempt2_first_tick_after_cut_s": round(min(runs[2]) - cut, 2),
                "gap_s": round(min(runs[2]) - max(runs[1]), 2),
            }
        ),
    )
    logs = _logs(a, tail=10**7)
    assert max(runs[1]) < min(runs[2]), f"attempts overlapped ({mode}):\n{logs[-3000:]}"
    # The worker killed attempt 1 by its deadline: well before heartbeat_timeout after the cut.
    assert max(runs[1]) < cut + 5, (max(runs[1]) - cut, logs[-3000:])
    assert "lease_presumed_lost" in logs
    history = b.store.history("p")
    recovered = [e for e in history if e.from_state == "processing" and e.reason == "heartbeat_lost"]
    assert recovered and recovered[0].attempt == 1, history
    check(b, w, require_logs=False).ok()
