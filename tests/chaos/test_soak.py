"""Soak (not in CI): `pytest -m soak tests/chaos` loops random SIGKILLs of workers
(and of the monitor) for QUEUECTL_SOAK_MINUTES (default 10) minutes under a steady
load, then checks every invariant.  QUEUECTL_SOAK_REPORT=FILE writes the figures."""

from __future__ import annotations

import json
import os

import pytest

from tests.chaos import scenarios
from tests.chaos.harness import Cluster

MINUTES = float(os.environ.get("QUEUECTL_SOAK_MINUTES", "10"))


@pytest.mark.soak
@pytest.mark.timeout(int(MINUTES * 60) + 600)
def test_soak_random_kills(chaos: Cluster) -> None:
    res = scenarios.soak(chaos, minutes=MINUTES)
    row = res.row()
    out = os.environ.get("QUEUECTL_SOAK_REPORT")
    if out:
        with open(f"{out}.{res.backend}.json", "w") as f:
            json.dump(row, f, indent=1)
    print(json.dumps(row))
    res.report.ok()
    assert res.report.lost == 0
