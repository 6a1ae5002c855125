"""The package's declarations: licence, click's range, classifiers, -V."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from queuectl import __version__

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def test_the_licence_file_matches_the_declared_licence() -> None:
    project = _project()
    assert project["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text
    assert "License :: OSI Approved :: MIT License" in project["classifiers"]  # type: ignore[operator]


def test_click_range_and_classifiers() -> None:
    project = _project()
    assert "click>=8.2,<9" in project["dependencies"]  # type: ignore[operator]
    for classifier in (
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Environment :: Console",
    ):
        assert classifier in project["classifiers"]  # type: ignore[operator]


def test_short_and_long_version_options() -> None:
    for flag in ("-V", "--version"):
        proc = subprocess.run(
            [sys.executable, "-m", "queuectl", flag], capture_output=True, text=True, timeout=60, check=False
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"queuectl, version {__version__}\n", "")
