"""The audit trail's events: what each line holds, its canonical text and its link.

Every event (a job's history event, or a note: a config, queue or schedule change,
a purge, a cancel request, a checkpoint) is sealed once, in the store, into one line:
its fields plus `seq` (1, 2, ... with no gap), `prev_hash` (the line before's `hash`,
GENESIS for the first) and `hash`, the SHA-256 of `prev_hash` followed by the
event's canonical JSON (every field but `hash` and `prev_hash`, keys sorted, no
spaces, UTF-8).  Changing, removing, reordering or adding a line breaks a link.

This module is pure: the store reads what waits (`Source`), `seal` makes the lines,
the store keeps them; trail_files.py writes them to logs/audit-<UTC date>.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from typing import Any, NamedTuple

from queuectl.rules import MAX_TIME, MIN_TIME, iso

#: The `prev_hash` of the first line.
GENESIS = "0" * 64
#: The fields a line of each kind always has (besides its own `detail` for notes).
COMMON_FIELDS = ("seq", "event", "at", "actor", "prev_hash", "hash")
JOB_FIELDS = (
    "job_id", "from_state", "to_state", "attempt", "worker_id", "exit_code", "error", "reason",
    "history_seq",
)  # fmt: skip
NOTE_FIELDS = ("detail", "note_id")
#: The actor of a change the database made as the consequence of another (a child
#: released or cancelled by its parent's end), when no process is named for it.
SYSTEM_ACTOR = "queuectl"

#: The one encoder of the trail (built once: json.dumps with options builds one per
#: call): keys sorted, no spaces, UTF-8 as is.  A line is the encoding of its whole
#: event; its canonical text, the encoding of all of it but `hash` and `prev_hash`.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_render: Any = None


def _renderer() -> Any:
    """structlog's JSON renderer over the trail's encoder, in a process that has
    structlog loaded (a worker, the monitor: the trail's writers).  A CLI command
    that seals its own change renders with the encoder itself: importing structlog
    would add about 40 ms to every mutating command, and the renderer only calls
    the encoder, so the text is the same."""
    global _render
    if _render is None:
        encode = _ENCODER.encode
        if "structlog" not in sys.modules:
            return lambda _logger, _name, event: encode(event)
        import structlog

        def serialize(obj: Any, **_: Any) -> str:
            return encode(obj)

        _render = structlog.processors.JSONRenderer(serializer=serialize)
    return _render


def line_text(event: dict[str, Any]) -> str:
    """The text of the line that holds `event` (with its `hash` and `prev_hash`)."""
    return _ENCODER.encode(event)


class Source(NamedTuple):
    """One event waiting to be sealed, as the store holds it: a job's history event
    (`note` None: the job fields are set) or a note (`note` its kind, `detail` its
    JSON object text)."""

    id: int  # job_events.seq, or audit_notes.id
    at: float
    actor: str | None
    job_id: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    attempt: int | None = None
    worker_id: str | None = None
    exit_code: int | None = None
    error: str | None = None
    reason: str | None = None
    note: str | None = None
    detail: str | None = None


class Sealed(NamedTuple):
    """One line of the trail, as the store keeps it until every home has it."""

    seq: int
    hash: str
    line: str


def event_name(src: Source) -> str:
    """The line's `event`: the note's kind, or what the job's transition was."""
    if src.note is not None:
        return src.note
    to, frm = src.to_state, src.from_state
    if frm is None:
        return "job_enqueued"
    if to == "processing":
        return "job_claimed"
    if to == "cancelled":
        return "job_cancelled"
    if frm == "processing" and src.actor is not None and src.actor != src.worker_id:
        return "job_recovered"  # not the attempt's own worker: the monitor or `recover`
    if frm == "dead" and to == "pending":
        return "job_retried"
    if frm == "waiting" and to == "pending":
        return "job_released"
    return f"job_{to}"


#: rules.iso's text up to the second, by whole second (a drain seals many events per
#: second; bounded, and cleared when full).
_SECONDS: dict[float, str] = {}


def at_text(ts: float) -> str:
    """rules.iso(ts), the date and time reused across one second's events: as
    datetime.fromtimestamp, the fraction is rounded half-even to microseconds (which
    may carry into the next second) and then cut to milliseconds."""
    if not MIN_TIME <= ts <= MAX_TIME - 1:  # also NaN: printed by iso() as it can
        return str(iso(ts))
    frac, whole = math.modf(ts)
    micro = round(frac * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1.0, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1.0, micro + 1_000_000
    prefix = _SECONDS.get(whole)
    if prefix is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        prefix = _SECONDS[whole] = str(iso(whole))[:-5]  # without ".000Z"
    return f"{prefix}.{micro // 1000:03d}Z"


def fields(src: Source) -> dict[str, Any]:
    """The event's own fields: everything its line holds but seq and the links."""
    if src.note is not None:
        return {
            "event": src.note, "at": at_text(src.at), "actor": src.actor or SYSTEM_ACTOR,
            "note_id": src.id, "detail": json.loads(src.detail or "{}"),
        }  # fmt: skip
    return {
        "event": event_name(src), "at": at_text(src.at),
        "actor": src.actor or src.worker_id or SYSTEM_ACTOR,
        "job_id": src.job_id, "from_state": src.from_state, "to_state": src.to_state,
        "attempt": src.attempt, "worker_id": src.worker_id, "exit_code": src.exit_code,
        "error": src.error, "reason": src.reason, "history_seq": src.id,
    }  # fmt: skip


def canonical(event: dict[str, Any]) -> str:
    """The text a line's hash covers: every field but `hash` and `prev_hash`."""
    return _ENCODER.encode({k: v for k, v in event.items() if k not in ("hash", "prev_hash")})


def link(prev_hash: str, event: dict[str, Any]) -> str:
    """The hash of `event` following a line whose hash is `prev_hash`."""
    return hashlib.sha256((prev_hash + canonical(event)).encode("utf-8")).hexdigest()


#: Where `hash` and `prev_hash` go in a line's sorted keys: before these keys, which
#: every line of each kind has (a note's one nested value, `detail`, sorts before
#: both, so the last match in the text is the line's own key).
_BEFORE_HASH = {False: ',"history_seq":', True: ',"note_id":'}
_BEFORE_PREV = {False: ',"reason":', True: ',"seq":'}


def seal(sources: list[Source], seq: int, prev_hash: str) -> list[Sealed]:
    """The lines of `sources`, in order, after the line (seq, prev_hash)."""
    out: list[Sealed] = []
    render, sha256 = _renderer(), hashlib.sha256
    for src in sources:
        seq += 1
        event = fields(src)
        event["seq"] = seq
        # The event is encoded once (this loop is the trail's cost per job): structlog
        # renders it without the hash fields, which is its canonical text; the line
        # is that text with the two fields put in their sorted places, the very text
        # line_text() gives for the whole event (tests/unit/test_trail.py checks it).
        body = render(None, "info", event)
        digest = sha256((prev_hash + body).encode("utf-8")).hexdigest()
        note = src.note is not None
        at_prev = body.rfind(_BEFORE_PREV[note]) + 1
        at_hash = body.rfind(_BEFORE_HASH[note], 0, at_prev) + 1
        line = (
            f'{body[:at_hash]}"hash":"{digest}",{body[at_hash:at_prev]}'
            f'"prev_hash":"{prev_hash}",{body[at_prev:]}'
        )
        out.append(Sealed(seq, digest, line))
        prev_hash = digest
    return out


#: The largest seq a line may have (either store holds it, with room to spare).
MAX_SEQ = 2**62


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(text: str) -> dict[str, Any] | str:
    """A line's event, or why it is not one."""
    try:
        event = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(event, dict):
        return "not a JSON object"
    missing = [k for k in COMMON_FIELDS if k not in event]
    if missing:
        return f"no {', '.join(missing)}"
    seq = event["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        return "seq is not a line number"
    if not isinstance(event["hash"], str) or not isinstance(event["prev_hash"], str):
        return "hash or prev_hash is not text"
    if line_text(event) != text:
        # What json.loads hides: a key given twice, or text re-formatted.
        return "not as written (a key repeated, or the text re-formatted)"
    return event
