"""settings.py is the one home of every default and range: Config, the checks of a
new job and README's settings table all agree with it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from queuectl import rules
from queuectl.config import ALL_KEYS, KEYS, Config
from queuectl.errors import InvalidInput
from queuectl.settings import JOB_OPTIONS, SETTINGS, num_text, settings_markdown

README = Path(__file__).resolve().parents[2] / "README.md"
NOW = 1_700_000_000.0


def test_readme_holds_the_settings_table_as_made_from_settings() -> None:
    table = settings_markdown()
    assert table in README.read_text(encoding="utf-8"), (
        "README.md's settings table is out of date: replace it with the output of\n"
        "  python -c 'from queuectl.settings import settings_markdown; print(settings_markdown())'\n" + table
    )


def test_config_has_one_field_per_setting_with_its_default() -> None:
    assert [f.name for f in fields(Config)] == list(SETTINGS)
    assert Config().as_dict() == {name: s.default for name, s in SETTINGS.items()}
    assert Config.from_stored({}) == Config()
    assert ALL_KEYS is SETTINGS
    assert set(KEYS) == {name for name, s in SETTINGS.items() if not s.choices}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_default_is_of_its_type_and_in_its_range(name: str) -> None:
    s = SETTINGS[name]
    assert type(s.default) is s.kind
    if s.choices:
        assert s.default in s.choices
    else:
        assert s.low <= s.default <= s.high
        assert s.parse(num_text(s.low)) == s.low and s.parse(num_text(s.high)) == s.high
        with pytest.raises(InvalidInput, match="must be between"):
            s.parse(str(s.high * 2 + 1))


@pytest.mark.parametrize("field", sorted(JOB_OPTIONS))
def test_a_job_field_takes_its_range_from_the_table(field: str) -> None:
    option = JOB_OPTIONS[field]
    low, high = option.low, option.high
    for ok in (low, high):
        rules.check_job({"command": "true", field: ok}, 3, 60.0, NOW)
    for bad in (low - 1, high + 1):
        with pytest.raises(InvalidInput, match=f"^{field} must be between"):
            rules.check_job({"command": "true", field: bad}, 3, 60.0, NOW)


def test_a_jobs_defaults_are_the_queues_settings() -> None:
    stored = {"max_retries": "7", "job_timeout": "12.5"}
    ((_, _, max_retries, priority, timeout, run_at, *_),) = rules.check_jobs(
        [{"command": "true"}], stored, NOW, numbered=False
    )
    assert (max_retries, priority, timeout, run_at) == (7, JOB_OPTIONS["priority"].default, 12.5, NOW)
    ((_, _, max_retries, _, timeout, *_),) = rules.check_jobs([{"command": "true"}], {}, NOW, numbered=False)
    assert (max_retries, timeout) == (Config().max_retries, Config().job_timeout)


def test_check_jobs_numbers_a_batchs_errors_and_refuses_none() -> None:
    good, bad = {"command": "true"}, {"command": ""}
    with pytest.raises(InvalidInput, match=r"^command must not be empty$"):
        rules.check_jobs([bad], {}, NOW, numbered=False)
    with pytest.raises(InvalidInput, match=r"^job 2: command must not be empty$"):
        rules.check_jobs([good, bad], {}, NOW, numbered=True)
    with pytest.raises(InvalidInput, match=r"^no jobs given$"):
        rules.check_jobs([], {}, NOW, numbered=True)
