"""`queuectl audit verify` and `audit export`: reading the trail's files back.

verify walks every line of a home's files in order and stops counting a link as
good at the first that breaks: a line that is not an event (edited into bad JSON,
or cut), a hash that does not cover the line's content (edited), a seq at or
before the line before's (duplicated or reordered), a seq past the next one (lines
deleted, or a file missing), a `prev_hash` that is not the line before's hash
(edited or inserted).  With the database at hand it also holds the files to what
the database recorded: the chain starts at seq 1 or at a recorded checkpoint (files
before it archived), the lines the database still keeps match the files, the files
reach as far as this home recorded writing (a cut tail) and no further than the
head (forged lines).  `against_db` compares the job lines with the job history.

The report names the first broken link with its file and line; later problems are
listed too (up to MAX_PROBLEMS), since one cut often shows in several places.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queuectl.store import Store
from queuectl.trail import GENESIS, JOB_FIELDS, Source, fields, link, parse
from queuectl.trail_files import LOCK_NAME, LOCK_WAIT, acquire, files, home_key

#: The most problems a report lists after the first.
MAX_PROBLEMS = 100
#: History events read per query by `against_db`.
HISTORY_BATCH = 5000
#: A job line's fields that must equal its history event's.
COMPARED = (*(k for k in JOB_FIELDS if k != "history_seq"), "at")


@dataclass
class Problem:
    """One broken link: where (file, 1-based line; None when it is about no line) and
    what."""

    kind: str
    message: str
    file: str | None = None
    line: int | None = None
    seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "seq": self.seq,
        }

    def text(self) -> str:
        where = f"{self.file} line {self.line}: " if self.file is not None else ""
        return f"{where}{self.message}"


@dataclass
class Report:
    files: list[str] = field(default_factory=list)
    lines: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    last_line: int = 0
    head: tuple[int, str] | None = None
    start: str = "genesis"
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: Problem) -> None:
        if len(self.problems) <= MAX_PROBLEMS:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "first_broken": self.problems[0].as_dict() if self.problems else None,
            "problems": [p.as_dict() for p in self.problems],
            "files": self.files,
            "lines": self.lines,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": None if self.head is None else {"seq": self.head[0], "hash": self.head[1]},
            "start": self.start,
            "history_compared": self.compared,
            "notes": self.notes,
        }


@dataclass
class _Line:
    path: Path
    number: int
    text: str | None  # None: the file's last line has no newline (cut mid-write)
    error: str | None = None  # the file could not be read (a symlink, a folder, ...)


def _lines(logs_dir: Path) -> Iterator[_Line]:
    for path in files(logs_dir):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise IsADirectoryError(errno.EISDIR, "not a regular file")
        except OSError as exc:
            reason = "a symlink (never followed)" if exc.errno == errno.ELOOP else exc.strerror
            yield _Line(path, 0, None, f"cannot be read: {reason}")
            continue
        with os.fdopen(fd, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    yield _Line(path, number, None)
                    break
                yield _Line(path, number, raw[:-1].decode("utf-8", "replace"))


@contextlib.contextmanager
def _shared_lock(logs_dir: Path) -> Iterator[None]:
    """Hold logs/audit.lock shared, so no writer appends while the files are read;
    without the lock file (nothing ever written here) or the right to open it, go on
    unlocked."""
    try:
        fd = os.open(logs_dir / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        acquire(fd, fcntl.LOCK_SH, logs_dir / LOCK_NAME, LOCK_WAIT)
        yield
    finally:
        os.close(fd)


def _start(store: Store | None, first: dict[str, Any], report: Report) -> str | None:
    """The prev_hash the first line must have, or None when no recorded start fits."""
    seq = int(first["seq"])
    if seq == 1:
        return GENESIS
    if store is None:
        report.start = "unchecked (no database): first line taken as given"
        return str(first["prev_hash"])
    for cp_seq, cp_hash, _at, actor in store.trail.checkpoints():
        if cp_seq == seq - 1:
            report.start = f"checkpoint at seq {cp_seq} by {actor}"
            return cp_hash
    return None


def verify(
    logs_dir: Path, store: Store | None, *, home: str | None = None, against_db: bool = False
) -> Report:
    """Check the files in `logs_dir` (and, with `store`, against its database, as the
    files of `home`: by default the home whose logs folder `logs_dir` is; a copy of a
    home's files is checked as that home's)."""
    report = Report()
    walk = _Walk(store, report, against_db)
    with _shared_lock(logs_dir):
        for ln in _lines(logs_dir):
            walk.line(ln)
        if store is None:
            report.notes.append("no database: the files were checked against each other only")
            return report
        # Under the lock too: no writer appends and records a further end meanwhile.
        _check_ends(home or home_key(logs_dir), logs_dir, store, report)
    job_lines = walk.job_lines
    if against_db:
        _against_history(store, job_lines, report)
    return report


class _Walk:
    """One pass over the files, line by line, holding the link to the line before."""

    def __init__(self, store: Store | None, report: Report, keep_jobs: bool) -> None:
        self.store, self.report, self.keep_jobs = store, report, keep_jobs
        self.prev_seq: int | None = None
        self.prev_hash: str | None = None
        self.kept: dict[int, str] = {}
        self.kept_upto = -1
        #: history_seq -> (file, line, compared fields) of each job line.
        self.job_lines: dict[int, Any] = {}

    def line(self, ln: _Line) -> None:
        name, report = str(ln.path), self.report
        if not report.files or report.files[-1] != name:
            report.files.append(name)
        if ln.error is not None:
            report.add(Problem("unreadable_file", f"the file {ln.error}", name, None))
            return
        if ln.text is None:
            report.add(Problem("torn", "the last line is cut off (no newline)", name, ln.number))
            return
        report.lines += 1
        event = parse(ln.text)
        if isinstance(event, str):
            report.add(Problem("unreadable", f"not an event ({event}): edited or damaged", name, ln.number))
            self.prev_seq = None if self.prev_seq is None else self.prev_seq + 1
            self.prev_hash = None
            return
        seq, digest = int(event["seq"]), str(event["hash"])
        if link(str(event["prev_hash"]), event) != digest:
            report.add(
                Problem("edited", f"seq {seq}: its hash does not match its content", name, ln.number, seq)
            )
        problem = self._link(event, seq)
        if problem is not None:
            kind, message = problem
            report.add(Problem(kind, message, name, ln.number, seq))
            if kind == "out_of_order":
                return  # the chain goes on from the line before
        if self.store is not None and self._sealed(seq) not in (None, ln.text):
            report.add(
                Problem(
                    "differs", f"seq {seq}: differs from the line the database sealed", name, ln.number, seq
                )
            )
        if self.keep_jobs and event.get("job_id") is not None and event.get("history_seq") is not None:
            self.job_lines[int(event["history_seq"])] = (name, ln.number, {k: event.get(k) for k in COMPARED})
        self.prev_seq, self.prev_hash = seq, digest
        report.last_seq, report.last_hash, report.last_line = seq, digest, ln.number

    def _link(self, event: dict[str, Any], seq: int) -> tuple[str, str] | None:
        """What is wrong with this line's place in the chain, if anything."""
        prev_seq, prev_hash = self.prev_seq, self.prev_hash
        if prev_seq is None:
            self.report.first_seq = seq
            expected = _start(self.store, event, self.report)
            if expected is None:
                return "missing_start", (
                    f"the trail starts at seq {seq}, and no checkpoint records seq {seq - 1}:"
                    " earlier lines deleted or a file missing"
                )
            if str(event["prev_hash"]) != expected:
                return "broken_link", f"seq {seq}: prev_hash does not match the chain's start"
            return None
        if seq <= prev_seq:
            return "out_of_order", f"seq {seq} after seq {prev_seq}: a line duplicated or reordered"
        if seq > prev_seq + 1:
            missing = f"seq {prev_seq + 1}" + (f" to {seq - 1}" if seq - 1 > prev_seq + 1 else "")
            return "gap", f"{missing} missing before seq {seq}: lines deleted, reordered or a file missing"
        if prev_hash is not None and str(event["prev_hash"]) != prev_hash:
            return (
                "broken_link",
                f"seq {seq}: prev_hash is not the line before's hash (a line edited or inserted)",
            )
        return None

    def _sealed(self, seq: int) -> str | None:
        """The line the database keeps for `seq`, if it still keeps one."""
        assert self.store is not None
        if seq > self.kept_upto:
            rows = self.store.trail.lines(seq - 1, 2000)
            self.kept = dict(rows)
            self.kept_upto = rows[-1][0] if rows else 1 << 62  # none kept from here on
        return self.kept.get(seq)


def _check_ends(home: str, logs_dir: Path, store: Store, report: Report) -> None:
    head = store.trail.head()
    report.head = head
    mark = store.trail.home(home)
    last = report.last_seq or 0
    where = report.files[-1] if report.files else str(logs_dir)
    if mark is not None and mark.seq > last:
        report.add(
            Problem(
                "truncated",
                f"the files end at seq {last}, but this home recorded writing up to seq {mark.seq}:"
                " the tail was cut or a file is missing",
                where,
                report.last_line + 1,
                last,
            )
        )
    elif mark is not None and mark.seq == last and last > 0 and report.last_hash != mark.hash:
        report.add(
            Problem(
                "tail_mismatch",
                f"seq {last}: hash differs from the one this home recorded writing",
                where,
                report.last_line,
                last,
            )
        )
    if last > head[0]:
        report.add(
            Problem(
                "past_head",
                f"seq {last}: lines past the head (seq {head[0]}): forged lines",
                where,
                report.last_line,
                last,
            )
        )
    elif last == head[0] and last > 0 and report.last_hash != head[1]:
        report.add(
            Problem(
                "head_mismatch",
                f"seq {last}: hash differs from the database's head",
                where,
                report.last_line,
                last,
            )
        )
    if head[0] > max(last, mark.seq if mark is not None else 0):
        report.notes.append(
            f"{head[0] - max(last, mark.seq if mark is not None else 0)} sealed line(s) not yet written"
            " to this home's files (the next flush writes them)"
        )


def _against_history(store: Store, job_lines: dict[int, Any], report: Report) -> None:
    """Every sealed history event has its line, the same; every job line whose event
    the history lost names a job that is gone (purged, which is itself a line)."""
    floor = min(job_lines) if job_lines and report.first_seq not in (None, 1) else 0
    unwritten = _unwritten(store, report.last_seq or 0)
    after, unsealed, archived, seen = 0, 0, 0, set()
    while True:
        batch = store.trail.history(after, HISTORY_BATCH)
        if not batch:
            break
        for src, sealed in batch:
            after = src.id
            if not sealed or src.id in unwritten:
                unsealed += 1
                continue
            if src.id < floor:
                archived += 1
                continue
            seen.add(src.id)
            found = job_lines.get(src.id)
            report.compared += 1
            if found is None:
                report.add(
                    Problem(
                        "missing_line",
                        f"history event {src.id} of job {src.job_id}"
                        f" ({src.from_state} -> {src.to_state}) has no line in the trail",
                    )
                )
                continue
            name, number, got = found
            want = _expected(src)
            diff = [k for k in COMPARED if got.get(k) != want.get(k)]
            if diff:
                report.add(
                    Problem(
                        "history_differs",
                        f"history event {src.id} differs from its line in {', '.join(diff)}",
                        name,
                        number,
                    )
                )
    _orphans(store, job_lines, seen, floor, report)
    if unsealed:
        report.notes.append(
            f"{unsealed} history event(s) not yet sealed or written here (the next flush writes them)"
        )
    if archived:
        report.notes.append(
            f"{archived} history event(s) before the files' first line not compared (archived)"
        )


def _orphans(store: Store, job_lines: dict[int, Any], seen: set[int], floor: int, report: Report) -> None:
    """Job lines whose history event is gone while the job is not (a purge takes both)."""
    for hseq, (name, number, got) in sorted(job_lines.items()):
        if hseq not in seen and hseq >= floor and store.get(str(got["job_id"])) is not None:
            report.add(
                Problem(
                    "missing_history",
                    f"history event {hseq} of job {got['job_id']} is in the trail, not in the history",
                    name,
                    number,
                )
            )


def _expected(src: Source) -> dict[str, Any]:
    return fields(src)


def _unwritten(store: Store, after: int) -> set[int]:
    """The history events of lines sealed after seq `after` (which the database keeps
    until every home has them): not in the files yet, not missing."""
    out: set[int] = set()
    while True:
        rows = store.trail.lines(after, 2000)
        if not rows:
            return out
        for seq, text in rows:
            event = parse(text)
            if isinstance(event, dict) and event.get("history_seq") is not None:
                out.add(int(event["history_seq"]))
            after = seq


def export(
    logs_dir: Path,
    *,
    since: float | None = None,
    until: float | None = None,
    job: str | None = None,
    actor: str | None = None,
) -> Iterator[str]:
    """The lines (as written) of events matching every filter given, in order."""
    from queuectl.rules import parse_time

    for ln in _lines(logs_dir):
        if ln.text is None:
            continue  # an unreadable file or a cut line: `audit verify` names it
        event = parse(ln.text)
        if isinstance(event, str):
            continue
        if job is not None and event.get("job_id") != job:
            continue
        if actor is not None and event.get("actor") != actor:
            continue
        if since is not None or until is not None:
            try:
                at = parse_time(str(event["at"]))
            except (ValueError, OverflowError):
                continue
            if (since is not None and at < since) or (until is not None and at > until):
                continue
        yield ln.text
