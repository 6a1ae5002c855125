"""`queuectl enqueue`'s option declarations and the one call that enqueues.

The click command (enqueue.py) and the pre-parser (fast_enqueue.py) are both built
from OPTIONS and both call submit(), so the two cannot disagree on an option's name,
its type, or what is done with its value.  The values' ranges are checked once, by
the job rules (rules.check_job) that submit() applies.  Imports neither click nor
the library: the pre-parser loads this module.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any


class Option:
    """One option of `queuectl enqueue`: its flag, click's parameter name, the job
    field it sets (None: it sets none), the type its value converts to, and its help;
    `multiple`: it may be given more than once (its value is then a tuple, in the
    order given); `choices`: the only values it takes."""

    __slots__ = ("choices", "field", "flag", "help", "kind", "multiple", "param")

    def __init__(
        self,
        flag: str,
        param: str,
        field: str | None,
        kind: Callable[[str], Any],
        help: str,
        *,
        multiple: bool = False,
        choices: tuple[str, ...] | None = None,
    ) -> None:
        self.flag = flag
        self.param = param
        self.field = field
        self.kind = kind
        self.help = help
        self.multiple = multiple
        self.choices = choices


def seconds(text: str) -> float:
    """--delay and --timeout: seconds, or a duration (`10m`, `2h`: durations.parse);
    ValueError when neither (the range is the job rules' to check)."""
    from queuectl import durations

    return durations.parse(text)


#: What `--on-conflict` takes.
CONFLICT_CHOICES = ("error", "ignore")

OPTIONS = (
    Option("--id", "job_id", "id", str, "Job id (default: a new sortable id)."),
    Option(
        "--max-retries",
        "max_retries",
        "max_retries",
        int,
        "Retries after the first attempt (default: config).",
    ),
    Option("--priority", "priority", "priority", int, "Higher runs first (default 0)."),
    Option("--delay", "delay", "delay", seconds, "Wait before the first run: seconds, or 90s, 10m, 2h, 7d."),
    Option("--run-at", "run_at", "run_at", str, "Earliest start, ISO-8601 (UTC if no zone)."),
    Option(
        "--timeout",
        "timeout",
        "timeout",
        seconds,
        "Time limit: seconds, or 10m, 2h (default: job_timeout).",
    ),
    Option("--queue", "queue", "queue", str, "Named queue (default: default)."),
    Option("--cwd", "cwd", "cwd", str, "Directory to run in (default: the current directory)."),
    Option(
        "--env",
        "env",
        "env",
        str,
        "KEY=VALUE added to the worker's environment (KEY alone: its value here). Repeatable.",
        multiple=True,
    ),
    Option(
        "--unique-key", "unique_key", "unique_key", str, "Refuse the job while a job with this key may run."
    ),
    Option(
        "--on-conflict",
        "on_conflict",
        None,
        str,
        "On a held unique key: error (exit 4) or ignore (print the holder's id, exit 0).",
        choices=CONFLICT_CHOICES,
    ),
    Option(
        "--after", "after", "after", str, "Run only after job ID has completed. Repeatable.", multiple=True
    ),
)
#: The job argument: the words of one job (joined), or `-` for JSON lines on stdin.
STDIN = "-"


def submit(home: str | None, db: str | None, job: Sequence[str], options: Mapping[str, Any]) -> list[str]:
    """Enqueue `job` on the queue the group options name; the new ids.

    The job text is parsed (and stdin read) before the queue is opened, so bad input is
    reported first.  A SQLite queue at the current schema is written by
    store.sqlite.insert with the job rules alone; PostgreSQL, and a database to
    create, migrate or refuse, go through the library (Queue).
    """
    from queuectl import rules

    home_dir, db_url = rules.resolve_locations(home, db)
    bulk = list(job) == [STDIN]
    specs = stdin_specs(sys.stdin, options) if bulk else [job_spec(job, options)]

    def insert(batch: list[dict[str, Any]]) -> list[str]:
        ids = None if rules.is_postgres_url(db_url) else _lean(home_dir, db_url, batch, bulk)
        return _with_library(home, db, batch, bulk) if ids is None else ids

    if options.get("on_conflict") == "ignore":
        return rules.skip_held(specs, insert)
    return insert(specs)


def _lean(home_dir: str, db_url: str, specs: list[dict[str, Any]], bulk: bool) -> list[str] | None:
    """Insert into a SQLite queue at the current schema with store.sqlite.insert and
    the job rules alone; None (nothing done) for a database to create, migrate or refuse."""
    from queuectl import rules
    from queuectl.store.sqlite.insert import insert_new

    rules.open_home(home_dir, db_url)
    return insert_new(db_url, lambda stored, now: rules.check_jobs(specs, stored, now, numbered=bulk))


def _with_library(home: str | None, db: str | None, specs: list[dict[str, Any]], bulk: bool) -> list[str]:
    from queuectl.api import Queue
    from queuectl.config import resolve_paths

    queue = Queue.open(resolve_paths(home, db))
    try:
        return queue.enqueue_many(specs, numbered=bulk)
    finally:
        queue.close()


def job_spec(job: Sequence[str], options: Mapping[str, Any]) -> dict[str, Any]:
    """The job object of `queuectl enqueue JOB... [options]`: the words joined into a
    command (or a JSON object), the options given over its fields."""
    from queuectl.rules import parse_job_text

    return {**parse_job_text(" ".join(job)), **_overrides(options)}


def stdin_specs(stream: Any, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The job objects of `queuectl enqueue - [options]`: the stream's JSON lines, the
    options given over their fields."""
    from queuectl.errors import InvalidInput
    from queuectl.rules import read_json_lines

    specs = read_json_lines(stream)
    if options.get("job_id") is not None and len(specs) > 1:
        raise InvalidInput("--id cannot be used with more than one job")
    overrides = _overrides(options)
    return [{**s, **overrides} for s in specs] if overrides else specs


def _overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options given (not None, a repeatable one at least once), under their job
    field names."""
    out = {
        o.field: options[o.param]
        for o in OPTIONS
        if o.field is not None and options.get(o.param) not in (None, ())
    }
    if "env" in out:
        out["env"] = env_pairs(out["env"])
    if "after" in out:
        out["after"] = list(out["after"])
    return out


def env_pairs(given: Sequence[str]) -> dict[str, str]:
    """`--env` values as the job's env object: KEY=VALUE, or KEY alone for this
    process's value of KEY, copied explicitly (nothing else of the caller's
    environment is captured)."""
    from queuectl.errors import InvalidInput

    env: dict[str, str] = {}
    for item in given:
        key, eq, value = item.partition("=")
        if not eq:
            if key not in os.environ:
                raise InvalidInput(f"--env {key}: {key} is not set here (give --env {key}=VALUE)")
            value = os.environ[key]
        env[key] = value
    return env
