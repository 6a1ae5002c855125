"""Shell completion through the real command (click's protocol: the
_QUEUECTL_COMPLETE variable), on a real home: job ids, states, queue and schedule
names; no database is created by a completion."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import QHome, clean_env


def complete(home: QHome, *words: str) -> list[str]:
    line = ["queuectl", "--home", str(home.path), *words]
    env = clean_env(
        _QUEUECTL_COMPLETE="bash_complete", COMP_WORDS=" ".join(line), COMP_CWORD=str(len(line) - 1)
    )
    out = subprocess.run(
        [sys.executable, "-m", "queuectl"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return sorted(item.split(",", 1)[1] for item in out.stdout.splitlines() if item)


def test_values_are_completed_from_the_queue(qhome: QHome) -> None:
    assert complete(qhome, "inspect", "") == []  # no database yet: nothing, and none made
    assert not qhome.db.exists()
    qhome.enqueue("true", "--id", "abc1", "--queue", "mail")
    qhome.enqueue("true", "--id", "abd2")
    qhome.enqueue("true", "--id", "zz")
    qhome.invoke("schedule", "add", "nightly", "0 3 * * *", "true")
    assert complete(qhome, "inspect", "ab") == ["abc1", "abd2"]
    assert complete(qhome, "cancel", "abc1", "z") == ["zz"]
    assert complete(qhome, "list", "--queue", "m") == ["mail"]
    assert complete(qhome, "list", "--state", "p") == ["pending", "processing"]
    assert complete(qhome, "purge", "--state", "c") == ["cancelled", "completed"]  # click's own choices
    assert complete(qhome, "schedule", "pause", "") == ["nightly"]
    assert complete(qhome, "queue", "pause", "") == ["default", "mail"]
    assert complete(qhome, "config", "set", "retention_c") == ["retention_cancelled", "retention_completed"]
    assert "schedule" in complete(qhome, "sch")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_scripts(qhome: QHome, shell: str) -> None:
    r = qhome.run("completion", shell)
    assert r.returncode == 0 and "_QUEUECTL_COMPLETE" in r.stdout
    assert qhome.run("completion", "tcsh").returncode == 2
