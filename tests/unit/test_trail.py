"""The audit trail's lines (queuectl/trail.py): fields, canonical text, links."""

from __future__ import annotations

import hashlib
import json

from queuectl.trail import GENESIS, Source, canonical, event_name, link, parse, seal
from tests.helpers import T0


def job(
    ident: int, frm: str | None, to: str, *, actor: str | None = None, worker: str | None = None
) -> Source:
    return Source(id=ident, at=T0 + ident, actor=actor, job_id="a", from_state=frm, to_state=to,
                  attempt=1, worker_id=worker)  # fmt: skip


def test_lines_chain_from_genesis_with_no_gap() -> None:
    sources = [job(1, None, "pending", actor="alice@h"), job(2, "pending", "processing", worker="w1")]
    lines = seal(sources, 0, GENESIS)
    assert [ln.seq for ln in lines] == [1, 2]
    first, second = (json.loads(ln.line) for ln in lines)
    assert first["prev_hash"] == GENESIS and second["prev_hash"] == first["hash"]
    body = {k: v for k, v in second.items() if k not in ("hash", "prev_hash")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert second["hash"] == hashlib.sha256((first["hash"] + text).encode()).hexdigest()
    assert [ln.hash for ln in lines] == [first["hash"], second["hash"]]
    # One line per event, keys sorted (structlog's JSON renderer), no newline inside.
    assert all(
        "\n" not in ln.line and list(json.loads(ln.line)) == sorted(json.loads(ln.line)) for ln in lines
    )


def test_a_chain_goes_on_from_any_line() -> None:
    whole = seal([job(1, None, "pending"), job(2, "pending", "processing", worker="w")], 0, GENESIS)
    tail = seal([job(2, "pending", "processing", worker="w")], 1, whole[0].hash)
    assert tail == whole[1:]


def test_any_change_to_a_line_changes_its_hash() -> None:
    (line,) = seal([job(1, "processing", "completed", worker="w1")], 0, GENESIS)
    event = json.loads(line.line)
    assert link(event["prev_hash"], event) == event["hash"]
    for key, value in (("exit_code", 1), ("job_id", "b"), ("seq", 2), ("actor", "mallory@h"), ("at", "x")):
        assert link(event["prev_hash"], {**event, key: value}) != event["hash"], key
    assert link("f" * 64, event) != event["hash"]  # the line before changed
    assert "hash" not in canonical(event) and "prev_hash" not in canonical(event)


def test_event_names_and_actors() -> None:
    assert event_name(job(1, None, "pending")) == "job_enqueued"
    assert event_name(job(2, "pending", "processing", worker="w")) == "job_claimed"
    assert event_name(job(3, "processing", "failed", worker="w")) == "job_failed"
    assert event_name(job(3, "processing", "pending", actor="monitor:h:1", worker="w")) == "job_recovered"
    assert event_name(job(4, "dead", "pending", actor="bob@h")) == "job_retried"
    assert event_name(job(5, "waiting", "pending")) == "job_released"
    assert event_name(job(6, "pending", "cancelled", actor="bob@h")) == "job_cancelled"
    running = job(6, "processing", "cancelled", actor="bob@h", worker="w")
    assert event_name(running) == "job_cancelled"  # not a recovery, though not its worker's
    (claimed,) = seal([job(1, "pending", "processing", worker="w9")], 0, GENESIS)
    assert json.loads(claimed.line)["actor"] == "w9"  # a worker's own change: its id
    (child,) = seal([job(1, "waiting", "pending")], 0, GENESIS)
    assert json.loads(child.line)["actor"] == "queuectl"  # the database's consequence of another
    note = Source(id=7, at=T0, actor="bob@h", note="config_set", detail='{"key": "max_retries"}')
    (line,) = seal([note], 0, GENESIS)
    assert json.loads(line.line) | {"hash": "", "prev_hash": ""} == {
        "seq": 1, "event": "config_set", "at": "2023-11-14T22:13:20.000Z", "actor": "bob@h",
        "note_id": 7, "detail": {"key": "max_retries"}, "hash": "", "prev_hash": "",
    }  # fmt: skip


def test_parse_names_what_is_wrong() -> None:
    assert parse("{") == "not JSON"
    assert parse("[1]") == "not a JSON object"
    assert parse('{"seq": 1}') == "no event, at, actor, prev_hash, hash"
    ok = '{"seq": "1", "event": "e", "at": "t", "actor": "a", "prev_hash": "p", "hash": "h"}'
    assert parse(ok) == "seq is not a line number"
    assert parse(ok.replace('"1"', str(2**63))) == "seq is not a line number"
    assert parse("[" * 100_000) == "not JSON"
    assert parse('{"seq": NaN}') == "not JSON"
    (line,) = seal([job(1, None, "pending")], 0, GENESIS)
    assert parse(line.line) == json.loads(line.line)
    twice = line.line.replace('{"actor":"queuectl"', '{"actor":"mallory@x","actor":"queuectl"', 1)
    assert twice != line.line and parse(twice) == "not as written (a key repeated, or the text re-formatted)"
    spaced = json.dumps(json.loads(line.line), sort_keys=True)  # the same event, other spacing
    assert parse(spaced) == "not as written (a key repeated, or the text re-formatted)"


def test_an_events_time_is_written_as_rules_iso_writes_it() -> None:
    # at_text() reuses the text of each whole second: it must round (half-even to
    # microseconds, carrying into the next second) exactly as datetime does.
    import math
    import random

    from queuectl.rules import MAX_TIME, MIN_TIME, iso
    from queuectl.trail import at_text

    rng = random.Random(18)
    edges = [
        T0, T0 + 0.9999995, T0 + 0.9999994, T0 + 0.0000005, T0 + 0.0015, -0.5, -1.9999996, -0.0000004,
        0.0, MIN_TIME, MAX_TIME, MAX_TIME - 1, MAX_TIME + 5, MIN_TIME - 5, math.inf, -math.inf, math.nan,
    ]  # fmt: skip
    spread = [rng.uniform(MIN_TIME, MAX_TIME) for _ in range(20000)]
    near = [math.floor(T0) + k + rng.choice([0.9999995, 0.0000005, 0.4995, 0.9995]) for k in range(2000)]
    for ts in edges + spread + near + [math.nextafter(t, math.inf) for t in near]:
        assert at_text(ts) == iso(ts), ts


def test_a_line_is_its_whole_event_encoded_whatever_its_text_holds() -> None:
    # seal() encodes each event once and puts `hash` and `prev_hash` into the text:
    # the result must be the line_text() of the whole event, for any value a job or
    # a note may carry (quotes, backslashes, the keys' own names, nested details).
    from queuectl.trail import line_text

    tricky = [
        'say "hi"', "a\\", '\\",\\"reason\\":', ',"reason":1,"seq":2', ',"history_seq":', "é ✓ \u2028 \x00",
        '{"hash": "x"}', "", "\n\t",
    ]  # fmt: skip
    sources: list[Source] = []
    for i, text in enumerate(tricky, 1):
        sources.append(Source(id=i, at=T0 + i, actor=text or None, job_id=text or "j",
                              from_state="processing", to_state="failed", attempt=i,
                              worker_id=text or None, exit_code=-i, error=text, reason=text))  # fmt: skip
        detail = {"seq": text, "note_id": [text, {"hash": text}], "prev_hash": text, "k": {"seq": {"seq": 1}}}
        sources.append(Source(id=i, at=T0 + i, actor=text, note="config_set", detail=json.dumps(detail)))
    prev = GENESIS
    for ln in seal(sources, 41, GENESIS):
        event = parse(ln.line)
        assert isinstance(event, dict), (event, ln.line)
        assert ln.line == line_text(event)
        assert event["prev_hash"] == prev and ln.hash == event["hash"] == link(prev, event)
        prev = ln.hash


def test_a_sealer_appends_from_memory_only_the_lines_that_follow_on() -> None:
    # flush() appends the lines it just sealed without reading them back, but only
    # the run that follows the home's end: another home's sealer may have taken the
    # seqs between two of its batches, and those come from the database.
    from queuectl.trail import Sealed
    from queuectl.trail_files import _following

    mine = [Sealed(s, f"h{s}", f"l{s}") for s in (5, 6, 8, 9)]
    assert _following(mine, 4) == [(5, "l5"), (6, "l6")]
    assert _following(mine, 7) == [(8, "l8"), (9, "l9")]
    assert _following(mine, 6) == [] and _following(mine, 9) == [] and _following([], 0) == []
