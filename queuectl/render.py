"""Text for a terminal: what users and jobs wrote, with nothing a terminal would obey.

Commands, ids and captured output are other people's text.  An escape sequence in
them (an OSC title, a cursor move, a colour that hides the rest of a line) or a
bidirectional override (which shows one text as another) must reach a terminal as
visible escapes, in a pipe too: `queuectl list | less -R` and a log viewer are
terminals as well.  JSON output needs none of this (json escapes every control
character), and `logs --raw` is for a user who asks for the bytes.
"""

from __future__ import annotations

from queuectl.rules import BIDI_CONTROLS


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
