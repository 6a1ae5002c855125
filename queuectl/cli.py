"""The command line: parse, call the library, render text or --json.

No SQL, no subprocesses, no sleeps here.  Every error reaches the user as one line
on stderr and an exit code (see `queuectl --help` and errors.EXIT_CODES).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import click

from queuectl import __version__
from queuectl.config import Paths, resolve_paths
from queuectl.errors import EXIT_CODES, InvalidInput, QueuectlError

EPILOG = "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."


class Ctx:
    """Per-invocation state: the paths, and the queue opened on first use."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._queue: Any = None

    @property
    def queue(self) -> Any:
        if self._queue is None:
            from queuectl.api import Queue

            self._queue = Queue.open(self.paths)
        return self._queue

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()


pass_ctx = click.make_pass_decorator(Ctx)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = min(max(widths[i], len(c)), 60)
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    click.echo(line.rstrip())
    for r in cells:
        click.echo("  ".join(_clip(c, w).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only (stable format).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="Queue home folder (db/, logs/, conf/). Default: $QUEUECTL_HOME or the current folder.",
)
@click.option(
    "--db",
    help="Database: a SQLite file path or postgresql://... Default: $QUEUECTL_DB or HOME/db/queue.db.",
)
@click.version_option(__version__, prog_name="queuectl")
@click.pass_context
def cli(ctx: click.Context, home: str | None, db: str | None) -> None:
    """queuectl: a durable background job queue for shell commands."""
    state = Ctx(resolve_paths(home, db))
    ctx.obj = state
    ctx.call_on_close(state.close)


# --- enqueue -----------------------------------------------------------------------


@cli.command()
@click.argument("job", nargs=-1, required=True)
@click.option("--id", "job_id", help="Job id (default: a new sortable id).")
@click.option("--max-retries", type=int, help="Retries after the first attempt (default: config).")
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--delay", type=float, help="Seconds to wait before the first run.")
@click.option("--run-at", help="Earliest start, ISO-8601 (UTC if no zone).")
@click.option("--timeout", type=float, help="Time limit in seconds (default: config job_timeout).")
@pass_ctx
def enqueue(
    c: Ctx,
    job: tuple[str, ...],
    job_id: str | None,
    max_retries: int | None,
    priority: int | None,
    delay: float | None,
    run_at: str | None,
    timeout: float | None,
) -> None:
    """Add a job: a shell command, a JSON object, or - for JSON lines on stdin.

    \b
      queuectl enqueue "echo hi" --max-retries 3 --priority 5
      queuectl enqueue '{"id":"job1","command":"sleep 2","max_retries":3}'
      printf '{"command":"true"}\\n{"command":"false"}\\n' | queuectl enqueue -

    Prints the new id (one per line for bulk).
    """
    from queuectl.api import parse_job_text

    overrides = {
        k: v
        for k, v in {
            "id": job_id,
            "max_retries": max_retries,
            "priority": priority,
            "delay": delay,
            "run_at": run_at,
            "timeout": timeout,
        }.items()
        if v is not None
    }
    if job == ("-",):
        specs = list(_read_json_lines(sys.stdin))
        if job_id is not None and len(specs) > 1:
            raise InvalidInput("--id cannot be used with more than one job")
        ids = c.queue.enqueue_many([{**s, **overrides} for s in specs])
        click.echo("\n".join(ids))
        return
    spec = parse_job_text(" ".join(job))
    click.echo(c.queue.enqueue({**spec, **overrides}))


def _read_json_lines(stream: Any) -> Iterable[dict[str, Any]]:
    from queuectl.api import parse_json_object

    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"stdin is not valid UTF-8 (byte {exc.start})") from None
    # JSON Lines are split on "\n" only: str.splitlines() would also cut at U+2028,
    # U+0085 and other separators that JSON allows raw inside a string.
    for n, line in enumerate(data.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield parse_json_object(line)
        except InvalidInput as exc:
            raise InvalidInput(f"line {n}: {exc}") from None


# --- reading -----------------------------------------------------------------------


@cli.command()
@json_option
@pass_ctx
def status(c: Ctx, as_json: bool) -> None:
    """Jobs per state, the total, and the live workers."""
    counts = c.queue.status()
    if as_json:
        emit_json(counts)
        return
    for key in ("pending", "processing", "completed", "failed", "dead", "total", "workers"):
        click.echo(f"{key:<11} {counts[key]}")
    rec = counts["recovery"]
    if rec["last_pass_at"] is None:
        click.echo("recovery    no recovery pass has run yet (no monitor or worker has started)")
    else:
        by = f"{rec['last_pass_by']} ({rec['last_pass_kind']})"
        click.echo(f"recovery    last pass {rec['age_s']:.1f}s ago by {by}")
    if rec["overdue"] and (counts["processing"] or counts["workers"]):
        click.echo(
            "warning: no recovery pass for over 3 monitor intervals: is a monitor or worker running?",
            err=True,
        )


@cli.command("list")
@click.option("--state", help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(min=0), help="At most N jobs (oldest first).")
@json_option
@pass_ctx
def list_(c: Ctx, state: str | None, limit: int | None, as_json: bool) -> None:
    """List jobs, oldest first."""
    jobs = c.queue.list(state, limit)
    _print_jobs(jobs, as_json)


def _print_jobs(jobs: Sequence[Any], as_json: bool) -> None:
    if as_json:
        emit_json([j.to_dict(output=False) for j in jobs])
        return
    rows = [
        (j.id, j.state.value, f"{j.attempts}/{j.max_retries + 1}", j.priority, _short_time(j), j.command)
        for j in jobs
    ]
    table(rows, ("id", "state", "attempts", "priority", "updated", "command"))


def _short_time(job: Any) -> str:
    from queuectl.models import iso

    return (iso(job.updated_at) or "")[:19].replace("T", " ")


@cli.command()
@click.argument("job_id")
@json_option
@pass_ctx
def inspect(c: Ctx, job_id: str, as_json: bool) -> None:
    """Every field of a job, its captured output and its full history."""
    job, events = c.queue.inspect(job_id)
    data = job.to_dict()
    data["history"] = [e.to_dict() for e in events]
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if key in ("history", "stdout", "stderr"):
            continue
        click.echo(f"{key:<12} {'' if value is None else value}")
    for stream in ("stdout", "stderr"):
        click.echo(f"--- {stream} ---")
        text = data[stream] or ""
        click.echo(text, nl=not text.endswith("\n"))
    click.echo("--- history ---")
    rows = [
        (
            e["at"],
            e["from"] or "-",
            e["to"],
            e["attempt"],
            e["worker_id"],
            e["exit_code"],
            e["reason"] or e["error"],
        )
        for e in data["history"]
    ]
    table(rows, ("at", "from", "to", "attempt", "worker", "exit", "reason/error"))


@cli.command()
@click.argument("job_id")
@click.option("--stream", type=click.Choice(["both", "stdout", "stderr"]), default="both")
@pass_ctx
def logs(c: Ctx, job_id: str, stream: str) -> None:
    """The stdout and stderr of a job's last attempt."""
    job = c.queue.get(job_id)
    if stream in ("both", "stdout") and job.stdout:
        click.echo(job.stdout, nl=False)
    if stream in ("both", "stderr") and job.stderr:
        click.echo(job.stderr, nl=False, err=stream == "both")


# --- dead-letter queue ---------------------------------------------------------------


@cli.group()
def dlq() -> None:
    """The dead-letter queue: jobs that failed max_retries + 1 times."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(min=0))
@json_option
@pass_ctx
def dlq_list(c: Ctx, limit: int | None, as_json: bool) -> None:
    """List dead jobs."""
    _print_jobs(c.queue.dlq_list(limit), as_json)


@dlq.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Retry every dead job.")
@pass_ctx
def dlq_retry(c: Ctx, job_ids: tuple[str, ...], all_: bool) -> None:
    """Move dead jobs back to pending with attempts reset."""
    if all_ == bool(job_ids):
        raise InvalidInput("give job ids or --all (not both)")
    ids = c.queue.dlq_retry_all() if all_ else c.queue.dlq_retry_many(job_ids)
    if ids:
        click.echo("\n".join(ids))
    elif all_:
        click.echo("no dead jobs", err=True)


# --- config ----------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Read and change the queue's settings (stored in its database)."""


@config.command("get")
@click.argument("key", required=False)
@json_option
@pass_ctx
def config_get(c: Ctx, key: str | None, as_json: bool) -> None:
    """Show one setting or all of them."""
    values = c.queue.config_get(key)
    if as_json:
        emit_json(values)
    elif key is not None:
        click.echo(_fmt(next(iter(values.values()))))
    else:
        for k, v in values.items():
            click.echo(f"{k:<19} {_fmt(v)}")


@config.command("set", context_settings={"ignore_unknown_options": True})  # so "-1" is a value
@click.argument("key")
@click.argument("value")
@pass_ctx
def config_set(c: Ctx, key: str, value: str) -> None:
    """Change a setting (max-retries and max_retries are the same key)."""
    name, parsed = c.queue.config_set(key, value)
    click.echo(f"{name} = {_fmt(parsed)}")


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


@cli.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    required=True,
    type=click.Choice(["completed", "dead"]),
    help="Purge jobs in this state (repeatable).",
)
@click.option("--older-than", type=click.FloatRange(min=0), help="Only jobs finished this many seconds ago.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def purge(c: Ctx, states: tuple[str, ...], older_than: float | None, yes: bool) -> None:
    """Delete finished jobs and their history for good."""
    if not yes and not click.confirm(f"Delete {'/'.join(states)} jobs and their history?", err=True):
        raise InvalidInput("not confirmed: nothing deleted")
    n = c.queue.purge(list(states), older_than)
    click.echo(f"purged {n} jobs")


# --- workers and the monitor ---------------------------------------------------------


@cli.group()
def worker() -> None:
    """Run workers: one in this terminal, or a pool under supervisord."""


@worker.command("run")
@click.option("--burst", is_flag=True, help="Exit when no job is due and none is processing.")
@click.option("--poll-interval", type=click.FloatRange(min=0.005, max=60), help="Longest idle wait, seconds.")
@pass_ctx
def worker_run(c: Ctx, burst: bool, poll_interval: float | None) -> None:
    """One worker in the foreground (what supervisord runs).

    The first SIGTERM/SIGINT finishes the current job and exits 0; a second one
    kills the job, records the attempt, and exits.
    """
    from dataclasses import replace

    from queuectl import procs
    from queuectl.signals import StopSignals
    from queuectl.worker import Worker

    signals = StopSignals()
    signals.install()
    w = Worker(
        c.queue.store,
        queue=procs.queue_key(c.paths.db_url),
        signals=signals,
        watch_parent=bool(os.environ.get("SUPERVISOR_ENABLED")),
        logs_dir=c.paths.logs,
    )
    if poll_interval is not None:
        w.config = replace(w.config, poll_interval=poll_interval)
        w.refresh_config = _keep_poll(w.refresh_config, w, poll_interval)  # type: ignore[method-assign]
    sys.exit(w.run(burst=burst))


def _keep_poll(refresh: Callable[..., None], w: Any, poll: float) -> Callable[..., None]:
    from dataclasses import replace

    def wrapped(force: bool = False) -> None:
        refresh(force)
        w.config = replace(w.config, poll_interval=poll)

    return wrapped


def _supervisor(c: Ctx) -> Any:
    from queuectl.supervisor import Supervisor

    return Supervisor(c.paths)


@worker.command("start")
@click.option("--count", type=int, help="Number of workers (default: the last count, or 1).")
@click.option("--detach", is_flag=True, help="Start supervisord in the background and return.")
@pass_ctx
def worker_start(c: Ctx, count: int | None, detach: bool) -> None:
    """Run N workers and the monitor under supervisord.

    In the foreground it blocks until Ctrl+C, SIGTERM or `queuectl worker stop`,
    then stops every worker gracefully (running jobs finish) and exits 0.  If
    supervisord already runs for this home, it only brings the pool to N and returns.
    """
    from queuectl.supervisor import prepare_home, run_foreground

    if count is not None and count < 1:
        raise InvalidInput("--count must be at least 1 (use `queuectl worker stop` to stop all)")
    sv = _supervisor(c)
    n = count if count is not None else (sv.saved_count() or 1)
    if sv.is_running():
        started, stopping = sv.scale(n)
        click.echo(f"{n} worker(s) running (started {len(started)}, stopping {len(stopping)})")
        return
    prepare_home(c.paths)
    c.queue  # noqa: B018 - open (and migrate) the database before any worker does
    db = c.paths.db_url if (c.paths.db_url != str(c.paths.db_dir / "queue.db")) else None
    if detach:
        sv.launch(foreground=False, db_url=db)
        sv.scale(n)
        click.echo(f"supervisord started in the background with {n} worker(s) and the monitor")
        return

    def say(msg: str) -> None:
        click.echo(f"queuectl: {msg}", err=True)

    sys.exit(run_foreground(sv, n, db, say))


@worker.command("stop")
@pass_ctx
def worker_stop(c: Ctx) -> None:
    """Stop all workers of this home gracefully (each finishes its current job)."""
    _stop_workers(c)


@cli.command("stop-workers")
@pass_ctx
def stop_workers(c: Ctx) -> None:
    """Same as `worker stop`."""
    _stop_workers(c)


def _stop_workers(c: Ctx) -> None:
    from queuectl import procs

    sv = _supervisor(c)
    stopped = sv.stop_workers() if sv.is_running() else []
    # Workers started by hand (`worker run`) on this host get the same warm stop.
    bare = procs.signal_local_workers(c.queue.workers())
    total = len(stopped) + len(bare)
    click.echo(f"stopped {total} worker(s)" if total else "no workers were running")


@worker.command("status")
@json_option
@pass_ctx
def worker_status(c: Ctx, as_json: bool) -> None:
    """Each worker's process state (supervisord) beside its heartbeat (database)."""
    sv = _supervisor(c)
    procs_ = [p for p in sv.processes() if p.up or p.group != "workers"] if sv.is_running() else []
    rows_db = {w.pid: w for w in c.queue.workers()}
    now = c.queue.store.now()
    out = []
    for p in procs_:
        w = rows_db.pop(p.pid, None) if p.pid else None
        out.append(_worker_row(p.full_name, p.state, p.pid or None, w, now))
    for w in rows_db.values():  # workers not under this supervisord (bare or other hosts)
        out.append(_worker_row(None, None, w.pid, w, now))
    if as_json:
        emit_json(out)
        return
    if not out:
        click.echo("no workers")
        return
    rows = [
        (r["name"] or "-", r["process_state"] or "-", r["pid"], r["host"], r["heartbeat_age_s"], r["job_id"])
        for r in out
    ]
    table(rows, ("name", "process", "pid", "host", "heartbeat_age_s", "job"))


def _worker_row(name: str | None, state: str | None, pid: int | None, w: Any, now: float) -> dict[str, Any]:
    from queuectl.models import iso

    return {
        "name": name,
        "process_state": state,
        "pid": pid,
        "worker_id": w.id if w else None,
        "host": w.host if w else None,
        "heartbeat_at": iso(w.heartbeat_at) if w else None,
        "heartbeat_age_s": round(now - w.heartbeat_at, 1) if w else None,
        "job_id": w.job_id if w else None,
    }


@cli.command()
@pass_ctx
def shutdown(c: Ctx) -> None:
    """Stop the workers gracefully, then supervisord itself (and the monitor)."""
    sv = _supervisor(c)
    if not sv.is_running():
        click.echo("supervisord is not running for this home")
        return
    stopped = sv.stop_workers()
    sv.shutdown()
    click.echo(f"stopped {len(stopped)} worker(s) and supervisord")


@cli.group()
def monitor() -> None:
    """The monitor that recovers crashed and hung jobs."""


@monitor.command("run")
@pass_ctx
def monitor_run(c: Ctx) -> None:
    """Run recovery passes every monitor_interval until stopped."""
    from queuectl.signals import StopSignals, die_with_parent

    signals = StopSignals()
    signals.install()
    if os.environ.get("SUPERVISOR_ENABLED"):
        die_with_parent()
    sys.exit(_monitor(c, signals).run())


def _monitor(c: Ctx, signals: Any = None) -> Any:
    from queuectl import procs
    from queuectl.monitor import Monitor

    return Monitor(
        c.queue.store,
        queue=procs.queue_key(c.paths.db_url),
        logs_dir=c.paths.logs,
        signals=signals,
    )


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only print what would be recovered.")
@click.option("--job", "job_id", help="Recover this processing job now (reason: manual).")
@json_option
@pass_ctx
def recover(c: Ctx, dry_run: bool, job_id: str | None, as_json: bool) -> None:
    """Run one monitor pass now and print what it recovered."""
    from dataclasses import asdict

    mon = _monitor(c)
    if job_id is not None:
        if dry_run:
            raise InvalidInput("--dry-run and --job cannot be combined")
        done = [mon.recover_job(job_id)]
    else:
        done = mon.run_once(dry_run=dry_run)
    if as_json:
        emit_json([asdict(r) for r in done])
        return
    if not done:
        click.echo("nothing to recover")
    for r in done:
        verb = "would recover" if dry_run else "recovered"
        if r.event == "job_recovered":
            click.echo(f"{verb} job {r.job_id} ({r.reason}): attempt {r.attempt} -> {r.state_after}")
        elif r.event == "worker_removed":
            click.echo(f"{verb} worker {r.worker_id} ({r.reason}): removed")
        else:
            click.echo(f"{verb} orphan process {r.pid} of job {r.job_id}")


# --- entry point ---------------------------------------------------------------------


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"queuectl: error: {message}", err=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="queuectl", standalone_mode=False)
    except QueuectlError as exc:
        fail(str(exc), exc.exit_code)
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


class _devnull_stdout:
    def __enter__(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())

    def __exit__(self, *exc: object) -> None:
        return None
