"""What the repository promises about itself: CI runs the README's test command
verbatim, after the lint, format and type gates, and fails on any of them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ", 2)[1]  # the "Two commands" section
    return re.findall(r"```sh\n(.*?)\n```", head, re.S)


def test_the_readme_starts_with_its_two_commands() -> None:
    install, tests = _readme_commands()[:2]
    assert "pip install" in install and "queuectl" in install
    assert "pytest" in tests


def test_ci_runs_the_gates_and_then_the_readme_test_command_verbatim() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    lines = [s for s in (line.strip() for line in script.splitlines()) if s and not s.startswith("#")]
    assert "set -euo pipefail" in lines  # any failing gate fails the run
    gates = [
        ".venv/bin/ruff check queuectl tests bench",
        ".venv/bin/ruff format --check queuectl tests bench",
        ".venv/bin/mypy --strict queuectl",
    ]
    test_command = _readme_commands()[1]
    assert lines[-1] == test_command
    positions = [lines.index(gate) for gate in gates]
    assert positions == sorted(positions) and positions[-1] < len(lines) - 1
