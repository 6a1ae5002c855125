"""What the commands print: tables, JSON, and text for a terminal, with nothing of
what users and jobs wrote that a terminal would obey.

Commands, ids and captured output are other people's text.  An escape sequence in
them (an OSC title, a cursor move, a colour that hides the rest of a line) or a
bidirectional override (which shows one text as another) must reach a terminal as
visible escapes, in a pipe too: `queuectl list | less -R` and a log viewer are
terminals as well.  JSON output needs none of this (json escapes every control
character), and `logs --raw` is for a user who asks for the bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from queuectl.rules import BIDI_CONTROLS

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only (stable format).")


def _unsafe(ch: str) -> bool:
    """C0 and C1 controls, DEL, lone surrogates, bidi formatting, line separators."""
    return (
        ch < " "
        or "\x7f" <= ch <= "\x9f"
        or ch in BIDI_CONTROLS
        or ch in "\u2028\u2029"
        or "\ud800" <= ch <= "\udfff"
    )


def _escape(ch: str) -> str:
    return ascii(ch)[1:-1]  # '\x1b', '\u202e', '\n': Python's own spelling


def line(text: str) -> str:
    """One line of a table or a `key value` line: every unsafe character escaped,
    newlines and tabs too."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in text)


def block(text: str) -> str:
    """Captured output: newlines and tabs kept, every other unsafe character escaped."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(ch) if _unsafe(ch) and ch not in "\n\t" else ch for ch in text)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Columns as wide as their widest cell (at most 60, longer cells clipped), every
    cell escaped as one line."""
    for text in table_lines(rows, headers):
        click.echo(text)


def table_lines(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> list[str]:
    """table()'s lines."""
    cells = [[("" if c is None else line(str(c))) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = min(max(widths[i], len(c)), 60)
    head = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [head.rstrip()]
    for r in cells:
        out.append("  ".join(_clip(c, w).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return out


def _clip(text: str, width: int) -> str:
    text = line(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_jobs(jobs: Sequence[Any], as_json: bool) -> None:
    """A list of jobs (`list`, `dlq list`): JSON, or a table of one line per job."""
    if as_json:
        emit_json([j.to_dict(output=False) for j in jobs])
        return
    rows = [
        (
            j.id,
            j.state.value,
            f"{j.attempts}/{j.max_retries + 1}",
            j.priority,
            j.queue,
            _short_time(j),
            j.command,
        )
        for j in jobs
    ]
    table(rows, ("id", "state", "attempts", "priority", "queue", "updated", "command"))


def _short_time(job: Any) -> str:
    from queuectl.models import iso

    return (iso(job.updated_at) or "")[:19].replace("T", " ")
