"""The rules of queuectl's inputs, as plain functions: where a queue lives, what a new
job may be, how a job id is made, how times are read and printed.

check_jobs is the one validation of new jobs: Queue.enqueue, Queue.enqueue_many and
the `queuectl enqueue` fast path call it, and stores receive only what it returns.
Every default and range it applies comes from settings.py.

Cheap to import (no dataclasses, typing, enum, pathlib or datetime at runtime): the
enqueue fast path validates through this module alone.  Imports no other queuectl
module but errors and settings (and home, as cheap).
"""

from __future__ import annotations

import math
import os
import time

from queuectl.errors import InvalidInput, StoreError
from queuectl.settings import JOB_OPTIONS, SETTINGS

# Not typing.TYPE_CHECKING: importing typing costs milliseconds, and mypy gives a
# constant of this name the same meaning.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

# --- where a queue lives ------------------------------------------------------------


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def url_scheme(text: str) -> str | None:
    """The scheme of `text` when it is written as a URL (`name://...`), else None."""
    scheme, sep, _ = text.partition("://")
    if not sep or not scheme[:1].isalpha() or not scheme.isascii():
        return None
    if all(ch.isalnum() or ch in "+-." for ch in scheme):
        return scheme
    return None


def resolve_locations(home: str | None = None, db: str | None = None) -> tuple[str, str]:
    """(home folder, database URL or file) from the flags, else the environment; the
    default database is HOME/db/queue.db.  The default home is the current directory,
    except for a database file in a folder named db: its home is that folder's parent
    (so its logs/ are found from any folder, as HOME/db/queue.db is from its home)."""
    home_text = home or os.environ.get("QUEUECTL_HOME")
    db_text = db or os.environ.get("QUEUECTL_DB") or ""
    if not db_text:
        home_path = absolute(home_text or ".")
        return home_path, _join(home_path, "db", "queue.db")
    if is_postgres_url(db_text):
        return absolute(home_text or "."), db_text
    scheme = url_scheme(db_text)
    if scheme is not None:
        raise InvalidInput(
            f"database URL scheme {scheme!r} is not supported: give a SQLite file path or a postgresql:// URL"
        )
    db_path = absolute(db_text)
    if home_text:
        return absolute(home_text), db_path
    folder = db_path.rsplit("/", 1)[0] or "/"
    if folder.rsplit("/", 1)[-1] == "db" and folder.count("/") > 1:
        return folder.rsplit("/", 1)[0], db_path
    return absolute("."), db_path


def default_db_dir(home: str) -> str:
    return _join(home, "db")


def open_home(home: str, db_url: str) -> None:
    """Check the home before a store is opened on it (and make it owner-only:
    home.secure); create its db/ folder (mode 0700) when the database is the default
    file in it."""
    if not os.path.isdir(home):
        raise InvalidInput(f"queuectl home {home} does not exist or is not a folder")
    from queuectl.home import secure

    secure(home)
    if not is_postgres_url(db_url) and os.path.isdir(db_url):
        raise InvalidInput(f"database path {db_url} is a folder: give the path of a database file")
    db_dir = default_db_dir(home)
    if is_postgres_url(db_url) or os.path.dirname(db_url) != db_dir:
        return
    try:
        os.mkdir(db_dir, 0o700)
    except FileExistsError:
        if not os.path.isdir(db_dir):  # as Path.mkdir(exist_ok=True)
            raise StoreError(f"cannot create the database folder {db_dir}: File exists") from None
    except OSError as exc:  # the home is fine; its database folder cannot be made
        raise StoreError(f"cannot create the database folder {db_dir}: {exc.strerror}") from None


def absolute(text: str) -> str:
    """str(Path(text).expanduser().absolute()) without pathlib: `~` expanded, empty
    and `.` parts dropped, `..` kept, relative to the working directory."""
    root, parts = _split(text)
    if not root and parts and parts[0].startswith("~"):
        home = os.path.expanduser(parts[0])  # as Path.expanduser (3.11) expands it
        if home.startswith("~"):
            raise RuntimeError("Could not determine home directory.")
        root, home_parts = _split(home)
        parts = home_parts + parts[1:]
    if not root:
        root, cwd_parts = _split(os.getcwd())
        parts = cwd_parts + parts
    return root + "/".join(parts)


def _split(text: str) -> tuple[str, list[str]]:
    """A POSIX path as pathlib parses it: its root ('', '/' or exactly '//') and parts."""
    root = ""
    if text.startswith("/"):
        root = "//" if text.startswith("//") and not text.startswith("///") else "/"
    return root, [p for p in text.split("/") if p and p != "."]


def _join(base: str, *names: str) -> str:
    return (base if base.endswith("/") else base + "/") + "/".join(names)


# --- a new job ----------------------------------------------------------------------


def job_defaults(stored: Mapping[str, str]) -> tuple[int, float]:
    """(max_retries, job_timeout) from the config table's values, as Config.from_stored
    reads them: a value that is missing or no longer valid gives the default."""
    return SETTINGS["max_retries"].stored(stored), SETTINGS["job_timeout"].stored(stored)


#: Linux refuses a single exec argument longer than this (MAX_ARG_STRLEN).
MAX_COMMAND_BYTES = 131_072 - 1
MAX_ID_LENGTH = 200

JOB_FIELDS = frozenset(
    {
        "id",
        "command",
        "max_retries",
        "priority",
        "run_at",
        "delay",
        "timeout",
        "queue",
        "cwd",
        "env",
        "unique_key",
        "after",
    }
)
#: Fields of a job's JSON form that may be sent back at enqueue with their initial
#: values (so a job printed by `inspect --json` can be enqueued again elsewhere).
INITIAL_FIELDS = frozenset({"state", "attempts", "created_at", "updated_at"})

#: A validated new job, models.NewJob's fields in order: (id, command, max_retries,
#: priority, timeout, run_at, queue, cwd, env, unique_key, after).
JobRow = tuple[str, str, int, int, float, float, str, str | None, str | None, str | None, tuple[str, ...]]
#: The queue a job goes to when none is named (models.DEFAULT_QUEUE).
DEFAULT_QUEUE = "default"


def parse_job_text(text: str) -> dict[str, Any]:
    """One job from the command line: a JSON object, or else a shell command."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return parse_json_object(stripped)
    return {"command": text}


_decoder: Any = None


def parse_json_object(text: str) -> dict[str, Any]:
    global _decoder
    if _decoder is None:
        import json  # here: a plain command (the common case) needs no JSON at all

        # One decoder for every line of a bulk enqueue: json.loads with an argument
        # builds a new JSONDecoder at every call.
        _decoder = json.JSONDecoder(parse_constant=_reject_constant)
    if text[:1] == "{":
        # What decode() does for an object with nothing around it, without its two
        # whitespace scans; anything else (an error too) goes through decode().
        try:
            obj, end = _decoder.scan_once(text, 0)
        except (StopIteration, ValueError, RecursionError):
            end = -1
        if end == len(text) and type(obj) is dict:
            return obj
    try:
        obj = _decoder.decode(text)
    except ValueError as exc:
        raise InvalidInput(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"a job must be a JSON object, not {type(obj).__name__}")
    return obj


def read_json_lines(stream: Any) -> list[dict[str, Any]]:
    """The job objects of `queuectl enqueue -`: one JSON object per line of the
    stream, blank lines skipped; InvalidInput names the first bad line."""
    if stream is None:  # `queuectl enqueue - <&-`: Python had no fd 0 to open
        raise InvalidInput("stdin is closed: there are no jobs to read")
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"stdin is not valid UTF-8 (byte {exc.start})") from None
    # JSON Lines are split on "\n" only: str.splitlines() would also cut at U+2028,
    # U+0085 and other separators that JSON allows raw inside a string.
    specs = []
    for n, line in enumerate(data.split("\n"), 1):
        if not line.strip():
            continue
        try:
            specs.append(parse_json_object(line))
        except InvalidInput as exc:
            raise InvalidInput(f"line {n}: {exc}") from None
    return specs


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def check_jobs(
    specs: Iterable[Mapping[str, Any]], stored: Mapping[str, str], now: float, *, numbered: bool
) -> list[JobRow]:
    """The one validation of new jobs: every job object of one enqueue, with the
    queue's defaults read from its config table's values `stored`, as rows ready to
    insert.  InvalidInput names the first problem (in a batch, `numbered`, prefixed
    with its job's number from 1), or says that no job was given.  A job given no
    `cwd` runs in the caller's current directory."""
    max_retries, timeout = job_defaults(stored)
    here = _caller_dir()
    rows = []
    keys: dict[str, int] = {}
    linked = False
    for n, spec in enumerate(specs, 1):
        try:
            row = check_job(spec, max_retries, timeout, now, here=here)
            if row[9] is not None:
                if row[9] in keys:
                    raise InvalidInput(f"unique key {row[9]!r} is also job {keys[row[9]]}'s")
                keys[row[9]] = n
        except InvalidInput as exc:
            if not numbered:
                raise
            raise InvalidInput(f"job {n}: {exc}") from None
        linked = linked or bool(row[10])
        rows.append(row)
    if not rows:
        raise InvalidInput("no jobs given")
    if linked:
        _refuse_cycles(rows)
    return rows


def check_job(
    spec: Mapping[str, Any], max_retries: int, timeout: float, now: float, *, here: str | None = None
) -> JobRow:
    """Validate one job object, with the queue's default max_retries and timeout and
    the caller's directory `here` (None: os.getcwd()); raise InvalidInput naming the
    first problem."""
    if spec.keys() <= _PLAIN_FIELDS:  # what the checks below come to with no other field
        command = _check_command(spec.get("command"))
        job_id = spec.get("id")
        job_id = new_id(now) if job_id is None else _check_id(job_id)
        return (
            job_id,
            command,
            max_retries,
            _PRIORITY,
            float(timeout),
            now,
            DEFAULT_QUEUE,
            here if here is not None else _check_cwd(None, None),
            None,
            None,
            (),
        )
    unknown = set(spec) - JOB_FIELDS - INITIAL_FIELDS
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    _check_initial(spec)
    command = _check_command(spec.get("command"))
    job_id = spec.get("id")
    job_id = new_id(now) if job_id is None else _check_id(job_id)
    return (
        job_id,
        command,
        _int(spec, "max_retries", max_retries),
        _int(spec, "priority", _PRIORITY),
        _number(spec, "timeout", timeout),
        _start_time(spec, now),
        _check_queue(spec.get("queue")),
        _check_cwd(spec.get("cwd"), here),
        _check_env(spec.get("env")),
        _check_key(spec.get("unique_key")),
        _check_after(spec.get("after"), job_id),
    )


def _caller_dir() -> str | None:
    """The enqueueing process's current directory; None if it was deleted (an error
    only for a job that would run there: _check_cwd)."""
    try:
        return os.getcwd()
    except OSError:
        return None


#: Longest queue name, unique key, and directory (PATH_MAX); most bytes of a job's
#: added environment (as JSON text).
MAX_QUEUE_LENGTH = 64
MAX_KEY_LENGTH = 200
MAX_CWD_BYTES = 4096
MAX_ENV_BYTES = 65_536
#: Variables the worker sets for every attempt (executor.MARKED): a job cannot set them.
RESERVED_ENV = frozenset({"QUEUECTL_JOB_ID", "QUEUECTL_LEASE", "QUEUECTL_ATTEMPT", "QUEUECTL_QUEUE"})
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_QUEUE_CHARS = _NAME_CHARS | {".", "-"}


def _check_queue(value: Any) -> str:
    if value is None:
        return DEFAULT_QUEUE
    return check_queue_name(value)


def _check_cwd(value: Any, here: str | None) -> str:
    """The directory the job runs in: `value` (relative to the caller's directory),
    else the caller's.  Not checked for existence: it may be made before the job
    runs, and a missing one fails the attempt then."""
    if value is None:
        if here is None:
            here = _caller_dir()
        if here is None:
            raise InvalidInput("the current directory no longer exists: give --cwd DIR")
        return here
    if not isinstance(value, str) or not value:
        raise InvalidInput("cwd must be a non-empty string")
    if "\x00" in value:
        raise InvalidInput("cwd must not contain NUL characters")
    if _has_surrogate(value) or len(value.encode()) > MAX_CWD_BYTES:
        raise InvalidInput(f"cwd must be valid UTF-8 of at most {MAX_CWD_BYTES} bytes")
    if value.startswith("/"):
        return value
    if here is None:
        raise InvalidInput("the current directory no longer exists: give cwd as an absolute path")
    return _join(here, value)


def _check_env(value: Any) -> str | None:
    """The variables a job adds to the worker's environment, as JSON object text
    (None: none)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("env must be an object of variable names to string values")
    for key, text in value.items():
        if not isinstance(key, str) or not key or key[0].isdigit() or not set(key) <= _NAME_CHARS:
            raise InvalidInput(
                f"env: {str(key)[:40]!r} is not a variable name (A-Z a-z 0-9 _, not first a digit)"
            )
        if key in RESERVED_ENV:
            raise InvalidInput(f"env: {key} is set by the worker for every attempt")
        if not isinstance(text, str):
            raise InvalidInput(f"env: the value of {key} must be a string")
        if "\x00" in text or _has_surrogate(text):
            raise InvalidInput(f"env: the value of {key} must be UTF-8 text without NUL characters")
    if not value:
        return None
    encoded = "{" + ", ".join(f"{_json_str(k)}: {_json_str(value[k])}" for k in sorted(value)) + "}"
    if len(encoded.encode()) > MAX_ENV_BYTES:
        raise InvalidInput(f"env is larger than {MAX_ENV_BYTES} bytes")
    return encoded


def _json_str(text: str) -> str:
    """`text` as a JSON string, as json.dumps(text, ensure_ascii=False) writes it,
    without importing json (and the `re` it imports): `enqueue --env` stays fast."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    if not out.isprintable():
        out = "".join(_ESCAPES.get(ch, f"\\u{ord(ch):04x}") if ch < " " else ch for ch in out)
    return f'"{out}"'


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _check_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("unique_key must be a string")
    if not value or len(value) > MAX_KEY_LENGTH or any(_is_control(ch) for ch in value):
        raise InvalidInput(f"unique_key must be 1 to {MAX_KEY_LENGTH} characters, no control characters")
    return value


def _check_after(value: Any, job_id: str) -> tuple[str, ...]:
    """The job's parents, each once, in the order given."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise InvalidInput("after must be a list of job ids")
    parents: dict[str, None] = {}
    for parent in value:
        try:
            parents[_check_id(parent)] = None
        except InvalidInput as exc:
            raise InvalidInput(f"after: {exc}") from None
    if job_id in parents:
        raise InvalidInput(f"job {job_id} cannot run after itself")
    return tuple(parents)


def _refuse_cycles(rows: list[JobRow]) -> None:
    """A new job depends on stored jobs or on jobs of its own batch, so a cycle can only
    be made within one batch: refuse it, naming its jobs."""
    edges = {row[0]: [p for p in row[10]] for row in rows}
    done: set[str] = set()
    for start in edges:
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                path.append(node)
                on_path.add(node)
            parents = [p for p in edges.get(node, ()) if p in edges and p not in done]
            if i < len(parents):
                stack.append((node, i + 1))
                nxt = parents[i]
                if nxt in on_path:
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise InvalidInput(f"dependencies form a cycle: {' -> '.join(cycle)}")
                stack.append((nxt, 0))
            else:
                path.pop()
                on_path.discard(node)
                done.add(node)


def skip_held(specs: list[dict[str, Any]], insert: Callable[[list[dict[str, Any]]], list[str]]) -> list[str]:
    """`enqueue --on-conflict ignore`: insert the jobs with `insert` (one transaction,
    all or none); when a unique key is held by a stored job, leave out the jobs with
    that key and insert the rest again.  The ids in the order of `specs`, the holder's
    id in place of each job left out.  The database still decides each clash (its
    unique index), so a holder that ends meanwhile only means the next try succeeds."""
    from queuectl.errors import UniqueConflict

    held: dict[str, str] = {}
    while True:
        rest = [s for s in specs if s.get("unique_key") not in held]
        try:
            ids = iter(insert(rest)) if rest else iter(())
        except UniqueConflict as exc:
            if exc.job_id is None or exc.key in held:
                raise
            held[exc.key] = exc.job_id
            continue
        key = "unique_key"
        return [held[s[key]] if s.get(key) in held else next(ids) for s in specs]


#: The states `purge` may delete: jobs that will never change again.
PURGEABLE = frozenset({"completed", "dead", "cancelled"})


def check_purge(states: Iterable[str]) -> None:
    """Refuse a purge of any state but completed, dead and cancelled (or of none)."""
    given = list(states)
    if not given or any(s not in PURGEABLE for s in given):
        raise InvalidInput("only completed, dead and cancelled jobs can be purged")


#: A job object of no other fields (the common case of a bulk enqueue) is checked by
#: a shorter path in check_job, with the same checks in the same order.
_PLAIN_FIELDS = frozenset({"command", "id"})
_PRIORITY: int = JOB_OPTIONS["priority"].default


def _check_command(command: Any) -> str:
    if not isinstance(command, str):
        raise InvalidInput("command is required and must be a string")
    if not command.strip():
        raise InvalidInput("command must not be empty")
    if "\x00" in command:
        raise InvalidInput("command must not contain NUL characters")
    if command.isascii() and len(command) <= MAX_COMMAND_BYTES:
        return command  # one byte per character, and no surrogate
    if len(command.encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
        raise InvalidInput(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    if _has_surrogate(command):
        raise InvalidInput("command is not valid UTF-8 text")
    return command


def _has_surrogate(text: str) -> bool:
    """A lone surrogate (Unicode category Cs): what a non-UTF-8 byte in argv becomes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _is_control(ch: str) -> bool:
    """Unicode category Cc (C0, DEL, C1: fixed by Unicode's stability policy) or Cs."""
    return ch < " " or "\x7f" <= ch <= "\x9f" or "\ud800" <= ch <= "\udfff"


def _start_time(spec: Mapping[str, Any], now: float) -> float:
    """`delay` seconds from now, or the ISO-8601 `run_at`, or now."""
    if spec.get("run_at") is not None and spec.get("delay") is not None:
        raise InvalidInput("give run_at or delay, not both")
    if spec.get("delay") is not None:
        return now + _number(spec, "delay", JOB_OPTIONS["delay"].default)
    raw = spec.get("run_at")
    if raw is None:
        return now
    if not isinstance(raw, str):
        raise InvalidInput("run_at must be an ISO-8601 time string")
    try:
        at = parse_time(raw)
    except (ValueError, OverflowError, OSError):
        raise InvalidInput(f"run_at is not an ISO-8601 time: {raw!r}") from None
    if not MIN_TIME <= at <= MAX_TIME:
        raise InvalidInput(
            f"run_at must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in UTC, not {raw!r}"
        )
    return at


def _check_initial(spec: Mapping[str, Any]) -> None:
    if "state" in spec and spec["state"] != "pending":
        raise InvalidInput("a new job's state can only be 'pending'")
    if "attempts" in spec and (type(spec["attempts"]) is not int or spec["attempts"] != 0):
        raise InvalidInput("a new job's attempts can only be 0")
    for key in ("created_at", "updated_at"):
        value = spec.get(key)
        if value is None:
            continue
        try:
            if not isinstance(value, str):
                raise ValueError
            parse_time(value)
        except (ValueError, OverflowError, OSError):
            raise InvalidInput(f"{key} must be an ISO-8601 time (it is set by queuectl)") from None


def _check_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput("id must be a string")
    if not value or value != value.strip():
        raise InvalidInput("id must be non-empty, without leading or trailing spaces")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"id is longer than {MAX_ID_LENGTH} characters")
    if any(_is_control(ch) or ch in BIDI_CONTROLS for ch in value):
        raise InvalidInput("id must not contain control characters or bidirectional overrides")
    return value


#: Characters that reorder the text around them on screen (Unicode's bidirectional
#: formatting characters): an id holding one could show as another id.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _int(spec: Mapping[str, Any], key: str, default: int) -> int:
    """The whole number field `key` of a job object (default when absent or null),
    within the range settings.JOB_OPTIONS gives it."""
    value = spec.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{key} must be a whole number")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidInput(f"{key} must be a whole number")
        value = int(value)
    option = JOB_OPTIONS[key]
    if not option.low <= value <= option.high:
        raise InvalidInput(f"{key} must be between {option.low} and {option.high}")
    return value


def _number(spec: Mapping[str, Any], key: str, default: float) -> float:
    """The number field `key` of a job object (default when absent or null), within
    the range settings.JOB_OPTIONS gives it."""
    value = spec.get(key)
    if value is None:
        return float(default)
    option = JOB_OPTIONS[key]
    if isinstance(value, str) and option.seconds:
        from queuectl import durations

        try:
            value = durations.parse(value)
        except ValueError:
            raise InvalidInput(f"{key} must be {durations.FORMS}, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{key} must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInput(f"{key} is too large") from None
    if not math.isfinite(number) or not option.low <= number <= option.high:
        raise InvalidInput(f"{key} must be between {option.low:g} and {option.high:g}")
    return number


# --- times and ids ------------------------------------------------------------------


#: The times a job may be given: years 1 to 9999 in UTC, what ISO-8601 prints with
#: four digits and Python's datetime (and so every read path) can hold.
MIN_TIME = -62_135_596_800.0  # 0001-01-01T00:00:00Z
MAX_TIME = 253_402_300_799.999  # 9999-12-31T23:59:59.999Z
#: Seconds in 400 Gregorian years: the calendar repeats after them exactly.
_CYCLE = 146_097 * 86_400


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO-8601 UTC with milliseconds (`2026-11-23T11:50:00.123Z`).

    Total over every float a database can hold: a time outside years 1-9999 is
    printed with a signed, expanded year (`+10000-01-01T...Z`), from the same date
    400 years (one calendar cycle) at a time nearer; a non-finite one as its name."""
    if ts is None:
        return None
    from datetime import UTC, datetime  # here: `queuectl enqueue CMD` never needs it

    if not math.isfinite(ts):
        return str(ts)
    shift = 0
    if not MIN_TIME <= ts <= MAX_TIME:
        # In integers: a float this far out is whole seconds, and float arithmetic
        # on it could land outside the range again (1e300 did).
        whole = math.floor(ts)
        shift = (whole - 946_684_800) // _CYCLE  # cycles away from 2000-01-01
        ts = float(whole - shift * _CYCLE) + (ts - whole)
    dt = datetime.fromtimestamp(ts, tz=UTC)
    year = dt.year + 400 * shift
    year_text = f"{year:04d}" if 1 <= year <= 9999 else f"{year:+05d}"
    return (
        f"{year_text}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
        f".{dt.microsecond // 1000:03d}Z"
    )


def parse_time(text: str) -> float:
    """ISO-8601 -> epoch seconds; a time without a zone is taken as UTC."""
    from datetime import UTC, datetime

    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_last_ms = 0
_last_rand = 0
#: The millisecond part of the last id, as text: a bulk enqueue makes every id with
#: one `now`, so it is encoded once.
_prefix_ms = -1
_prefix = ""


def new_id(now: float | None = None) -> str:
    """A short, unique, sortable id: 10 base32 chars of milliseconds + 6 random.

    Ids made in one process within the same millisecond count up from a random
    start, so a bulk enqueue never collides with itself and stays in order.
    """
    global _last_ms, _last_rand, _prefix_ms, _prefix
    ms = int((time.time() if now is None else now) * 1000)
    if ms <= _last_ms:
        ms = _last_ms
        _last_rand += 1
        if _last_rand >= 32**6:
            ms += 1
            _last_rand = int.from_bytes(os.urandom(4), "big") % (32**5)
    else:
        _last_rand = int.from_bytes(os.urandom(4), "big") % (32**5)
    _last_ms = ms
    if ms != _prefix_ms:
        _prefix_ms, _prefix = ms, _b32(ms, 10)
    return _prefix + _b32(_last_rand, 6)


_pairs: list[str] = []


def _b32(n: int, width: int) -> str:
    """n in `width` (even) Crockford base32 digits, most significant first."""
    if not _pairs:  # built on first use: 1,024 two-digit strings
        _pairs.extend(a + b for a in _CROCKFORD for b in _CROCKFORD)
    text = ""
    for _ in range(width // 2):
        text = _pairs[n & 1023] + text
        n >>= 10
    return text


# --- named queues and listings -------------------------------------------------------

#: What a queue's name is made of: ASCII letters and digits, '.', '_', '-', starting
#: with a letter or digit, 64 at most: safe in a shell line, a log field, a file.
_QUEUE_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def check_queue_name(name: str) -> str:
    """The name as given, or InvalidInput saying what a queue name may hold."""
    return check_name("queue", name)


def check_name(kind: str, name: str) -> str:
    """A queue's or a schedule's name as given, or InvalidInput saying what such a
    name may hold: one rule for every name an operator gives a thing."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_QUEUE_LENGTH
        or name[0] not in _QUEUE_FIRST
        or not set(name) <= _QUEUE_CHARS
    ):
        raise InvalidInput(
            f"bad {kind} name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', a letter or digit first"
        )
    return name


_AGO = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_moment(text: str, now: float, option: str) -> float:
    """A point in time for a listing's --since/--until: an ISO-8601 time (UTC without
    a zone), or a duration before `now` (`90s`, `15m`, `2h`, `7d`)."""
    value = text.strip()
    unit = _AGO.get(value[-1:].lower())
    if unit is not None:
        try:
            amount = float(value[:-1])
        except ValueError:
            amount = math.nan
        if math.isfinite(amount) and amount >= 0:
            return now - amount * unit
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"{option} must be an ISO-8601 time or a duration ago like 30s, 15m, 2h, 7d (got {text!r})"
        ) from None
