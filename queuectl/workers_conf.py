"""conf/workers.conf: one supervisord `[program:workers_NN]` section per worker asked for.

The home's supervisord.conf `[include]`s this file and holds the template of a worker's
section as `[queuectl:worker]` (a section supervisord ignores).  queuectl writes the
file whole (a temporary file renamed over it) whenever the asked-for count changes, so
at every instant it names exactly the workers meant to run: `supervisorctl update`
(or supervisord's own start) adds and removes programs one by one, never restarting
one that stays, and `supervisorctl status` lists no worker that is not meant to run.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import re
from pathlib import Path

from queuectl import home
from queuectl.errors import InvalidInput

FILE = "workers.conf"
TEMPLATE = "queuectl:worker"
PREFIX = "workers_"
#: Names have two digits (workers_00 .. workers_99): the most workers one home runs.
MAX_WORKERS = 100

#: SHA-256 of every supervisord.conf earlier queuectl releases shipped, with the fixed
#: pool `[program:workers] numprocs=16`: a home still holding one of them unchanged is
#: given the current default; an edited one is refused with what to change.
LEGACY_DEFAULTS = frozenset(
    {
        "138d96c70123b6694f31d98637262c3203215eaeb1492245151ca9ca7976eccb",
        "179c9d95f93b9eb1760eb074fdfcb5bb1601d15d10ccdad0d96130a1aab41483",
        "8eab20dc939f5e1dc8b2c3eedd604bf17bcfd45ff4ce7d27ac3b49ac55ac6e67",
        "a78fd40587e9f8381aed000acf85df384bb121d508077955616b6221fb60edc8",
    }
)

_NAME = re.compile(rf"{PREFIX}(\d\d)")


def name(i: int) -> str:
    return f"{PREFIX}{i:02d}"


def is_worker(program: str) -> bool:
    return _NAME.fullmatch(program) is not None


def wanted(count: int) -> list[str]:
    return [name(i) for i in range(count)]


def check_count(count: int) -> None:
    if not 0 <= count <= MAX_WORKERS:
        raise InvalidInput(f"--count must be between 1 and {MAX_WORKERS}")


def upgrade_legacy(conf: Path, default: bytes) -> None:
    """Give a home whose conf is an unchanged earlier default the current default; refuse
    an edited one that still declares the fixed pool."""
    data = conf.read_bytes()
    if b"[program:workers]" not in data:
        return
    if hashlib.sha256(data).hexdigest() in LEGACY_DEFAULTS:
        _write(conf, default)
        return
    raise InvalidInput(
        f"{conf} declares the old fixed pool [program:workers]: rename that section to"
        " [queuectl:worker], delete its process_name and numprocs lines, set autostart=true,"
        " and add `[include]` with `files = workers.conf` (see queuectl/_conf/supervisord.conf)"
    )


def template(conf: Path) -> list[tuple[str, str]]:
    """The `[queuectl:worker]` keys of `conf`, raw (supervisord expands %(here)s and
    %(program_name)s in each worker's copy)."""
    parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read(conf)
    except configparser.Error as exc:
        raise InvalidInput(f"{conf}: {str(exc).splitlines()[0]}") from None
    if not parser.has_section(TEMPLATE):
        raise InvalidInput(f"{conf} has no [{TEMPLATE}] section (the template of each worker's program)")
    return list(parser.items(TEMPLATE))


def write(conf: Path, count: int) -> Path:
    """Make conf/workers.conf declare workers_00 .. workers_{count-1}; return its path."""
    check_count(count)
    # No worker needs no template: `worker stop` and `shutdown` still work on a home
    # whose supervisord was started from an earlier conf (the fixed pool).
    keys = template(conf) if count else []
    parts = [
        "; Written by queuectl (`worker start --count N`, `worker stop`): one program per\n"
        f"; worker meant to run, each a copy of [{TEMPLATE}] in supervisord.conf.  Do not edit.\n"
    ]
    for program in wanted(count):
        body = "".join(f"{k}={v}\n" for k, v in keys)
        parts.append(f"\n[program:{program}]\n{body}")
    target = conf.parent / FILE
    _write(target, "".join(parts).encode())
    return target


def _write(target: Path, data: bytes) -> None:
    tmp = target.with_name(target.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of an interrupted write
    fd = home.open_private(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)  # replaces a symlink itself, never its target
