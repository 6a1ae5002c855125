"""The worker commands: `worker run/start/stop/status`, `stop-workers`, `shutdown`.

Parsing and rendering only: the work is in worker.py and supervisor.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from queuectl.cli.context import Ctx, Duration, pass_ctx
from queuectl.cli.render import emit_json, json_option, table
from queuectl.cli.settings import key_range
from queuectl.errors import InvalidInput


@click.group()
def worker() -> None:
    """Run workers: one in this terminal, or a pool under supervisord."""


def _queue_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--queue", "queues", multiple=True, metavar="NAME", help=what)


def _checked(queues: tuple[str, ...]) -> tuple[str, ...] | None:
    """The named queues, each once, checked (None when none was named)."""
    from queuectl.rules import check_queue_name

    return tuple(dict.fromkeys(check_queue_name(q) for q in queues)) or None


@worker.command("run")
@click.option("--burst", is_flag=True, help="Exit when no job is due and none is processing.")
@click.option(
    "--poll-interval",
    type=Duration(*key_range("poll_interval")),
    help="Longest idle wait: seconds, or 2s.",
)
@_queue_option("Serve only this queue (repeatable; default: every queue).")
@pass_ctx
def worker_run(c: Ctx, burst: bool, poll_interval: float | None, queues: tuple[str, ...]) -> None:
    """One worker in the foreground (what supervisord runs).

    The first SIGTERM/SIGINT finishes the current job and exits 0; a second one
    kills the job, records the attempt, and exits.  Under supervisord, without
    --queue, it serves the queues `worker start --queue` gave the pool.
    """
    from queuectl import contain, home, logs, procs, served
    from queuectl.signals import StopSignals
    from queuectl.worker import Worker

    serves = _checked(queues)
    if serves is None and os.environ.get("SUPERVISOR_ENABLED"):
        serves = _checked(served.load(c.paths.run) or ())
    queue, paths = c.queue, c.paths
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
        serves=serves,
    )
    # This process runs nothing but its jobs: it may contain them (contain.py).
    contain.install(contain.Containment.start(w.id, cgroup=w.config.job_cgroup == "auto"))
    try:
        sys.exit(w.run(burst=burst))
    finally:
        contain.uninstall()


def _supervisor(c: Ctx) -> Any:
    from queuectl import home
    from queuectl.supervisor import Supervisor

    # Also the commands that never open the queue (shutdown, a worker start that only
    # scales) check the home before they act on its supervisord.
    home.secure(str(c.paths.home))
    return Supervisor(c.paths)


@worker.command("start")
@click.option("--count", type=int, help="Number of workers (default: the last count, or 1).")
@click.option("--detach", is_flag=True, help="Start supervisord in the background and return.")
@_queue_option("The workers serve only this queue (repeatable; default: every queue, or the running pool's).")
@pass_ctx
def worker_start(c: Ctx, count: int | None, detach: bool, queues: tuple[str, ...]) -> None:
    """Run N workers and the monitor under supervisord.

    In the foreground it blocks until Ctrl+C, SIGTERM or `queuectl worker stop`,
    then stops every worker gracefully (running jobs finish) and exits 0.  If
    supervisord dies, the workers finish their jobs and exit by themselves; it
    waits for them, then exits 6.  If supervisord already runs for this home, it
    only brings the pool to N and returns (its workers keep their queues: another
    --queue needs `queuectl worker stop` first).
    """
    from queuectl import served, workers_conf
    from queuectl.supervisor import prepare_home, run_foreground

    if count is not None and count < 1:
        raise InvalidInput("--count must be at least 1 (use `queuectl worker stop` to stop all)")
    if count is not None:
        workers_conf.check_count(count)
    serves = _checked(queues)
    sv = _supervisor(c)
    n = count if count is not None else (sv.saved_count() or 1)
    if sv.is_running():
        if serves is not None and serves != served.load(c.paths.run):
            if any(p.up for p in sv.workers()):
                raise InvalidInput(
                    "the running workers serve other queues: `queuectl worker stop` first, then start"
                    " them with the new --queue"
                )
            served.save(c.paths.run, serves)
        started, stopping = sv.scale(n)
        click.echo(f"{n} worker(s) running (started {len(started)}, stopping {len(stopping)})")
        return
    # Before supervisord starts: a conf it cannot use must leave nothing running.
    workers_conf.template(prepare_home(c.paths))
    served.save(c.paths.run, serves)  # read by each supervised `worker run`
    c.queue  # noqa: B018 - open (and migrate) the database before any worker does
    db = c.paths.db_url if (c.paths.db_url != str(c.paths.db_dir / "queue.db")) else None
    if detach:
        sv.launch(foreground=False, db_url=db, count=n)
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


@click.command("stop-workers")
@pass_ctx
def stop_workers(c: Ctx) -> None:
    """Same as `worker stop`."""
    _stop_workers(c)


def _stop_workers(c: Ctx) -> None:
    from queuectl import procs

    sv = _supervisor(c)
    if sv.is_running():
        stopped = sv.stop_workers()
    else:
        stopped = []
        sv.forget_workers()  # none asked for now (supervisord died with some asked for)
    # Workers of this home started by hand (`worker run`) get the same warm stop.
    bare = procs.signal_local_workers(_own_workers(c))
    total = len(stopped) + len(bare)
    click.echo(f"stopped {total} worker(s)" if total else "no workers were running")


def _own_workers(c: Ctx) -> list[Any]:
    """The registered workers started from this home on this host: homes that share a
    database each act on their own."""
    from queuectl import home, procs

    me = home.identity(str(c.paths.home))
    return [w for w in c.queue.workers() if w.host == procs.hostname() and w.home == me]


@worker.command("status")
@click.option(
    "--all", "all_", is_flag=True, help="Also the workers of other homes and hosts on this database."
)
@json_option
@pass_ctx
def worker_status(c: Ctx, all_: bool, as_json: bool) -> int:
    """Each worker of this home: its process state (supervisord) beside its heartbeat
    (database).

    Exits 3 (supervisorctl's convention) when the workers running under supervisord
    are not the ones asked for (`worker start --count N`), saying how on stderr.
    """
    sv = _supervisor(c)
    procs_ = sv.processes() if sv.is_running() else []
    from queuectl.procs import hostname

    rows_db = {(w.host, w.pid): w for w in (c.queue.workers() if all_ else _own_workers(c))}
    now = c.queue.store.now()
    out = []
    for p in procs_:
        w = rows_db.pop((hostname(), p.pid), None) if p.pid else None
        out.append(_worker_row(p.label, p.state, p.pid or None, w, now))
    for w in rows_db.values():  # workers not under this supervisord (bare; with --all, any)
        out.append(_worker_row(None, None, w.pid, w, now))
    if as_json:
        emit_json(out)
    elif not out:
        click.echo("no workers")
    else:
        rows = [
            (
                r["name"] or "-",
                r["process_state"] or "-",
                r["pid"],
                r["host"],
                r["heartbeat_age_s"],
                r["job_id"],
            )
            for r in out
        ]
        table(rows, ("name", "process", "pid", "host", "heartbeat_age_s", "job"))
    problem = sv.shortfall()
    if problem is None:
        return 0
    click.echo(f"queuectl: {problem}", err=True)
    return 3


@click.command(
    "supervisorctl",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def supervisorctl(c: Ctx, args: tuple[str, ...]) -> None:
    """supervisorctl ARGS... against this home's supervisord (`queuectl supervisorctl
    status`), for installs without supervisorctl on PATH (pipx).  Its exit code is
    supervisorctl's."""
    from queuectl.supervisor import exec_supervisorctl, prepare_home

    _supervisor(c)  # the home checks
    exec_supervisorctl(prepare_home(c.paths), list(args))


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
        "home": w.home if w else None,
    }


@click.command()
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
