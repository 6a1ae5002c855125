"""The pool's queues (served.py): what `worker start --queue` leaves for the supervised
`worker run`s to read."""

from __future__ import annotations

from pathlib import Path

import pytest

from queuectl import served
from queuectl.errors import InvalidInput


def test_saved_queues_are_read_back_and_none_means_every_queue(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert served.load(run) is None
    served.save(run, ("a", "b"))
    assert served.load(run) == ("a", "b")
    assert (run / "workers.queues").stat().st_mode & 0o777 == 0o600
    served.save(run, None)
    assert served.load(run) is None


@pytest.mark.parametrize("text", ["not json", "[]", '{"a": 1}', "[1]"])
def test_an_unreadable_list_is_an_error_never_every_queue(tmp_path: Path, text: str) -> None:
    (tmp_path / "workers.queues").write_text(text)
    with pytest.raises(InvalidInput):
        served.load(tmp_path)
