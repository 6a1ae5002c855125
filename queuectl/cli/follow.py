"""`logs --follow`: print a job's output as its worker saves it, until the job ends.

The store keeps only the tail of each output (output_limit), so what is new is found
by aligning the last tail printed with the current one: the current tail is the last
one with some text dropped from its start and new text added at its end.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from queuectl.api import wait_exit_code
from queuectl.cli import render
from queuectl.models import Job

#: How much of the current tail's start is looked for in the last one.
_PROBE = 64
#: What a tail cut inside a UTF-8 character starts with.
_CUT = "\ufffd"


def new_text(printed: str, current: str) -> tuple[str, bool]:
    """The text of `current` (a tail of one output) not in `printed` (the tail last
    printed), and whether text written between the two was dropped unprinted (then
    all of `current` is new).  Repeated identical text at the seam can be taken for
    text already printed: only the tails are stored, not offsets."""
    if current.startswith(printed):
        return current[len(printed) :], False
    body = current.lstrip(_CUT)
    probe = body[:_PROBE]
    start = printed.find(probe) if probe else -1
    while start != -1:
        kept = printed[start:]
        if body.startswith(kept):
            return body[len(kept) :], False
        start = printed.find(probe, start + 1)
    return current, True


def follow(queue: Any, job_id: str, stream: str, raw: bool, as_json: bool) -> int:
    """Print the job's output as it is saved; wait's exit code once it ended."""
    shown: Callable[[str], str] = (lambda text: text) if raw else render.block
    names = ("stdout", "stderr") if stream == "both" else (stream,)
    printed = dict.fromkeys(names, "")
    attempt: int | None = None
    last: Job | None = None
    for (job,) in queue.watch([job_id]):
        if attempt and job.attempts != attempt:
            # A new attempt: its output starts afresh.
            printed = dict.fromkeys(names, "")
            _note(as_json, job, {"attempt": job.attempts}, f"--- attempt {job.attempts} ---")
        attempt = job.attempts
        for name in names:
            current = getattr(job, name) or ""
            text, dropped = new_text(printed[name], current)
            printed[name] = current
            if dropped:
                _note(
                    as_json,
                    job,
                    {"dropped": name},
                    f"[{name}: output dropped from the kept tail before it was shown]",
                )
            if text:
                _write(as_json, job, name, shown(text), stream == "both")
        last = job
    assert last is not None  # watch() yields at least once
    if as_json:
        _line(
            {"id": last.id, "state": last.state.value, "attempts": last.attempts, "exit_code": last.exit_code}
        )
    return wait_exit_code([last])


def _write(as_json: bool, job: Job, name: str, text: str, split: bool) -> None:
    if as_json:
        _line({"id": job.id, "stream": name, "text": text})
        return
    out = sys.stderr if name == "stderr" and split else sys.stdout
    out.write(text)
    out.flush()


def _note(as_json: bool, job: Job, fields: dict[str, Any], text: str) -> None:
    """A line about the output rather than of it: on stderr (a JSON line in --json)."""
    if as_json:
        _line({"id": job.id, **fields})
        return
    sys.stderr.write(f"queuectl: {text}\n")
    sys.stderr.flush()


def _line(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()
