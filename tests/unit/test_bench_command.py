"""`queuectl bench`: a real drain on a temporary home, reported next to the spawn limit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import clean_env


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queuectl", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )


def test_bench_drains_every_job_and_reports_a_ratio() -> None:
    proc = run("--jobs", "120", "--workers", "2", "--rounds", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["jobs"] == 120 and data["workers"] == 2 and data["command"] == "true"
    assert data["spawn_limit_per_s"] > 0 and data["drain_per_s"] > 0 and data["wall_per_s"] > 0
    # The ratio is of the unrounded medians; the rates are printed to 0.1 jobs/s, so
    # their quotient may differ from it in the third decimal.
    assert data["ratio"] == pytest.approx(data["drain_per_s"] / data["spawn_limit_per_s"], abs=0.001)


def test_bench_text_output() -> None:
    proc = run("--jobs", "40", "--workers", "1", "--rounds", "1")
    assert proc.returncode == 0, proc.stderr
    assert "of the limit" in proc.stdout and "spawn limit" in proc.stdout


def test_bench_rejects_bad_sizes() -> None:
    for args in (["--workers", "0"], ["--jobs", "-1"], ["--rounds", "100"], ["--command", " "]):
        proc = run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
