"""Hostile input: Hypothesis throws random arguments, random and malformed
JSON, huge numbers, NaN, NUL bytes, invalid UTF-8, unicode ids and very long commands
at every CLI command that does not start processes.  Each call ends with a correct
result or one clear line on stderr with a documented exit code, never a traceback,
and a rejected call leaves the stored data exactly as it was.

Calls go through `queuectl.cli.main` (the real entry point, with its exit codes)
inside click's test isolation, for speed; the fixed cases at the end of
tests/unit/test_cli_errors.py and the `worker start --count` cases here use real
subprocesses."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from queuectl.cli import main
from queuectl.config import ALL_KEYS, KEYS
from tests.helpers import QUEUECTL_VARS, QHome, dump_db, one_line_error

DOCUMENTED = {0, 2, 3, 4, 5}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QHome]:
    path = tmp_path_factory.mktemp("fuzz") / "home"
    path.mkdir()
    h = QHome(path)
    h.enqueue('{"id": "seed1", "command": "echo one"}')
    h.enqueue('{"id": "seed2", "command": "false", "priority": 3}')
    h.configure(max_retries=2)
    yield h


def call(home: QHome, args: list[str], stdin: str | bytes | None = None) -> tuple[int, str, str]:
    """`queuectl --home HOME ARGS` through main(): (exit code, stdout, stderr)."""
    runner = CliRunner()
    code: Any = 0
    with runner.isolation(input=stdin, env=dict.fromkeys(QUEUECTL_VARS)) as (out, err, _):
        try:
            main(["--home", str(home.path), *args])
        except SystemExit as exc:
            code = exc.code
    return (
        (code if isinstance(code, int) else 1),
        out.getvalue().decode("utf-8", "replace"),
        err.getvalue().decode("utf-8", "replace"),
    )


def assert_clean_failure(code: int, out: str, err: str) -> None:
    assert code in DOCUMENTED - {0}, (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    if err.startswith("Usage:"):  # a group called without a subcommand prints its help
        assert code == 2
        return
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("queuectl: error: "), err
    assert len(lines[0]) < 2000, "an error line should not echo a huge input back"


# --- the enqueue JSON --------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0, max_codepoint=0x10FFFF), max_size=10),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "id",
    "command",
    "max_retries",
    "priority",
    "run_at",
    "delay",
    "timeout",
    "state",
    "attempts",
    "bogus",
]
GOOD_VALUES = {
    "id": st.text(min_size=1, max_size=40) | st.just("x'); DROP TABLE jobs;--"),
    "command": st.text(min_size=1, max_size=50) | st.just("echo " + "y" * 140_000),
    "max_retries": st.integers(-3, 1200),
    "priority": st.integers(-(2**40), 2**40),
    "run_at": st.sampled_from(["2030-01-01T00:00:00Z", "2020-01-01", "yesterday", "2030-13-01T00:00:00Z"]),
    "delay": st.floats(allow_nan=True) | st.integers(-5, 10**12),
    "timeout": st.floats(allow_nan=True) | st.integers(-1, 10**9),
}


@st.composite
def job_objects(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 4)) == 0:
        return draw(JSON_VALUES)  # any JSON at all
    obj: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=5)):
        strategy = GOOD_VALUES.get(name, JSON_VALUES)
        obj[name] = draw(st.one_of(strategy, JSON_VALUES) if draw(st.booleans()) else strategy)
    if draw(st.booleans()):
        obj.setdefault("command", draw(GOOD_VALUES["command"]))
    return obj


@FUZZ
@given(obj=job_objects())
def test_enqueue_json_is_stored_right_or_rejected_cleanly(home: QHome, obj: Any) -> None:
    text = json.dumps(obj, allow_nan=True)
    if not text.lstrip().startswith("{"):
        text = "{" + text  # never a plain command: keep it JSON (and invalid)
    before = dump_db(home.db)
    code, out, err = call(home, ["enqueue", text])
    if code != 0:
        assert_clean_failure(code, out, err)
        assert dump_db(home.db) == before
        return
    assert out.endswith("\n") and out.count("\n") == 1, repr(out)  # the id alone (ids may hold spaces)
    job_id = out[:-1]
    job = home.json("inspect", job_id)
    assert isinstance(obj, dict)
    assert job["command"] == obj["command"] and job["state"] == "pending"
    # A null field means "the default" (config or generated), as documented.
    if obj.get("id") is not None:
        assert job["id"] == obj["id"]
    for key in ("max_retries", "priority"):
        if obj.get(key) is not None:
            assert job[key] == obj[key]
    if obj.get("timeout") is not None:
        assert math.isclose(job["timeout"], obj["timeout"])


@FUZZ
@given(
    data=st.binary(max_size=300)
    | st.lists(job_objects(), min_size=1, max_size=4).map(
        lambda objs: "".join(json.dumps(o, allow_nan=True) + "\n" for o in objs).encode()
    )
)
def test_bulk_enqueue_bytes_all_or_nothing(home: QHome, data: bytes) -> None:
    before = dump_db(home.db)
    code, out, err = call(home, ["enqueue", "-"], stdin=data)
    if code != 0:
        assert_clean_failure(code, out, err)
        assert dump_db(home.db) == before
        return
    ids = out.split("\n")[:-1]  # one id per line; ids may hold spaces
    assert ids and len(set(ids)) == len(ids)
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    assert len(ids) == len(lines)
    for job_id, line in zip(ids, lines, strict=True):
        assert home.json("inspect", job_id)["command"] == json.loads(line)["command"]


# --- every other command's arguments ------------------------------------------------

COMMANDS = [
    ["enqueue"],
    ["list"],
    ["inspect"],
    ["logs"],
    ["status"],
    ["dlq", "list"],
    ["dlq", "retry"],
    ["dlq"],
    ["config", "get"],
    ["config", "set"],
    ["config"],
    ["recover", "--dry-run"],
    ["worker", "status"],
]
OPTIONS = [
    "--json", "--state", "--limit", "--id", "--max-retries", "--priority", "--delay", "--run-at",
    "--timeout", "--all", "--stream", "--job", "--count", "-", "--", "-1", "0", "10000", "1e308", "nan",
    "pending", "dead", "seed1", "seed2", "max_retries", "heartbeat_interval", "x'); DROP TABLE jobs;--",
]  # fmt: skip
ARGS = st.lists(st.sampled_from(OPTIONS) | st.text(max_size=20) | st.integers().map(str), max_size=5)
MUTATING = {("enqueue",), ("dlq", "retry"), ("config", "set")}


@FUZZ
@given(cmd=st.sampled_from(COMMANDS), args=ARGS)
def test_any_arguments_end_cleanly(home: QHome, cmd: list[str], args: list[str]) -> None:
    assume(all("\0" not in a for a in args))  # argv cannot carry NUL (execve refuses it)
    before = dump_db(home.db)
    code, out, err = call(home, [*cmd, *args])
    if code != 0:
        assert_clean_failure(code, out, err)
        assert dump_db(home.db) == before
    else:
        assert "Traceback" not in err
        if tuple(cmd) not in MUTATING:
            assert dump_db(home.db) == before
        if "--json" in args and out:
            json.loads(out)


# --- config values and combinations ------------------------------------------------

VALUE_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(["", " ", "1_000", "0x10", "1e-400", "normal", "FULL", "3.0", "-0", "٣"]),
    st.text(max_size=10),
)


@FUZZ
@given(key=st.sampled_from(sorted(ALL_KEYS)), value=VALUE_TEXT)
def test_config_values_are_checked_with_a_reason(home: QHome, key: str, value: str) -> None:
    assume("\0" not in value)
    before = dump_db(home.db)
    code, out, err = call(home, ["config", "set", key, value])
    if code != 0:
        assert_clean_failure(code, out, err)
        assert code == 2
        assert key in err, err  # the reason names the key
        assert dump_db(home.db) == before
        return
    stored = home.json("config", "get")
    spec = ALL_KEYS[key]
    if key in KEYS:
        assert spec.low <= stored[key] <= spec.high
    # No sequence of accepted sets ever leaves a nonsensical combination behind.
    assert stored["heartbeat_interval"] * 2 <= stored["heartbeat_timeout"]


# --- worker start --count, through real processes ---------------------------------------


@pytest.mark.parametrize(
    ("count", "fragment"), [("0", "at least 1"), ("-1", "at least 1"), ("10000", "between 1 and 100")]
)
@pytest.mark.parametrize("detach", [True, False], ids=["detach", "foreground"])
def test_worker_start_count_out_of_range_starts_nothing(
    tmp_path: Path, count: str, fragment: str, detach: bool
) -> None:
    """Found by this fuzzing: `--count 10000 --detach` said "between 1 and 16" but
    had already started supervisord and the monitor."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="qf", dir="/tmp"))  # a short socket path
    try:
        h = QHome(path)
        proc = h.run("worker", "start", "--count", count, *(["--detach"] if detach else []))
        assert fragment in one_line_error(proc, 2)
        assert not (path / "run" / "sv.sock").exists()
        assert not (path / "run" / "supervisord.pid").exists()
    finally:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
