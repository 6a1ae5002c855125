"""cpu_affinity=auto: a worker keeps to one CPU while its jobs may use all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import clean_env

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 CPUs")


def drain_one(home: Path, *config: tuple[str, str]) -> tuple[dict[str, object], str]:
    q = [sys.executable, "-m", "queuectl", "--home", str(home)]
    env = clean_env()
    for key, value in config:
        subprocess.run([*q, "config", "set", key, value], check=True, env=env, capture_output=True)
    job = subprocess.run(
        [*q, "enqueue", "sleep 0.2; exec grep Cpus_allowed_list /proc/self/status"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    run = subprocess.run(
        [*q, "worker", "run", "--burst"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    started = next(json.loads(line) for line in run.stderr.splitlines() if '"worker_started"' in line)
    logs = subprocess.run([*q, "logs", job], check=True, env=env, capture_output=True, text=True).stdout
    return started, logs


def allowed_list() -> str:
    with open("/proc/self/status") as f:
        return next(line for line in f if line.startswith("Cpus_allowed_list")).split(":")[1].strip()


def test_auto_pins_the_worker_and_widens_its_jobs_shell(tmp_path: Path) -> None:
    # `exec grep`: the job's own process (not an early child of its shell) reads its mask.
    started, logs = drain_one(tmp_path, ("cpu_affinity", "auto"))
    assert started["cpu"] in os.sched_getaffinity(0)
    assert logs.split(":")[1].strip() == allowed_list()


def test_off_is_the_default_and_leaves_placement_to_the_kernel(tmp_path: Path) -> None:
    started, logs = drain_one(tmp_path)
    assert started["cpu"] is None
    assert logs.split(":")[1].strip() == allowed_list()


def test_bad_value_is_rejected(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "queuectl",
            "--home",
            str(tmp_path),
            "config",
            "set",
            "cpu_affinity",
            "sometimes",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "auto, off" in proc.stderr
