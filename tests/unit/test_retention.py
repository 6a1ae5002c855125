"""Retention on both stores, at fixed instants: the recovery pass deletes finished
jobs past their state's retention setting, a batch per state per pass, and records
it in the recovery log; 0 keeps them; durations are accepted where seconds were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from queuectl import retention
from queuectl.api import Queue
from queuectl.errors import InvalidInput
from queuectl.models import NewJob
from queuectl.monitor import Monitor
from queuectl.store import Store
from queuectl.store.outcome import Completed
from tests.helpers import T0, QHome

DAY = 86_400.0


def _finish_at(store: Store, job_id: str, at: float) -> None:
    store.enqueue([NewJob(id=job_id, command="true", max_retries=0, priority=0, timeout=60, run_at=at)], at)
    job = store.claim("w1", now=at)
    assert job is not None and job.id == job_id
    assert store.finish(job.id, job.lease, Completed(), now=at)


def _logged(tmp_path: Path) -> list[dict[str, object]]:
    out = []
    for f in sorted((tmp_path / "logs").glob("recovered_jobs_*.json")):
        out += [json.loads(line) for line in f.read_text().splitlines()]
    return [r for r in out if r["event"] == "jobs_purged"]


def test_the_pass_deletes_completed_jobs_past_their_retention_in_batches(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    monkeypatch.setattr(retention, "MAX_BATCHES", 1)  # a pass's budget: one batch
    q = Queue(store)
    for i in range(3):
        _finish_at(store, f"old{i}", T0 + i)
    _finish_at(store, "new", T0 + 5 * DAY)
    mon = Monitor(store, queue="k", logs_dir=tmp_path / "logs")
    mon.run_once(now=T0 + 7 * DAY)  # 0 (the default) keeps everything
    assert store.counts()["completed"] == 4 and _logged(tmp_path) == []

    q.config_set("retention_completed", "7d")
    assert q.config().retention_completed == 7 * DAY
    mon.run_once(now=T0 + 7 * DAY + 10)
    assert sorted(j.id for j in store.list_jobs(None, None)) == ["new", "old2"]  # a batch of 2
    mon.run_once(now=T0 + 7 * DAY + 10)
    assert [j.id for j in store.list_jobs(None, None)] == ["new"]
    first, second = _logged(tmp_path)
    assert first["reason"] == "retention" and first["job_state"] == "completed"
    assert first["evidence"] == {"deleted": 2, "before": "2023-11-14T22:13:30.000Z", "retention_s": 7 * DAY}
    assert second["evidence"]["deleted"] == 1
    mon.run_once(now=T0 + 7 * DAY + 10)  # nothing left to delete: nothing logged
    assert len(_logged(tmp_path)) == 2


def test_each_state_has_its_own_retention_and_a_dry_run_only_counts(store: Store, tmp_path: Path) -> None:
    q = Queue(store)
    _finish_at(store, "done", T0)
    store.enqueue([NewJob(id="gone", command="true", max_retries=0, priority=0, timeout=60, run_at=T0)], T0)
    q.cancel(["gone"], actor="t", now=T0)
    q.config_set("retention_cancelled", "1h")
    mon = Monitor(store, queue="k", logs_dir=tmp_path / "logs")
    (would,) = mon.run_once(now=T0 + 2 * 3600, dry_run=True)
    assert (would.event, would.job_state, would.evidence["deleted"]) == ("jobs_purged", "cancelled", 1)
    assert store.get("gone") is not None
    mon.run_once(now=T0 + 2 * 3600)
    assert store.get("gone") is None and store.get("done") is not None


def test_durations_in_settings_options_and_purge(qhome: QHome) -> None:
    qhome.configure(job_timeout="2h", retention_dead="1w")
    config = qhome.json("config", "get")
    assert config["job_timeout"] == 7200 and config["retention_dead"] == 604800
    job = qhome.enqueue("true", "--delay", "10m", "--timeout", "1h30m")
    data = qhome.json("inspect", job)
    assert data["timeout"] == 5400
    json_job = qhome.enqueue('{"command": "true", "timeout": "90s", "delay": "1m"}')
    assert qhome.json("inspect", json_job)["timeout"] == 90
    # Bad durations: one line, exit 2, nothing stored.
    for args in (
        ["enqueue", "true", "--delay", "10x"],
        ["enqueue", "true", "--timeout", "-5m"],
        ["config", "set", "retention_completed", "soon"],
        ["purge", "--state", "completed", "--older-than", "7days", "--yes"],
    ):
        r = qhome.run(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)
    assert qhome.json("status")["total"] == 2
    assert "purged 0 jobs" in qhome.run("purge", "--state", "cancelled", "--older-than", "7d", "--yes").stdout


def test_a_bad_stored_retention_falls_back_to_keeping(store: Store) -> None:
    store.config_set({"retention_completed": "soon"})
    assert Queue(store).config().retention_completed == 0
    with pytest.raises(InvalidInput, match="retention_completed must be seconds or a duration"):
        Queue(store).config_set("retention_completed", "soon")


def test_a_pass_keeps_deleting_while_batches_come_back_full(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Retention must keep up with a queue that finishes more jobs a pass than a batch.
    monkeypatch.setattr(retention, "BATCH", 2)
    monkeypatch.setattr(retention, "MAX_BATCHES", 3)
    for i in range(7):
        _finish_at(store, f"old{i}", T0 + i)
    Queue(store).config_set("retention_completed", "7d")
    mon = Monitor(store, queue="k", logs_dir=tmp_path / "logs")
    mon.run_once(now=T0 + 7 * DAY + 10)
    assert [j.id for j in store.list_jobs(None, None)] == ["old6"]  # three full batches
    assert [r["evidence"]["deleted"] for r in _logged(tmp_path)] == [6]
    mon.run_once(now=T0 + 7 * DAY + 10)
    assert store.list_jobs(None, None) == []
