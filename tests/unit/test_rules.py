"""rules.py replaces library calls with cheaper equivalents (issue 6): check that
they agree with what they replace."""

from __future__ import annotations

import sys
import unicodedata

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
