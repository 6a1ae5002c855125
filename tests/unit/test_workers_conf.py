"""conf/workers.conf: one supervisord program per worker asked for, copied from the
home conf's [queuectl:worker] template; homes with the old fixed pool."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path

import pytest

from queuectl import workers_conf
from queuectl.errors import InvalidInput
from queuectl.supervisor import default_conf_dir, prepare_home
from tests.helpers import QHome


def _sections(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read(path)
    return parser


def test_one_program_per_worker_each_a_copy_of_the_template(qhome: QHome) -> None:
    from queuectl.config import resolve_paths

    conf = prepare_home(resolve_paths(str(qhome.path)))
    path = workers_conf.write(conf, 3)
    parsed = _sections(path)
    assert parsed.sections() == ["program:workers_00", "program:workers_01", "program:workers_02"]
    template = dict(workers_conf.template(conf))
    for section in parsed.sections():
        assert dict(parsed.items(section)) == template
    # supervisord expands these per program: each worker its own log.
    assert template["stdout_logfile"] == "%(here)s/../logs/%(program_name)s.log"
    assert template["autostart"] == "true"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # None asked for: no program at all (supervisorctl then lists only the monitor).
    assert _sections(workers_conf.write(conf, 0)).sections() == []


def test_counts_out_of_range_are_refused_and_the_file_kept(qhome: QHome) -> None:
    from queuectl.config import resolve_paths

    conf = prepare_home(resolve_paths(str(qhome.path)))
    path = workers_conf.write(conf, 2)
    before = path.read_bytes()
    for bad in (-1, workers_conf.MAX_WORKERS + 1):
        with pytest.raises(InvalidInput, match="--count must be between 1 and 100"):
            workers_conf.write(conf, bad)
    assert path.read_bytes() == before
    r = qhome.run("worker", "start", "--detach", "--count", "101")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert not (qhome.path / "run" / "sv.sock").exists()


def test_a_home_with_the_old_fixed_pool_edited_is_refused_with_what_to_change(qhome: QHome) -> None:
    (qhome.path / "conf").mkdir(mode=0o700)
    old = qhome.path / "conf" / "supervisord.conf"
    old.write_text("[supervisord]\n\n[program:workers]\ncommand=queuectl worker run\nnumprocs=4\n")
    old.chmod(0o600)
    r = qhome.run("worker", "start", "--detach", "--count", "1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "[queuectl:worker]" in r.stderr
    assert "numprocs=4" in old.read_text()  # left as it was
    assert not (qhome.path / "run" / "sv.sock").exists()
    # Stopping needs no template: a supervisord still running the old pool can be stopped.
    assert qhome.run("worker", "stop").returncode == 0
    assert _sections(qhome.path / "conf" / "workers.conf").sections() == []


def test_the_shipped_default_is_not_a_legacy_one() -> None:
    import hashlib

    data = (default_conf_dir() / "supervisord.conf").read_bytes()
    assert hashlib.sha256(data).hexdigest() not in workers_conf.LEGACY_DEFAULTS
    assert b"[program:workers]" not in data
    assert b"files = workers.conf" in data
