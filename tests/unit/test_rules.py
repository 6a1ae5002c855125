"""rules.py replaces library calls with cheaper equivalents: check that
they agree with what they replace."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuectl import rules
from queuectl.config import Config


def test_character_classes_are_unicodedatas() -> None:
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        category = unicodedata.category(ch)
        assert rules._is_control(ch) is (category in ("Cc", "Cs")), hex(code)
        assert rules._has_surrogate(ch) is (category == "Cs"), hex(code)


@pytest.mark.parametrize(
    "stored",
    [
        {},
        {"max_retries": "0", "job_timeout": "0.01"},
        {"max_retries": " 1000 ", "job_timeout": "604800"},
        {"max_retries": "1001", "job_timeout": "0"},
        {"max_retries": "2.5", "job_timeout": "nan"},
        {"max_retries": "", "job_timeout": "inf"},
        {"max_retries": "7", "job_timeout": "1e2", "backoff_base": "3"},
    ],
)
def test_job_defaults_are_read_as_config_reads_them(stored: dict[str, str]) -> None:
    cfg = Config.from_stored(stored)
    assert rules.job_defaults(stored) == (cfg.max_retries, cfg.job_timeout)
    assert Config() == Config.from_stored({})
    assert (Config().max_retries, Config().job_timeout) == rules.job_defaults({})


@given(st.integers(min_value=0, max_value=32**10 - 1))
def test_id_digits_are_crockford_base32_of_the_number(n: int) -> None:
    # The two-digit table against the plain digit-by-digit definition.
    digits = "0123456789abcdefghjkmnpqrstvwxyz"
    expected = "".join(digits[(n >> (5 * i)) & 31] for i in reversed(range(10)))
    assert rules._b32(n, 10) == expected
    assert rules._b32(n % 32**6, 6) == expected[-6:]


# --- the shorter paths of a bulk enqueue (parse_json_object, check_job) -------------------


def _decode_reference(text: str) -> object:
    """What parse_json_object must agree with: JSONDecoder.decode alone."""
    import json

    def reject(name: str) -> None:
        raise ValueError(f"{name} is not a valid JSON number")

    try:
        obj = json.JSONDecoder(parse_constant=reject).decode(text)
    except ValueError as exc:
        return ("error", f"invalid JSON: {exc}")
    except RecursionError:
        return ("error", "invalid JSON: nested too deeply")
    if not isinstance(obj, dict):
        return ("error", f"a job must be a JSON object, not {type(obj).__name__}")
    return obj


def _outcome(check: Callable[..., object], *args: object) -> object:
    """What `check` returns, or ("error", its InvalidInput's text)."""
    try:
        return check(*args)
    except rules.InvalidInput as exc:
        return ("error", str(exc))


def _decoded(text: str) -> object:
    return _outcome(rules.parse_json_object, text)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
_around = st.sampled_from(["", " ", "\r", "\t\n", "x", "}", "{}", ",", "\u2028", "\x0b", " NaN"])


@given(_json_values, _around, _around)
def test_a_json_object_is_read_as_decode_reads_it(value: object, before: str, after: str) -> None:
    import json

    text = before + json.dumps(value, allow_nan=True) + after
    assert _decoded(text) == _decode_reference(text)


@given(st.text(alphabet='{}[]":,0123456789.eE+-tfnaulrs \\NIy\r\n', max_size=20))
def test_broken_json_is_rejected_as_decode_rejects_it(text: str) -> None:
    assert _decoded(text) == _decode_reference(text)


def test_deep_nesting_is_rejected_as_the_reference_rejects_it() -> None:
    text = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert _decoded(text) == _decode_reference(text) == ("error", "invalid JSON: nested too deeply")


def _checked(spec: dict[str, object]) -> object:
    return _outcome(rules.check_job, spec, 3, 60.0, 1_700_000_000.0)


_commands = st.one_of(
    st.text(max_size=8),
    st.text(alphabet=st.characters(codec="ascii"), max_size=8),
    st.sampled_from(["", " ", "a\x00b", "\ud800", "é" * 40_000, "x" * rules.MAX_COMMAND_BYTES]),
    st.sampled_from(["x" * (rules.MAX_COMMAND_BYTES + 1), "é" * 70_000, 5, None]),
)


@given(_commands, st.one_of(st.none(), st.sampled_from(["j1", "", " j", "a\x01", 7, "x" * 201])))
def test_a_plain_job_is_checked_as_any_job_is(command: object, job_id: object) -> None:
    # {"priority": None} sends the same job down the general path: a field given as
    # null is the default.  Ids are given, so nothing differs but the path.
    plain: dict[str, object] = {"command": command, "id": "given" if job_id is None else job_id}
    assert _checked(plain) == _checked({**plain, "priority": None})
    alone, general = _checked({"command": command}), _checked({"command": command, "priority": None})
    if alone[0] == "error":  # type: ignore[index]
        assert alone == general
    else:  # a generated id each: the rest agrees
        assert alone[1:] == general[1:]  # type: ignore[index]


def _check_command_reference(command: object) -> object:
    """What _check_command must agree with: the checks without its ASCII shortcut."""
    if not isinstance(command, str):
        return ("error", "command is required and must be a string")
    if not command.strip():
        return ("error", "command must not be empty")
    if "\x00" in command:
        return ("error", "command must not contain NUL characters")
    if len(command.encode("utf-8", "surrogatepass")) > rules.MAX_COMMAND_BYTES:
        return ("error", f"command is longer than {rules.MAX_COMMAND_BYTES} bytes")
    try:
        command.encode("utf-8")
    except UnicodeEncodeError:
        return ("error", "command is not valid UTF-8 text")
    return command


def _check_command_now(command: object) -> object:
    return _outcome(rules._check_command, command)


@pytest.mark.parametrize("extra", [-1, 0, 1])
@pytest.mark.parametrize("fill", ["x", "é", "\ud800", "✓"])
def test_a_command_at_the_length_limit_is_checked_as_the_reference_checks_it(fill: str, extra: int) -> None:
    # At the limit in bytes, one byte under and one over, in one- to three-byte
    # characters (a lone surrogate counts three bytes, and is then refused as such).
    width = len(fill.encode("utf-8", "surrogatepass"))
    for command in (
        fill * (rules.MAX_COMMAND_BYTES // width + extra),
        "x" * (rules.MAX_COMMAND_BYTES + extra),
    ):
        assert _check_command_now(command) == _check_command_reference(command)


@given(st.one_of(st.text(), st.text(alphabet=st.characters(codec="ascii")), st.integers(), st.none()))
def test_any_command_is_checked_as_the_reference_checks_it(command: object) -> None:
    assert _check_command_now(command) == _check_command_reference(command)


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True),
        st.text().filter(lambda t: "\x00" not in t and not any("\ud800" <= ch <= "\udfff" for ch in t)),
        max_size=4,
    )
)
def test_env_is_stored_as_json_dumps_writes_it(env: dict[str, str]) -> None:
    import json

    expected = json.dumps(env, sort_keys=True, ensure_ascii=False) if env else None
    assert rules._check_env(env) == expected
