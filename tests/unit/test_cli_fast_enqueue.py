"""The pre-parser of `queuectl enqueue` (queuectl/cli/fast_enqueue.py) against the
click command, and the lean SQLite insert both make against the library (Queue).

Every case runs as a real process on copies of the same queue: as `queuectl` runs
(the pre-parser where it applies), with the pre-parser switched off (click for
everything), and, where the insert is compared, with the lean insert switched off too
(the library); stdout, stderr, the exit code and every stored row must be the same.
The clock is frozen in every process, so the stored times agree; a generated id is
the only thing that differs, and is compared by shape.  Each run also reports
whether click's command tree and the library were loaded, so the cases prove which
path they took.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import click
import pytest

from queuectl import rules
from queuectl.cli import fast_enqueue
from queuectl.cli.enqueue import CLICK_ONLY
from queuectl.cli.enqueue import enqueue as click_enqueue
from queuectl.cli.enqueue_options import OPTIONS
from queuectl.cli.root import cli as click_group
from queuectl.store.sqlite import APPLICATION_ID, MIGRATIONS
from tests.helpers import T0, QHome, clean_env, dump_db

#: Runs queuectl's main() in a child process: argv[1] is "fast" (as the script runs),
#: "click" (pre-parser off) or "library" (pre-parser and lean insert off), argv[2] a
#: file that gets the modules loaded at exit.
RUNNER = f"""
import atexit, sys, time
time.time = lambda: {T0!r}  # before queuectl.store.sqlite binds it as its clock
mode, report = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
from queuectl import cli
from queuectl.cli import enqueue_options, fast_enqueue
if mode in ("click", "library"):
    fast_enqueue.parse = lambda args: None
if mode == "library":
    enqueue_options._lean = lambda *args: None
def _report():
    with open(report, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
atexit.register(_report)
cli.main()
"""

GENERATED_ID = re.compile(r"^[0-9a-z]{16}$")


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[bytes], modules: set[str], db: Path) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.modules = modules
        # Each path runs in a copy of the home of its own, which a job's cwd names.
        self.home = str(db.parent.parent)
        self.dump = _same_home(dump_db(db), self.home)

    @property
    def used_library(self) -> bool:
        """The library (Queue, the models, SQLiteStore) was loaded: not the lean path."""
        return "queuectl.api" in self.modules

    @property
    def used_click(self) -> bool:
        """The click command tree was loaded (an error alone loads click to print)."""
        return "queuectl.cli.root" in self.modules

    def comparable(self, generated: bool) -> tuple[Any, ...]:
        """What must be equal between the two paths; a generated id is replaced by
        <new> everywhere, once its shape has been checked."""
        out, dump = self.stdout, repr(self.dump)
        new_id = out.decode(errors="replace").strip()
        if generated and self.code == 0 and GENERATED_ID.match(new_id):
            out = b"<new>\n"
            dump = dump.replace(repr(new_id), "'<new>'")
        return (self.code, out, self.stderr, dump)


def _same_home(dump: Any, home: str) -> Any:
    """The dump with `home` as <home> in every text value."""
    if isinstance(dump, dict):
        return {k: _same_home(v, home) for k, v in dump.items()}
    if isinstance(dump, list | tuple):
        return type(dump)(_same_home(v, home) for v in dump)
    return dump.replace(home, "<home>") if isinstance(dump, str) else dump


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A queue with a seeded job (id `dup`) and a non-default setting."""
    path = tmp_path_factory.mktemp("tpl") / "home"
    path.mkdir()
    h = QHome(path)
    h.enqueue('{"id": "dup", "command": "echo seeded"}')
    h.configure(max_retries=2, job_timeout=7)
    assert sorted(os.listdir(path / "db")) == ["queue.db"]
    return path


def run(
    mode: str,
    home: Path,
    args: Sequence[str | bytes],
    tmp: Path,
    **popen: Any,
) -> Run:
    report = tmp / f"modules-{mode}"
    report.unlink(missing_ok=True)
    argv: list[str | bytes] = [sys.executable, "-c", RUNNER, mode, str(report), "--home", str(home), *args]
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("cwd", home if home.is_dir() else tmp)  # a relative --db lands there
    if "input" not in popen:
        popen["stdin"] = subprocess.DEVNULL
    proc = subprocess.run(
        argv,
        env=clean_env(),
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
        **popen,
    )
    modules = set(report.read_text().split("\n")) if report.exists() else set()
    return Run(proc, modules, home / "db" / "queue.db")


def both(template: Path, tmp_path: Path, args: Sequence[str | bytes], **popen: Any) -> tuple[Run, Run]:
    homes = []
    for mode in ("fast", "click"):
        home = tmp_path / mode
        shutil.copytree(template, home)
        homes.append(home)
    return run("fast", homes[0], args, tmp_path, **popen), run("click", homes[1], args, tmp_path, **popen)


def library(template: Path, tmp_path: Path, args: Sequence[str | bytes], **popen: Any) -> Run:
    """The same call through the library (Queue) instead of the lean insert."""
    home = tmp_path / "library"
    shutil.copytree(template, home)
    lib = run("library", home, args, tmp_path, **popen)
    # Through the library, or refused before any queue was opened (the job text is
    # parsed first): never through the lean insert.
    assert lib.used_library or not any(m.startswith("queuectl.store") for m in lib.modules)
    return lib


# --- the forms the pre-parser takes ----------------------------------------------------

FAST_OK: list[tuple[list[str], bool]] = [
    # (arguments after --home HOME, whether the id is generated)
    (["enqueue", "true"], True),
    (["enqueue", "echo", "hi", "there"], True),
    (
        ["enqueue", "echo hi", "--max-retries", "3", "--priority", "5", "--timeout", "2.5", "--id", "j1"],
        False,
    ),
    (["enqueue", "--priority=-7", "--id=j2", "sleep 1"], False),
    (["enqueue", "--priority", "-7", "true", "--delay", "30"], True),
    (["enqueue", '{"id":"j3","command":"sleep 2","max_retries":3}'], False),
    (["enqueue", ' {"command": "x", "priority": 1} ', "--priority", "9", "--id", "j4"], False),
    (["enqueue", '{"command": "true", "state": "pending", "attempts": 0}'], True),
    (["enqueue", "true", "--run-at", "2030-01-01T00:00:00Z", "--id", "j5"], False),
    (["enqueue", "true", "--run-at", "2030-01-01 12:00"], True),
    (["enqueue", "echo é ✓", "--id", "jé"], False),
    (["enqueue", '{"id": "j\\u00e9", "command": "echo \\u2713"}'], False),
    (["enqueue", "[1, 2]"], True),  # not an object: a command
    (["enqueue", "true", "--priority", "1_000", "--max-retries", " 4 "], True),
    (["enqueue", "true", "--timeout", "1e2", "--delay", "0"], True),
    (["enqueue", "x" * 131_000], True),  # near the longest argument Linux passes
    (
        [
            "enqueue",
            "true",
            "--queue",
            "reports",
            "--cwd",
            "/tmp",
            "--env",
            "A=1",
            "--env=B=x=y",
            "--id",
            "j6",
        ],
        False,
    ),
    (["enqueue", "true", "--cwd", "sub/dir", "--unique-key", "k1", "--on-conflict", "error"], True),
    (["enqueue", "true", "--after", "dup", "--after=dup"], True),
    (["enqueue", '{"command": "x", "env": {"A": "1"}, "after": ["dup"], "queue": "q.1"}'], True),
]

FAST_ERRORS: list[list[str | bytes]] = [
    ["enqueue", ""],
    ["enqueue", "   "],
    ["enqueue", "{bad json"],
    ["enqueue", '{"command": 1}'],
    ["enqueue", '{"command": "x", "bogus": 1}'],
    ["enqueue", '{"command": "x", "priority": NaN}'],
    ["enqueue", '{"command": "x", "state": "dead"}'],
    ["enqueue", "true", "--id="],
    ["enqueue", "true", "--id", " x"],
    ["enqueue", "true", "--id", "dup"],  # exit 4: exists
    ["enqueue", '{"id": "dup", "command": "true"}'],
    ["enqueue", "true", "--priority", "99999999"],
    ["enqueue", "true", "--max-retries", "-1"],
    ["enqueue", "true", "--timeout", "nan"],
    ["enqueue", "true", "--timeout", "inf"],
    ["enqueue", "true", "--delay", "-1"],
    ["enqueue", "true", "--delay", "1", "--run-at", "2030-01-01"],
    ["enqueue", "true", "--run-at", "yesterday"],
    ["enqueue", b"echo \xff"],  # not UTF-8: a lone surrogate in argv
    ["enqueue", "x" * 70_000, "y" * 70_000],  # joined: longer than a command may be
    ["enqueue", "true", "--queue", "bad name"],
    ["enqueue", "true", "--env", "1A=x"],
    ["enqueue", "true", "--env", "QUEUECTL_JOB_ID=x"],
    ["enqueue", "true", "--env", "NOT_SET_ANYWHERE_QCTL"],
    ["enqueue", "true", "--after", "nope"],  # exit 3: no such parent
    ["enqueue", "true", "--id", "s", "--after", "s"],
    ["enqueue", "true", "--unique-key", ""],
    ["enqueue", '{"command": "x", "env": {"A": 1}}'],
    ["enqueue", '{"command": "x", "after": "dup"}'],
    ["enqueue", '{"command": "x", "cwd": "a\\u0000b"}'],
]


@pytest.mark.parametrize(("args", "generated"), FAST_OK, ids=lambda v: repr(v)[:60])
def test_pre_parser_enqueues_exactly_as_click(
    template: Path, tmp_path: Path, args: list[str], generated: bool
) -> None:
    fast, slow = both(template, tmp_path, args)
    assert not fast.used_click and slow.used_click
    assert not fast.used_library  # store/sqlite/insert.py and rules.py alone
    assert fast.code == 0, fast.stderr
    assert bool(GENERATED_ID.match(fast.stdout.decode().strip())) is generated
    assert fast.comparable(generated) == slow.comparable(generated)
    assert fast.comparable(generated) == library(template, tmp_path, args).comparable(generated)


@pytest.mark.parametrize("args", FAST_ERRORS, ids=lambda v: repr(v)[:60])
def test_pre_parser_rejects_exactly_as_click(template: Path, tmp_path: Path, args: list[str | bytes]) -> None:
    fast, slow = both(template, tmp_path, args)
    assert not fast.used_click and slow.used_click
    assert not fast.used_library
    assert fast.code in (2, 3, 4), fast.stderr
    assert fast.stdout == b""
    assert fast.comparable(False) == slow.comparable(False)
    assert fast.comparable(False) == library(template, tmp_path, args).comparable(False)
    assert fast.dump == dump_db(template / "db" / "queue.db")  # nothing changed


# --- what the pre-parser leaves to click -----------------------------------------------

CLICK_FORMS: list[list[str]] = [
    ["enqueue"],
    ["enqueue", "--help"],
    ["enqueue", "true", "-h"],
    ["enqueue", "true", "--priority"],
    ["enqueue", "true", "--priority", "x"],
    ["enqueue", "true", "--timeout", "soon"],
    ["enqueue", "true", "--id", "a", "--id", "b"],
    ["enqueue", "true", "--on-conflict", "maybe"],
    ["enqueue", "true", "--env"],
    ["enqueue", "true", "--nope"],
    ["enqueue", "-5"],
    ["enqueue", "--", "-x"],
    ["enqueue", "true", "--home", "/tmp"],
    ["--db", "x", "--db", "y", "enqueue", "true"],
    ["--version"],
    ["-V"],
    ["enqueue", "-", "--", "x"],
    ["--home", "/tmp", "--home", "/tmp", "enqueue", "true"],
]


@pytest.mark.parametrize("args", CLICK_FORMS, ids=lambda v: repr(v)[:60])
def test_other_forms_go_to_click(template: Path, tmp_path: Path, args: list[str]) -> None:
    fast, slow = both(template, tmp_path, args)
    assert fast.used_click
    assert fast.comparable(True) == slow.comparable(True)


def test_home_and_db_options(template: Path, tmp_path: Path) -> None:
    """--db, and a --home click would refuse (a file), or that does not exist."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    fast, slow = (
        run(mode, template, ["--db", str(tmp_path / f"{mode}.db"), "enqueue", "true", "--id", "d1"], tmp_path)
        for mode in ("fast", "click")
    )
    assert (fast.code, fast.stdout, fast.stderr) == (slow.code, slow.stdout, slow.stderr) == (0, b"d1\n", b"")
    assert dump_db(tmp_path / "fast.db") == dump_db(tmp_path / "click.db")
    assert not fast.used_click

    for home, code, via_click in ((a_file, 2, True), (tmp_path / "missing", 2, False)):
        outs = [run(mode, home, ["enqueue", "true"], tmp_path) for mode in ("fast", "click")]
        assert [o.code for o in outs] == [code, code]
        assert outs[0].stderr == outs[1].stderr and outs[0].stderr.startswith(b"queuectl: error: ")
        assert outs[0].used_click is via_click


def test_a_database_that_cannot_be_opened(template: Path, tmp_path: Path) -> None:
    home = tmp_path / "h"
    shutil.copytree(template, home)
    (home / "db" / "queue.db").write_bytes(b"not a database at all" * 100)
    outs = [run(mode, home, ["enqueue", "true"], tmp_path) for mode in ("fast", "click")]
    assert outs[0].code == outs[1].code == 5
    assert outs[0].stderr == outs[1].stderr
    assert not outs[0].used_click


def _homes(template: Path, tmp_path: Path, modes: Sequence[str] = ("fast", "click")) -> list[Path]:
    homes = []
    for mode in modes:
        shutil.copytree(template, tmp_path / mode)
        homes.append(tmp_path / mode)
    return homes


def _write_db(path: Path, steps: int, app_id: int = APPLICATION_ID, version: int | None = None) -> None:
    """A database with the first `steps` migrations and the seeded job."""
    path.unlink(missing_ok=True)
    conn = apsw.Connection(str(path))
    for step in MIGRATIONS[:steps]:
        conn.execute(step)
    conn.execute(
        "INSERT INTO jobs (id, command, state, max_retries, priority, timeout, created_at,"
        " updated_at, run_at, next_run_at) VALUES ('old', 'true', 'pending', 3, 0, 60, 1, 1, 1, 1)"
    )
    conn.execute(f"PRAGMA application_id={app_id}")
    conn.execute(f"PRAGMA user_version={steps if version is None else version}")
    conn.close()


#: Databases the lean insert must leave to the library: (migration steps, application
#: id, user_version, the exit code).
NOT_CURRENT = pytest.mark.parametrize(
    ("steps", "app_id", "version", "code"),
    [
        (1, APPLICATION_ID, None, 0),  # an old schema: migrated, then the job inserted
        (len(MIGRATIONS) - 1, APPLICATION_ID, None, 0),
        (len(MIGRATIONS), 0x1234, None, 5),  # someone else's database
        (len(MIGRATIONS), APPLICATION_ID, len(MIGRATIONS) + 1, 5),  # a newer queuectl's
    ],
)


@NOT_CURRENT
def test_a_database_not_at_this_schema_goes_through_the_library(
    template: Path, tmp_path: Path, steps: int, app_id: int, version: int | None, code: int
) -> None:
    homes = _homes(template, tmp_path)
    for home in homes:
        _write_db(home / "db" / "queue.db", steps, app_id, version)
    fast = run("fast", homes[0], ["enqueue", "true", "--id", "m1"], tmp_path)
    slow = run("click", homes[1], ["enqueue", "true", "--id", "m1"], tmp_path)
    assert fast.code == code, fast.stderr
    assert fast.stderr.replace(bytes(homes[0]), b"H") == slow.stderr.replace(bytes(homes[1]), b"H")
    assert (fast.code, fast.stdout, fast.dump) == (slow.code, slow.stdout, slow.dump)
    assert fast.used_library and not fast.used_click


@NOT_CURRENT
def test_a_bulk_enqueue_into_a_database_not_at_this_schema_goes_through_the_library(
    template: Path, tmp_path: Path, steps: int, app_id: int, version: int | None, code: int
) -> None:
    homes = _homes(template, tmp_path)
    for home in homes:
        _write_db(home / "db" / "queue.db", steps, app_id, version)
    data = b'{"id": "m1", "command": "true"}\n{"id": "m2", "command": "false"}\n'
    fast = run("fast", homes[0], ["enqueue", "-"], tmp_path, input=data)
    slow = run("click", homes[1], ["enqueue", "-"], tmp_path, input=data)
    assert fast.code == code, fast.stderr
    assert fast.stderr.replace(bytes(homes[0]), b"H") == slow.stderr.replace(bytes(homes[1]), b"H")
    assert (fast.code, fast.stdout, fast.dump) == (slow.code, slow.stdout, slow.dump)
    assert fast.used_library and not fast.used_click


@pytest.mark.parametrize("data", [b'{"id": "n1", "command": "true"}\n', b""])
def test_a_bulk_enqueue_creates_a_new_queue_as_click_does(
    template: Path, tmp_path: Path, data: bytes
) -> None:
    # Empty stdin too: the queue is created (as Queue.open creates it), then refused.
    homes = _homes(template, tmp_path)
    for home in homes:
        shutil.rmtree(home / "db")
    fast = run("fast", homes[0], ["enqueue", "-"], tmp_path, input=data)
    slow = run("click", homes[1], ["enqueue", "-"], tmp_path, input=data)
    assert fast.code == (0 if data else 2), fast.stderr
    assert (fast.code, fast.stdout, fast.stderr, fast.dump) == (
        slow.code,
        slow.stdout,
        slow.stderr,
        slow.dump,
    )
    assert (homes[0] / "db" / "queue.db").stat().st_mode & 0o777 == 0o600
    assert not fast.used_click


@pytest.mark.parametrize("remove", ["db", "dir"])
def test_a_new_queue_is_created_as_click_creates_it(template: Path, tmp_path: Path, remove: str) -> None:
    homes = _homes(template, tmp_path)
    for home in homes:
        if remove == "db":
            (home / "db" / "queue.db").unlink()
        else:
            shutil.rmtree(home / "db")
    fast = run("fast", homes[0], ["enqueue", "true", "--id", "n1"], tmp_path)
    slow = run("click", homes[1], ["enqueue", "true", "--id", "n1"], tmp_path)
    assert fast.code == 0, fast.stderr
    assert fast.comparable(False) == slow.comparable(False)
    assert (homes[0] / "db").stat().st_mode & 0o777 == (homes[1] / "db").stat().st_mode & 0o777
    assert (homes[0] / "db" / "queue.db").stat().st_mode & 0o777 == 0o600
    # the next call finds the schema current: the lean path
    again = run("fast", homes[0], ["enqueue", "true", "--id", "n2"], tmp_path)
    assert again.code == 0 and not again.used_library


@pytest.mark.parametrize(
    "stored", [{"max_retries": "7", "job_timeout": "1.5"}, {"max_retries": "x", "job_timeout": "1e9"}]
)
def test_stored_defaults_are_read_as_the_library_reads_them(
    template: Path, tmp_path: Path, stored: dict[str, str]
) -> None:
    """A valid stored value is a job's default; an invalid one gives the built-in default."""
    homes = _homes(template, tmp_path, ("fast", "click", "library"))
    for home in homes:
        conn = apsw.Connection(str(home / "db" / "queue.db"))
        conn.executemany("INSERT OR REPLACE INTO config (key, value) VALUES (?, ?)", list(stored.items()))
        conn.close()
    fast = run("fast", homes[0], ["enqueue", "true", "--id", "c1"], tmp_path)
    slow = run("click", homes[1], ["enqueue", "true", "--id", "c1"], tmp_path)
    assert fast.code == 0 and not fast.used_library
    assert fast.comparable(False) == slow.comparable(False)
    lib = run("library", homes[2], ["enqueue", "true", "--id", "c1"], tmp_path)
    assert lib.used_library and lib.comparable(False) == slow.comparable(False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "a",
        "a/b/",
        "./a//b/./c",
        "../x",
        "a/../b",
        "/",
        "//",
        "///",
        "//a/b",
        "/a/./b/",
        "~",
        "~/q/",
        "~x",
    ],
)
def test_paths_resolve_as_pathlib_resolves_them(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for home in ("/home/u", "/home/u/", "", "rel"):
        monkeypatch.setenv("HOME", home)
        try:
            want: str | type[Exception] = str(Path(text).expanduser().absolute())
        except RuntimeError:
            want = RuntimeError
        if want is RuntimeError:
            with pytest.raises(RuntimeError):
                rules.absolute(text)
        else:
            assert rules.absolute(text) == want, (text, home)


def test_a_closed_stdout(template: Path, tmp_path: Path) -> None:
    """The reader of stdout has gone (exit 1, the job is stored), or there is no
    stdout at all (exit 0): as click does it."""
    fast, slow = [], []
    for mode, into in (("fast", fast), ("click", slow)):
        home = tmp_path / mode
        shutil.copytree(template, home)
        r, w = os.pipe()
        os.close(r)  # before the child starts: its write of the id must fail
        try:
            into.append(run(mode, home, ["enqueue", "true", "--id", "p1"], tmp_path, stdout=w))
        finally:
            os.close(w)
        into.append(
            run(mode, home, ["enqueue", "true", "--id", "p2"], tmp_path, preexec_fn=lambda: os.close(1))
        )
    assert [r.code for r in fast] == [r.code for r in slow] == [1, 0]
    assert [r.stderr for r in fast] == [r.stderr for r in slow]
    assert [r.dump for r in fast] == [r.dump for r in slow]
    assert not fast[0].used_click and fast[1].used_click


def test_an_ascii_stdout_goes_to_click(template: Path, tmp_path: Path) -> None:
    """click.echo writes UTF-8 to a stdout configured as ASCII: the pre-parser leaves
    that to it, so a non-ASCII id prints the same bytes."""
    home = tmp_path / "h"
    shutil.copytree(template, home)
    env = {**clean_env(), "PYTHONIOENCODING": "ascii"}
    report = tmp_path / "mods"
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "fast", str(report), "--home", str(home), "enqueue", "x", "--id", "é"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "é\n".encode(), b"")
    assert "queuectl.cli.root" in report.read_text().split("\n")


# --- imports and the option table --------------------------------------------------------


def test_the_pre_parser_imports_only_what_it_needs(template: Path, tmp_path: Path) -> None:
    fast, _ = both(template, tmp_path, ["enqueue", "true"])
    assert fast.code == 0
    for heavy in (
        "click",
        "structlog",
        "psycopg",
        "json",
        "queuectl.cli.root",
        "queuectl.worker",
        "queuectl.api",
        "queuectl.models",
        "queuectl.config",
        "queuectl.store.sqlite.store",
        "datetime",
        "dataclasses",
        "typing",
        "enum",
        "pathlib",
        "contextlib",
        "re",
    ):
        assert heavy not in fast.modules, heavy


def test_importing_the_entry_point_is_light() -> None:
    code = (
        "import sys, queuectl.cli;"
        " print(sorted(m for m in sys.modules if m.startswith(('click', 'queuectl'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['queuectl', 'queuectl.cli']"


def test_the_click_command_is_built_from_the_declarations() -> None:
    from queuectl.cli.context import SECONDS
    from queuectl.cli.enqueue_options import seconds

    types = {click.INT: int, click.FLOAT: float, click.STRING: str, SECONDS: seconds}
    declared = [
        (
            p.opts,
            p.name,
            str if isinstance(p.type, click.Choice) else types[p.type],
            p.help,
            p.multiple,
            tuple(p.type.choices) if isinstance(p.type, click.Choice) else None,
        )
        for p in click_enqueue.params
        if isinstance(p, click.Option) and p.opts[0] != "--help" and p.opts[0] not in CLICK_ONLY
    ]
    assert declared == [([o.flag], o.param, o.kind, o.help, o.multiple, o.choices) for o in OPTIONS]
    # An option of the click command alone sends the command line to click.
    for flag in CLICK_ONLY:
        assert fast_enqueue.parse(["enqueue", flag, "true"]) is None
    group = {p.opts[0]: p.name for p in click_group.params if isinstance(p, click.Option)}
    for flag, param in fast_enqueue.GROUP_OPTIONS.items():
        assert group[flag] == param
    enqueue_args = [p for p in click_enqueue.params if isinstance(p, click.Argument)]
    assert [(a.name, a.nargs) for a in enqueue_args] == [("job", -1)]


# --- worker run and status (click only) ---------------------------------------------------


def test_worker_run_runs_a_due_job_and_exits(template: Path, tmp_path: Path) -> None:
    # The runner's clock stands at T0, before the template's job is due.
    due = '{"id": "due", "command": "echo ran", "run_at": "2000-01-01T00:00:00Z"}'
    home = tmp_path / "h"
    shutil.copytree(template, home)
    assert run("fast", home, ["enqueue", due], tmp_path).code == 0
    r = run("fast", home, ["worker", "run", "--burst", "--poll-interval", "0.05"], tmp_path)
    assert r.code == 0, r.stderr
    assert r.used_click
    states = {row[0]: row[2] for row in r.dump["jobs"]}
    assert states == {"dup": "pending", "due": "completed"}
    events = [json.loads(line)["event"] for line in r.stderr.decode().splitlines()]
    assert events[0] == "worker_started" and events[-1] == "worker_stopped"


WORKER_USAGE_ERRORS: list[list[str]] = [
    ["worker", "run", "--burst=1"],
    ["worker", "run", "--poll-interval", "0"],
    ["worker", "run", "--poll-interval", "61"],
    ["worker", "run", "--poll-interval", "soon"],
    ["worker", "run", "--poll-interval"],
    ["worker", "run", "extra"],
    ["worker", "run", "--nope"],
    ["worker", "--burst", "run"],
]


@pytest.mark.parametrize("args", WORKER_USAGE_ERRORS, ids=lambda v: repr(v)[:60])
def test_worker_run_usage_errors(template: Path, tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "h"
    shutil.copytree(template, home)
    r = run("fast", home, args, tmp_path)
    assert r.code == 2
    assert r.stdout == b"" and r.stderr.startswith(b"queuectl: error: ") and r.stderr.count(b"\n") == 1
    assert r.dump == dump_db(template / "db" / "queue.db")


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "run", "-h"],
        ["worker", "run", "--burst", "--burst"],
        ["worker", "run", "--burst", "--poll-interval", "1", "--poll-interval", "0.05"],
    ],
    ids=lambda v: repr(v)[:60],
)
def test_worker_run_forms_click_takes(template: Path, tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "h"
    shutil.copytree(template, home)
    assert run("fast", home, args, tmp_path).code == 0


def test_the_poll_interval_range_is_the_settings_table_s() -> None:
    from queuectl.config import ALL_KEYS

    worker_run = click_group.get_command(click.Context(click_group), "worker").commands["run"]  # type: ignore[union-attr]
    from queuectl.cli.context import Duration

    kind = next(p.type for p in worker_run.params if p.name == "poll_interval")
    assert isinstance(kind, Duration) and kind.ranged
    assert (kind.low, kind.high) == (ALL_KEYS["poll_interval"].low, ALL_KEYS["poll_interval"].high)


def test_status_prints_the_counts_and_the_recovery_pass(template: Path, tmp_path: Path) -> None:
    """On the template, then with a job processing under a live worker and no
    recovery pass yet (the overdue warning on stderr), then after a pass."""
    home = tmp_path / "h"
    shutil.copytree(template, home)
    conn = apsw.Connection(str(home / "db" / "queue.db"))
    claimed = (
        "UPDATE jobs SET state = 'processing', worker_id = 'w1', lease = 1, attempts = 1"
        " WHERE id = 'dup';"
        "INSERT INTO workers (id, host, pid, started_at, heartbeat_at)"
        f" VALUES ('w1', 'h', 1, {T0}, {T0 - 1})"
    )
    passed = (
        "INSERT INTO leases (name, holder, kind, acquired_at, expires_at, last_pass_at,"
        " last_pass_by, last_pass_kind)"
        f" VALUES ('monitor', 'm', 'monitor', {T0 - 9}, {T0 - 8}, {T0 - 8.5}, 'monitor:h:1', 'monitor')"
    )
    steps = [("template", None), ("processing", claimed), ("recovered", passed)]
    for name, change in steps:
        if change is not None:
            conn.execute(change)
        text, as_json = (
            run("fast", home, ["status"], tmp_path),
            run("fast", home, ["status", "--json"], tmp_path),
        )
        assert text.code == as_json.code == 0, (name, text.stderr)
        counts = json.loads(as_json.stdout)
        assert text.stdout.decode().startswith(
            "".join(f"{key:<11} {counts[key]}\n" for key in ("pending", "processing", "completed"))
        )
        assert as_json.stderr == b""
        if name == "template":
            assert b"recovery    no recovery pass has run yet" in text.stdout and text.stderr == b""
        if name == "processing":
            assert b"processing  1\n" in text.stdout and text.stderr.startswith(b"warning: ")
        if name == "recovered":
            assert b"recovery    last pass 8.5s ago by monitor:h:1 (monitor)\n" in text.stdout
            rec = counts["recovery"]
            assert (rec["last_pass_by"], rec["age_s"], rec["overdue"]) == ("monitor:h:1", 8.5, False)
    conn.close()


def test_status_on_a_closed_stdout(template: Path, tmp_path: Path) -> None:
    home = tmp_path / "h"
    shutil.copytree(template, home)
    r, w = os.pipe()
    os.close(r)
    try:
        got = run("fast", home, ["status"], tmp_path, stdout=w)
    finally:
        os.close(w)
    assert (got.code, got.stderr) == (1, b"")


# --- enqueue - (stdin) ----------------------------------------------------------------------

BULK_OK: list[tuple[bytes, list[str]]] = [
    # (stdin, options after `enqueue -`)
    (b'{"command": "true", "id": "b1"}\n{"command": "echo 2", "id": "b2", "priority": 3}\n', []),
    (b'\n  \n{"id": "b1", "command": "sleep 1", "max_retries": 0}\r\n\n{"id": "b2", "command": "x"}', []),
    (b'{"id": "b1", "command": "a"}\n{"id": "b2", "command": "b", "priority": 1}\n', ["--priority", "5"]),
    (b'{"command": "x"}\n', ["--id", "only", "--max-retries", "1", "--timeout=3"]),
    (b'{"id": "b1", "command": "echo \xe2\x80\xa8 \xc3\xa9"}\n', ["--delay", "60"]),
    (b'{"id": "b1", "command": "x", "run_at": "2030-01-01T00:00:00Z"}\n', []),
    (b'{"command": "true"}\n{"command": "false"}\n{"command": "true", "priority": 2}\n', []),  # ids generated
]

BULK_ERRORS: list[tuple[bytes, list[str]]] = [
    (b"", []),  # no jobs given
    (b"\n \n", []),
    (b'{"command": "true", "id": "b1"}\n{bad json\n', []),
    (b'{"command": "true"}\n[1, 2]\n', []),
    (b'{"command": "true"}\n"\xff"\n', []),  # not UTF-8
    (b'{"command": "a"}\n{"command": "b"}\n', ["--id", "x"]),
    (b'{"command": "a", "id": "dup"}\n', []),  # exit 4: exists
    (b'{"command": "a", "id": "b1"}\n{"command": "b", "id": "b1"}\n', []),  # exit 4: twice
    (b'{"command": "a", "id": "b1"}\n{"command": "", "id": "b2"}\n', []),
    (b'{"command": "a", "id": "b1"}\n{"command": "b", "bogus": 1}\n', []),
    (b'{"command": "a"}\n', ["--priority", "99999999"]),
]


def _bulk_comparable(r: Run) -> tuple[Any, ...]:
    """What must be equal between the two paths, with generated ids (of this run's
    stdout) replaced by <new N> in order, once their shape has been checked."""
    out, dump = r.stdout.decode(), repr(r.dump)
    for n, line in enumerate(out.splitlines()):
        if GENERATED_ID.match(line):
            out, dump = out.replace(line, f"<new {n}>"), dump.replace(repr(line), f"'<new {n}>'")
    return (r.code, out, r.stderr, dump)


@pytest.mark.parametrize(("data", "options"), BULK_OK, ids=lambda v: repr(v)[:60])
def test_bulk_enqueue_without_click_stores_exactly_what_click_stores(
    template: Path, tmp_path: Path, data: bytes, options: list[str]
) -> None:
    fast, slow = both(template, tmp_path, ["enqueue", "-", *options], input=data)
    assert not fast.used_click and slow.used_click
    assert not fast.used_library  # store/sqlite/insert.py and rules.py alone
    assert fast.code == 0, fast.stderr
    assert len(fast.stdout.splitlines()) == sum(1 for line in data.split(b"\n") if line.strip())
    assert _bulk_comparable(fast) == _bulk_comparable(slow)
    lib = library(template, tmp_path, ["enqueue", "-", *options], input=data)
    assert _bulk_comparable(fast) == _bulk_comparable(lib)


@pytest.mark.parametrize(("data", "options"), BULK_ERRORS, ids=lambda v: repr(v)[:60])
def test_bulk_enqueue_without_click_rejects_exactly_as_click(
    template: Path, tmp_path: Path, data: bytes, options: list[str]
) -> None:
    fast, slow = both(template, tmp_path, ["enqueue", "-", *options], input=data)
    assert not fast.used_click and slow.used_click
    assert fast.code in (2, 3, 4), fast.stderr
    assert fast.stdout == b"" and fast.stderr.count(b"\n") == 1
    assert (fast.code, fast.stderr) == (slow.code, slow.stderr)
    assert fast.dump == slow.dump == dump_db(template / "db" / "queue.db")  # nothing changed
    lib = library(template, tmp_path, ["enqueue", "-", *options], input=data)
    assert (lib.code, lib.stderr, lib.dump) == (fast.code, fast.stderr, fast.dump)


def test_a_large_bulk_enqueue_without_click_folds_the_counts(template: Path, tmp_path: Path) -> None:
    from queuectl.store.sqlite.insert import FOLD_MIN_ROWS

    n = FOLD_MIN_ROWS + 5
    data = "".join(f'{{"id": "b{i}", "command": "true"}}\n' for i in range(n)).encode()
    fast, slow = both(template, tmp_path, ["enqueue", "-"], input=data)
    assert fast.code == 0 and not fast.used_click
    assert fast.stdout == slow.stdout and fast.dump == slow.dump
    conn = apsw.Connection(str(tmp_path / "fast" / "db" / "queue.db"))
    try:
        snapshot = dict(conn.execute("SELECT state, n FROM job_counts").fetchall())
        upto, newest = conn.execute(
            "SELECT (SELECT seq FROM job_counts_upto), (SELECT max(seq) FROM job_events)"
        ).fetchall()[0]
    finally:
        conn.close()
    assert snapshot["pending"] == n + 1 and upto == newest  # the template's job, and these


def test_bulk_enqueue_from_a_closed_stdin(template: Path, tmp_path: Path) -> None:
    runs = []
    for mode in ("fast", "click"):
        home = tmp_path / mode
        shutil.copytree(template, home)
        runs.append(run(mode, home, ["enqueue", "-"], tmp_path, preexec_fn=lambda: os.close(0)))
    fast, slow = runs
    assert (
        (fast.code, fast.stderr)
        == (slow.code, slow.stderr)
        == (
            2,
            b"queuectl: error: stdin is closed: there are no jobs to read\n",
        )
    )
    assert fast.dump == slow.dump == dump_db(template / "db" / "queue.db")
    assert not fast.used_click
