"""The pre-parser of `queuectl enqueue`, the one command scripts call in loops.

Importing click and building its command tree costs more than everything else one
enqueue does, so main() first offers the command line to parse(): the group options
`--home` and `--db`, then `enqueue`, a command (or JSON object) or `-` (JSON lines on
stdin), and enqueue's own options (enqueue_options.OPTIONS, from which the click
command is built too), each at most once but the repeatable ones.  Anything else goes to click unchanged:
`--help`, `--`, unknown or repeated options, a missing value, a number click would
reject, a --home click would reject, shell completion, a stdout that click.echo would
re-encode.  What parse() takes, run() does with the same call as the click command
(enqueue_options.submit) and prints as click.echo prints it.
"""

from __future__ import annotations

import os
import sys

from queuectl.cli.enqueue_options import OPTIONS, submit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

#: The group options read here: flag -> click parameter name (root.py declares them).
GROUP_OPTIONS = {"--home": "home", "--db": "db"}
#: click's shell completion runs when this is set (click.Command.main).
COMPLETE_VAR = "_QUEUECTL_COMPLETE"


def parse(args: Sequence[str]) -> tuple[dict[str, str], list[str], dict[str, Any]] | None:
    """(group options, job words, enqueue options) for the forms taken here, with
    values converted as click converts them; None hands the call to click."""
    if os.environ.get(COMPLETE_VAR):
        return None
    group: dict[str, str] = {}
    job: list[str] = []
    i = _read_options(args, 0, GROUP_OPTIONS, group, None)
    if i is None or i >= len(args) or args[i] != "enqueue":
        return None
    raw: dict[str, Any] = {}
    many = frozenset(o.param for o in OPTIONS if o.multiple)
    if _read_options(args, i + 1, {o.flag: o.param for o in OPTIONS}, raw, job, many) is None or not job:
        return None
    if not _home_as_click_takes_it(group.get("home")):
        return None
    options: dict[str, Any] = {}
    for o in OPTIONS:
        if o.param in raw:
            if o.choices is not None and raw[o.param] not in o.choices:
                return None  # click words the error
            try:
                # click.INT and click.FLOAT do just this; a repeatable option's values
                # come as a tuple, as click gives them
                value = raw[o.param]
                options[o.param] = tuple(map(o.kind, value)) if o.multiple else o.kind(value)
            except ValueError:
                return None  # click words the error
    if sys.stdout is None or _ascii_stream(sys.stdout):
        return None  # click.echo prints nothing, or re-encodes the output as UTF-8
    return group, job, options


def run(group: Mapping[str, str], job: list[str], options: Mapping[str, Any]) -> int:
    """What the root group and its `enqueue` command do, without click."""
    _write_out("\n".join(submit(group.get("home"), group.get("db"), job, options)) + "\n")
    return 0


def _read_options(
    args: Sequence[str],
    i: int,
    known: Mapping[str, str],
    into: dict[str, Any],
    words: list[str] | None,
    many: frozenset[str] = frozenset(),
) -> int | None:
    """Read options from args[i:] into `into` (each once, but those in `many`, whose
    values are collected in a list), and other words into `words` (None: stop at the
    first other word); the index where it stopped, or None for anything left to
    click."""
    while i < len(args):
        if args[i] == "-" or not args[i].startswith("-"):  # "--" is click's business
            if words is None:
                return i
            words.append(args[i])
            i += 1
            continue
        got = _option(args, i, known)
        if got is None:
            return None
        if got[0] in many:
            into.setdefault(got[0], []).append(got[1])
        elif got[0] in into:
            return None
        else:
            into[got[0]] = got[1]
        i = got[2]
    return i


def _option(args: Sequence[str], i: int, known: Mapping[str, str]) -> tuple[str, str, int] | None:
    """The option at args[i] as click's parser reads it: (parameter, value, next i)."""
    flag, eq, value = args[i].partition("=")
    if flag not in known:
        return None
    if eq:
        return known[flag], value, i + 1
    if i + 1 >= len(args):
        return None  # click: "Option ... requires an argument."
    return known[flag], args[i + 1], i + 2


def _ascii_stream(stream: Any) -> bool:
    """click.echo writes to stdout as it is unless its encoding is ASCII (then it
    writes UTF-8): the only case where a plain write would print other bytes."""
    import codecs

    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "ascii"
    except LookupError:
        return False


def _home_as_click_takes_it(home: str | None) -> bool:
    """click.Path(file_okay=False) passes a --home that does not exist, or exists, is
    not a regular file and is readable; it rejects the rest in its own words."""
    if home is None:
        return True
    import stat

    try:
        st = os.stat(home)
    except OSError:
        return True
    return not stat.S_ISREG(st.st_mode) and os.access(home, os.R_OK)


def _write_out(text: str) -> None:
    """Write text to stdout as click.echo writes it (see _ascii_stream), and end the
    command as click.Command.main does when stdout is closed: exit code 1."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        import errno

        if exc.errno != errno.EPIPE:
            raise
        sys.stdout = _PacifyFlush(sys.stdout)
        sys.stderr = _PacifyFlush(sys.stderr)
        sys.exit(1)


class _PacifyFlush:
    """A stream whose flush ignores a broken pipe (click's _PacifyFlushWrapper): the
    interpreter's last flush at exit must not print a traceback."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        import errno

        try:
            self.wrapped.flush()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)
