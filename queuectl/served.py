"""The queues the workers of a home's pool serve: `worker start --queue` writes them to
run/workers.queues, and each supervised `worker run` started without --queue reads
them at its start (supervisord's command line is fixed in conf/, so it cannot carry
them).  No file: every queue."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from queuectl import home
from queuectl.errors import InvalidInput


def _file(run_dir: Path) -> Path:
    return run_dir / "workers.queues"


def save(run_dir: Path, queues: Sequence[str] | None) -> None:
    """Record the pool's queues (None: every queue, the file removed)."""
    path = _file(run_dir)
    if queues is None:
        path.unlink(missing_ok=True)
        return
    run_dir.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with os.fdopen(home.open_private(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        f.write(json.dumps(list(queues)) + "\n")
    os.replace(tmp, path)  # replaces a symlink itself, never its target


def load(run_dir: Path) -> tuple[str, ...] | None:
    """The pool's queues, or None (no file: every queue).  InvalidInput for a file
    that is not a JSON list of names: a worker must never serve every queue because
    the list it was given could not be read."""
    path = _file(run_dir)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the pool's queues from {path}: {exc}") from None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{path} does not hold a list of queue names")
    return tuple(value)
