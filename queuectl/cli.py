"""The `queuectl` entry point: run one command, and turn every error into one line on
stderr and an exit code (see `queuectl --help` and errors.EXIT_CODES).

The commands are click commands in commands.py.  This module imports neither click
nor the library when it is imported (the `queuectl` script imports it first thing),
because of the fast path below.

Why a fast path for `enqueue` (issue 6: one `queuectl enqueue CMD` call should take
under 2x the time of `python -c pass`): importing click and building the command
tree costs several times a bare interpreter start, more than everything else an
enqueue does.  So main() reads the common forms itself: the group options `--home`
and `--db`, then `enqueue`, a command (or JSON object) and enqueue's own options, each
at most once, or `-` (JSON lines on stdin) and those options.  Anything else goes to
click unchanged: `--help`, `--`,
unknown or repeated options, a missing value, a number click would reject, a --home
click would reject, shell completion, a stdout that click.echo would re-encode.

Importing the library (the models' dataclasses and enums, config, typing, pathlib)
cost more again than click, so on a SQLite queue at the current schema the fast path
does what Queue.open + Queue.enqueue (or enqueue_many) do with rules.py and
store/sqlite_conn.py alone:
the same rules (api.py, models.py and config.py call rules.py), the same statements
(SQLiteStore calls sqlite_conn.py), in the same order; PostgreSQL, and a database to
create, migrate or refuse, go through Queue.  Errors go through the same handlers.
tests/unit/test_cli_fast.py runs both paths on the same inputs and compares stdout,
stderr, exit codes and the stored rows, and checks which modules each loaded.

`worker run [--burst] [--poll-interval S]`, the command supervisord starts, has a
fast path too (parse_fast_worker_run): a worker that never imports click lives with
less memory.  It runs the library's worker exactly as the click command does
(run_worker, which both call).  So has `status [--json]` (parse_fast_status): it
uses the library, not click, and prints what status_report() renders for both.
"""

from __future__ import annotations

import os
import sys

# Not `from typing import TYPE_CHECKING`: typing costs milliseconds to import, and
# mypy treats any constant of this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, NoReturn

    from queuectl.api import Queue
    from queuectl.config import Paths


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    from queuectl.errors import QueuectlError

    try:
        rv = _fast_main(args)
    except QueuectlError as exc:
        fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        # `queuectl list | head`: the reader left; that is not an error.
        with _devnull_stdout():
            pass
        sys.exit(0)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:  # never a traceback for a user; QUEUECTL_DEBUG shows it
        if os.environ.get("QUEUECTL_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc}", 1)
    sys.exit(rv if isinstance(rv, int) else 0)


def _fast_main(args: list[str]) -> Any:
    """Run a form a fast path takes, or hand the call to click."""
    fast = parse_fast_enqueue(args)
    if fast is not None:
        return _fast_enqueue(*fast)
    work = parse_fast_worker_run(args)
    if work is not None:
        return _fast_worker_run(*work)
    status = parse_fast_status(args)
    if status is not None:
        return _fast_status(*status)
    return _click_main(args)


def _click_main(args: list[str]) -> Any:
    import click

    from queuectl.commands import cli

    try:
        return cli.main(args=args, prog_name="queuectl", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        fail(exc.format_message().replace("\n", " ") + hint, 2)
    except click.Abort:
        fail("aborted", 130)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code or 1)


def fail(message: str, code: int) -> NoReturn:
    import click  # errors need not be fast; click.echo picks the stream's encoding

    click.echo(f"queuectl: error: {one_line(message)}", err=True)
    sys.exit(code)


def one_line(text: str) -> str:
    """Escape what would break an error message over lines or hide in a terminal
    (newlines, control and separator characters that users' input can carry)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class _devnull_stdout:
    def __enter__(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())

    def __exit__(self, *exc: object) -> None:
        return None


# --- enqueue, shared by the click command and the fast path ---------------------------


def enqueue_one(open_queue: Callable[[], Queue], job: Sequence[str], options: Mapping[str, Any]) -> str:
    """`queuectl enqueue JOB... [options]` for one job: the words joined into a command
    (or a JSON object), the options given (not None) over its fields.  The job text
    is parsed before the queue is opened, so a malformed job is reported first."""
    return open_queue().enqueue(job_spec(job, options))


def job_spec(job: Sequence[str], options: Mapping[str, Any]) -> dict[str, Any]:
    """The job object of `queuectl enqueue JOB... [options]`."""
    from queuectl.rules import parse_job_text

    return {**parse_job_text(" ".join(job)), **job_overrides(options)}


def stdin_specs(stream: Any, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The job objects of `queuectl enqueue - [options]`: stdin's JSON lines, the
    options given over their fields.  Read before the queue is opened, so bad input
    is reported first."""
    from queuectl.errors import InvalidInput
    from queuectl.rules import read_json_lines

    specs = read_json_lines(stream)
    if options.get("job_id") is not None and len(specs) > 1:
        raise InvalidInput("--id cannot be used with more than one job")
    overrides = job_overrides(options)
    return [{**s, **overrides} for s in specs] if overrides else specs


def job_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """enqueue's options as job fields: those given, under their field names."""
    return {ENQUEUE_FIELDS[k]: v for k, v in options.items() if v is not None}


#: enqueue's options: flag -> (click parameter name, job field, type).  The click
#: command in commands.py declares the same options; tests/unit/test_cli_fast.py
#: checks that the two agree.
ENQUEUE_OPTIONS: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "--id": ("job_id", "id", str),
    "--max-retries": ("max_retries", "max_retries", int),
    "--priority": ("priority", "priority", int),
    "--delay": ("delay", "delay", float),
    "--run-at": ("run_at", "run_at", str),
    "--timeout": ("timeout", "timeout", float),
}
ENQUEUE_FIELDS = {param: field for param, field, _ in ENQUEUE_OPTIONS.values()}
#: The group's options the fast path reads: flag -> click parameter name.
GROUP_OPTIONS = {"--home": "home", "--db": "db"}
#: click's shell completion runs when this is set (click.Command.main).
COMPLETE_VAR = "_QUEUECTL_COMPLETE"


def parse_fast_enqueue(args: Sequence[str]) -> tuple[dict[str, str], list[str], dict[str, Any]] | None:
    """(group options, job words, enqueue options) for the forms the fast path takes,
    with values converted as click converts them; None hands the call to click."""
    if os.environ.get(COMPLETE_VAR):
        return None
    group: dict[str, str] = {}
    job: list[str] = []
    i = _read_options(args, 0, GROUP_OPTIONS, group, None)
    if i is None or i >= len(args) or args[i] != "enqueue":
        return None
    raw: dict[str, str] = {}
    enqueue_flags = {flag: spec[0] for flag, spec in ENQUEUE_OPTIONS.items()}
    if _read_options(args, i + 1, enqueue_flags, raw, job) is None or not job:
        return None
    if not _home_as_click_takes_it(group.get("home")):
        return None
    options: dict[str, Any] = {}
    for param, _, kind in ENQUEUE_OPTIONS.values():
        if param in raw:
            try:
                options[param] = kind(raw[param])  # click.INT and click.FLOAT do just this
            except ValueError:
                return None  # click words the error
    if sys.stdout is None or _ascii_stream(sys.stdout):
        return None  # click.echo prints nothing, or re-encodes the output as UTF-8
    return group, job, options


def _read_options(
    args: Sequence[str], i: int, known: Mapping[str, str], into: dict[str, str], words: list[str] | None
) -> int | None:
    """Read options (each once) from args[i:] into `into`, and other words into
    `words` (None: stop at the first other word); the index where it stopped, or None
    for anything the fast path leaves to click."""
    while i < len(args):
        if args[i] == "-" or not args[i].startswith("-"):  # "--" is click's business
            if words is None:
                return i
            words.append(args[i])
            i += 1
            continue
        got = _option(args, i, known)
        if got is None or got[0] in into:
            return None
        into[got[0]], i = got[1], got[2]
    return i


def _ascii_stream(stream: Any) -> bool:
    """click.echo writes to stdout as it is unless its encoding is ASCII (then it
    writes UTF-8): the only case where a plain write would print other bytes."""
    import codecs

    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "ascii"
    except LookupError:
        return False


def _option(args: Sequence[str], i: int, known: Mapping[str, str]) -> tuple[str, str, int] | None:
    """The option at args[i] as click's parser reads it: (parameter, value, next i)."""
    flag, eq, value = args[i].partition("=")
    if flag not in known:
        return None
    if eq:
        return known[flag], value, i + 1
    if i + 1 >= len(args):
        return None  # click: "Option ... requires an argument."
    return known[flag], args[i + 1], i + 2


def _home_as_click_takes_it(home: str | None) -> bool:
    """click.Path(file_okay=False) passes a --home that does not exist, or exists, is
    not a regular file and is readable; it rejects the rest in its own words."""
    if home is None:
        return True
    import stat

    try:
        st = os.stat(home)
    except OSError:
        return True
    return not stat.S_ISREG(st.st_mode) and os.access(home, os.R_OK)


def _fast_enqueue(group: dict[str, str], job: list[str], options: dict[str, Any]) -> int:
    """What `cli` and its `enqueue` command do, without click: one job, or the JSON
    lines on stdin for `-`."""
    try:
        if job == ["-"]:
            ids = _enqueue_stdin_quickly(group.get("home"), group.get("db"), options)
            _write_out("\n".join(ids) + "\n")
        else:
            _write_out(_enqueue_quickly(group.get("home"), group.get("db"), job, options) + "\n")
    except (EOFError, KeyboardInterrupt):
        _aborted()
    return 0


def _write_out(text: str) -> None:
    """Write text to stdout as click.echo writes it (see _ascii_stream), and end
    the command as click.Command.main does when stdout is closed: exit code 1."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        import errno

        if exc.errno != errno.EPIPE:
            raise
        sys.stdout = _PacifyFlush(sys.stdout)
        sys.stderr = _PacifyFlush(sys.stderr)
        sys.exit(1)


def _aborted() -> NoReturn:
    """As click.Command.main on EOF or ^C: a blank line closes the terminal's ^C,
    then Abort."""
    sys.stderr.write("\n")
    sys.stderr.flush()
    fail("aborted", 130)


def _enqueue_quickly(home: str | None, db: str | None, job: list[str], options: dict[str, Any]) -> str:
    """Queue.open + Queue.enqueue for one job, in their order (the job text parsed
    first, the home checked, the store opened, its defaults read, the job validated
    and inserted).  A SQLite queue at the current schema (the common case) is done
    by store/sqlite_conn.py with rules.py, without importing the library (the models,
    config, dataclasses, typing: most of the time a call took, issue 6); PostgreSQL,
    and a database to create, migrate or refuse, through the library."""
    from queuectl import rules

    home_dir, db_url = rules.resolve_locations(home, db)
    if rules.is_postgres_url(db_url):
        return _enqueue_with_library(home, db, job_spec(job, options))
    spec = job_spec(job, options)
    rules.open_home(home_dir, db_url)
    from queuectl.store.sqlite.insert import insert_new

    ids = insert_new(db_url, lambda stored, now: [rules.check_job(spec, *rules.job_defaults(stored), now)])
    return _enqueue_with_library(home, db, spec) if ids is None else ids[0]


def _enqueue_stdin_quickly(home: str | None, db: str | None, options: dict[str, Any]) -> list[str]:
    """The click command's `enqueue -` (stdin_specs, then Queue.open and
    Queue.enqueue_many), in its order; on a SQLite queue at the current schema by
    store/sqlite_conn.py with rules.py, as _enqueue_quickly does one job.  Without
    click and the library a bulk enqueue starts ~0.1 s sooner and skips building a
    NewJob per job (issue 6: bulk enqueue at 50,000 jobs/s; bench/enqueue.py)."""
    from queuectl import rules

    home_dir, db_url = rules.resolve_locations(home, db)
    specs = stdin_specs(sys.stdin, options)
    ids = None
    if not rules.is_postgres_url(db_url):
        rules.open_home(home_dir, db_url)
        from queuectl.store.sqlite.insert import insert_new

        ids = insert_new(db_url, lambda stored, now: rules.check_jobs(specs, stored, now, numbered=True))
    if ids is None:
        from queuectl.api import Queue
        from queuectl.config import resolve_paths

        queue = Queue.open(resolve_paths(home, db))
        try:
            ids = queue.enqueue_many(specs)
        finally:
            queue.close()
    return ids


def _enqueue_with_library(home: str | None, db: str | None, spec: dict[str, Any]) -> str:
    from queuectl.api import Queue
    from queuectl.config import resolve_paths

    queue = Queue.open(resolve_paths(home, db))
    try:
        return queue.enqueue(spec)
    finally:
        queue.close()


# --- worker run, shared by the click command and the fast path ------------------------

#: `worker run`'s options: flag -> click parameter name.  The click command in
#: cli_workers.py declares the same; tests/unit/test_cli_fast.py checks that they agree.
WORKER_RUN_OPTIONS = {"--poll-interval": "poll_interval"}
#: click.FloatRange of --poll-interval (cli_workers.py).
POLL_INTERVAL_RANGE = (0.005, 60.0)


def parse_fast_worker_run(args: Sequence[str]) -> tuple[dict[str, str], bool, float | None] | None:
    """(group options, --burst, --poll-interval) for `[--home H] [--db D] worker run
    [--burst] [--poll-interval S]`, each at most once and valid as click takes it;
    None hands the call to click.

    Why: `worker run` is what supervisord starts for every worker.  Without click a
    worker lives with about 1.2 MB less memory and skips click's import (~25 ms) at
    every start (issue 6: worker RSS; bench/memory.py)."""
    if os.environ.get(COMPLETE_VAR):
        return None
    group: dict[str, str] = {}
    i = _read_options(args, 0, GROUP_OPTIONS, group, None)
    if i is None or list(args[i : i + 2]) != ["worker", "run"]:
        return None
    rest = list(args[i + 2 :])
    if rest.count("--burst") > 1:  # twice: click's business
        return None
    burst = "--burst" in rest
    if burst:
        rest.remove("--burst")
    raw: dict[str, str] = {}
    words: list[str] = []
    if _read_options(rest, 0, WORKER_RUN_OPTIONS, raw, words) is None or words:
        return None
    if not _home_as_click_takes_it(group.get("home")):
        return None
    poll: float | None = None
    if "poll_interval" in raw:
        try:
            poll = float(raw["poll_interval"])
        except ValueError:
            return None
        low, high = POLL_INTERVAL_RANGE
        if not low <= poll <= high:  # NaN too: click words the error, or takes it
            return None
    return group, burst, poll


def _fast_worker_run(group: dict[str, str], burst: bool, poll_interval: float | None) -> int:
    """What `cli` and its `worker run` command do, without click."""
    from queuectl.api import Queue
    from queuectl.config import resolve_paths

    try:
        paths = resolve_paths(group.get("home"), group.get("db"))
        queue = Queue.open(paths)
    except (EOFError, KeyboardInterrupt):  # before the worker's own handlers
        _aborted()
    try:
        return run_worker(queue, paths, burst, poll_interval)
    finally:
        queue.close()


def run_worker(queue: Queue, paths: Paths, burst: bool, poll_interval: float | None) -> int:
    """One worker in the foreground on `queue` until it is told to stop (or, with
    burst, until nothing is left); its exit code."""
    from queuectl import contain, home, logs, procs
    from queuectl.signals import StopSignals
    from queuectl.worker import Worker

    home.secure(str(paths.home), writers=True)  # it writes run/ (and supervisord its log)
    logs.install(paths.logs / "workers.direct.log")
    signals = StopSignals()
    signals.install()
    w = Worker(
        queue.store,
        queue=procs.queue_key(paths.db_url),
        signals=signals,
        watch_parent=bool(os.environ.get("SUPERVISOR_ENABLED")),
        logs_dir=paths.logs,
        run_dir=paths.run,
        overrides={"poll_interval": poll_interval} if poll_interval is not None else None,
        home=home.identity(str(paths.home)),
    )
    # This process runs nothing but its jobs: it may contain them (contain.py).
    contain.install(contain.Containment.start(w.id, cgroup=w.config.job_cgroup == "auto"))
    try:
        return w.run(burst=burst)
    finally:
        contain.uninstall()


# --- status, shared by the click command and the fast path -----------------------------


def parse_fast_status(args: Sequence[str]) -> tuple[dict[str, str], bool] | None:
    """(group options, --json) for `[--home H] [--db D] status [--json]`, each at most
    once and valid as click takes it; None hands the call to click.

    Why: at 1,000,000 jobs the counts take a millisecond (schema v7), and importing
    click and building its command tree took a third of the command's time (issue 6:
    `queuectl status` under 150 ms at 1M jobs; bench/scale.py)."""
    if os.environ.get(COMPLETE_VAR):
        return None
    group: dict[str, str] = {}
    i = _read_options(args, 0, GROUP_OPTIONS, group, None)
    if i is None or i >= len(args) or args[i] != "status":
        return None
    rest = list(args[i + 1 :])
    if rest not in ([], ["--json"]) or not _home_as_click_takes_it(group.get("home")):
        return None
    if sys.stdout is None or _ascii_stream(sys.stdout) or sys.stderr is None or _ascii_stream(sys.stderr):
        return None  # click.echo prints nothing, or re-encodes the output as UTF-8
    return group, bool(rest)


def _fast_status(group: dict[str, str], as_json: bool) -> int:
    """What `cli` and its `status` command do, without click."""
    from queuectl.api import Queue
    from queuectl.config import resolve_paths

    try:
        queue = Queue.open(resolve_paths(group.get("home"), group.get("db")))
        try:
            counts = queue.status()
        finally:
            queue.close()
        out, warning = status_report(counts, as_json)
        _write_out(out)
        if warning is not None:
            sys.stderr.write(warning + "\n")
            sys.stderr.flush()
    except (EOFError, KeyboardInterrupt):
        _aborted()
    return 0


def status_report(counts: Mapping[str, Any], as_json: bool) -> tuple[str, str | None]:
    """`queuectl status`'s output for Queue.status() counts: (stdout text, a warning
    for stderr or None)."""
    if as_json:
        import json

        return json.dumps(counts, ensure_ascii=False) + "\n", None  # as emit_json
    lines = [f"{key:<11} {counts[key]}" for key in STATUS_KEYS]
    rec = counts["recovery"]
    if rec["last_pass_at"] is None:
        lines.append("recovery    no recovery pass has run yet (no monitor or worker has started)")
    else:
        by = f"{rec['last_pass_by']} ({rec['last_pass_kind']})"
        lines.append(f"recovery    last pass {rec['age_s']:.1f}s ago by {by}")
    warning = None
    if rec["overdue"] and (counts["processing"] or counts["workers"]):
        warning = "warning: no recovery pass for over 3 monitor intervals: is a monitor or worker running?"
    return "".join(line + "\n" for line in lines), warning


#: The lines of `queuectl status`, in order, before the recovery line.
STATUS_KEYS = ("pending", "processing", "completed", "failed", "dead", "total", "workers")


class _PacifyFlush:
    """A stream whose flush ignores a broken pipe (click's _PacifyFlushWrapper): the
    interpreter's last flush at exit must not print a traceback."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        import errno

        try:
            self.wrapped.flush()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def __getattr__(name: str) -> Any:
    # `from queuectl.cli import cli` (and the other click names) still works: they
    # moved to commands.py, which is imported only when asked for.
    if name in ("cli", "Ctx", "pass_ctx", "emit_json", "json_option", "table"):
        from queuectl import commands

        return getattr(commands, name)
    raise AttributeError(name)
