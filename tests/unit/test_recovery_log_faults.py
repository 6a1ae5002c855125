"""Recovery logs under faults: a full disk under logs/ leaves no empty or partial
recovered_jobs_*.json and keeps the records in the outbox for the next write; a
`recover --job` from any folder writes to the home's logs/, and a recovery that
committed never exits 1 because its log could not be written."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl.logs import json_logger
from queuectl.monitor import Monitor
from queuectl.store import Store
from tests.helpers import T0, QHome
from tests.unit.test_monitor import QUEUE, job, register


@pytest.fixture
def full_logs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(logs folder on a 64 KiB tmpfs, a file filling it)."""
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(logs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mount.stderr.strip()}")
    filler = logs / "filler"
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)
        yield logs, filler
    finally:
        if subprocess.run(["umount", str(logs)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(logs)], capture_output=True, check=False)


def recovery_logs(logs: Path) -> list[Path]:
    return sorted(logs.glob("recovered_jobs_*.json"))


def test_a_full_disk_leaves_no_empty_log_and_keeps_the_outbox(
    store: Store, full_logs: tuple[Path, Path]
) -> None:
    logs, filler = full_logs
    register(store, "w1", at=T0, host="elsewhere", pid=1)
    store.enqueue([job(f"j{i}") for i in range(20)], now=T0)
    for _ in range(20):
        assert store.claim("w1", now=T0) is not None
    out = io.StringIO()
    mon = Monitor(store, queue=QUEUE, logs_dir=logs, log=json_logger(out))
    done = mon.run_once(now=T0 + 60)  # 60 s of silence: every job recovered
    assert len([r for r in done if r.event == "job_recovered"]) == 20
    assert recovery_logs(logs) == []  # no empty or partial file
    assert len(store.audit_pending()) == 20  # kept for the next write
    failed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r for r in failed if r["event"] == "recovery_log_failed"], out.getvalue()
    assert mon.log_error is not None and "No space left" in mon.log_error
    # Space again: the next pass writes everything, once; the outbox is empty.
    filler.unlink()
    mon.run_once(now=T0 + 61)
    files = recovery_logs(logs)
    assert len(files) == 1
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert sorted(r["job_id"] for r in records if r["event"] == "job_recovered") == sorted(
        f"j{i}" for i in range(20)
    )
    # The removed worker was logged straight away: kept by this monitor until then.
    assert [r["worker_id"] for r in records if r["event"] == "worker_removed"] == ["w1"]
    assert store.audit_pending() == []
    assert mon.log_error is None


def held_job(qhome: QHome) -> None:
    """A PROCESSING job `held` whose worker died right after claiming it."""
    qhome.invoke("enqueue", "sleep 0.1", "--id", "held")
    env = {**qhome.env, "QUEUECTL_FAILPOINT": "after_claim_commit"}
    proc = subprocess.run(qhome.cmd("worker", "run"), env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 137
    assert qhome.job("held")["state"] == "processing"


@pytest.mark.parametrize("how", ["--db", "QUEUECTL_DB"])
def test_recover_job_from_another_folder_writes_to_the_homes_logs(
    qhome: QHome, tmp_path: Path, how: str
) -> None:
    held_job(qhome)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    db = str(qhome.path / "db" / "queue.db")
    args = ["--db", db] if how == "--db" else []
    env = {**qhome.env, "QUEUECTL_DB": db} if how == "QUEUECTL_DB" else qhome.env
    proc = subprocess.run(
        [*qhome.cmd()[:3], *args, "recover", "--job", "held"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(elsewhere.iterdir()) == []  # nothing in the current folder
    records = [
        json.loads(line) for f in recovery_logs(qhome.path / "logs") for line in f.read_text().splitlines()
    ]
    assert [(r["job_id"], r["reason"]) for r in records] == [("held", "manual")]


def test_recover_job_whose_log_cannot_be_written_exits_0_with_a_warning(qhome: QHome) -> None:
    held_job(qhome)
    logs = qhome.path / "logs"
    shutil.rmtree(logs)  # the worker's audit trail flush made it
    logs.write_text("a file where the logs folder should be\n")
    proc = qhome.run("recover", "--job", "held")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("queuectl: warning:")]
    assert len(warnings) == 1, proc.stderr
    assert "recovered_jobs" in warnings[0] or "recovery log" in warnings[0], warnings[0]
    assert "recovered job held" in proc.stdout
    assert qhome.job("held")["state"] == "failed"  # the recovery committed
    # The record waits in the outbox: the next pass, with logs/ usable, writes it.
    logs.unlink()
    assert qhome.run("recover").returncode == 0
    records = [json.loads(line) for f in recovery_logs(logs) for line in f.read_text().splitlines()]
    recovered = [(r["job_id"], r["reason"]) for r in records if r["event"] == "job_recovered"]
    assert recovered == [("held", "manual")]
