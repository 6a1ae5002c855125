"""Fill a peer's queue before a drain, and read its jobs' results back after it.

    python ctl.py huey-enqueue --count N --command CMD        (QB_HUEY_DB names the file)
    python ctl.py huey-collect
    python ctl.py rq-enqueue --url URL --queue Q --ids FILE --count N --command CMD
    python ctl.py rq-collect --url URL --queue Q --ids FILE    (then deletes the run's keys)

Run under bench/.venv-peers with this folder on PYTHONPATH.  `*-collect` prints one
JSON object: how many jobs reported, how many failed (an exception, a non-zero exit
or not finished), the first start and last end the tasks recorded, and the smallest
and largest output captured.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def summary(results: Iterable[Any], failed: int = 0) -> dict[str, float]:
    done = [r for r in results if isinstance(r, dict)]
    bad = failed + sum(1 for r in done if r["code"] != 0)
    outs = [r["out"] for r in done] or [0]
    return {
        "jobs": len(done),
        "failed": bad,
        "start": min((r["start"] for r in done), default=0.0),
        "end": max((r["end"] for r in done), default=0.0),
        "out_min": min(outs),
        "out_max": max(outs),
    }


def huey_enqueue(count: int, command: str) -> None:
    from huey_tasks import shell

    for _ in range(count):
        shell(command)


def huey_collect() -> dict[str, float]:
    from huey.utils import Error
    from huey_tasks import huey

    values = [huey.serializer.deserialize(v) for v in huey.all_results().values()]
    return summary(values, failed=sum(1 for v in values if isinstance(v, Error)))


def rq_enqueue(url: str, queue: str, ids: Path, count: int, command: str) -> None:
    from redis import Redis
    from rq import Queue

    q = Queue(queue, connection=Redis.from_url(url))
    jobs = q.enqueue_many([Queue.prepare_data("rq_tasks.shell", (command,)) for _ in range(count)])
    ids.write_text("\n".join(j.id for j in jobs))


def rq_collect(url: str, queue: str, ids: Path) -> dict[str, float]:
    from redis import Redis
    from rq.job import Job, JobStatus

    conn = Redis.from_url(url)
    wanted = ids.read_text().split()
    try:
        jobs = [j for j in Job.fetch_many(wanted, connection=conn) if j is not None]
        ok = [j for j in jobs if j.get_status() == JobStatus.FINISHED]
        return summary([j.return_value() for j in ok], failed=len(wanted) - len(ok))
    finally:
        _rq_forget(conn, queue, set(wanted))


def _rq_forget(conn: Any, queue: str, ids: set[str]) -> None:
    """Delete every key of this run (its queue, registries, jobs and results) and
    nothing else: the server may be shared."""
    keys = [k.decode() for k in conn.scan_iter(count=1000)]
    doomed = [k for k in keys if queue in k or not ids.isdisjoint(k.split(":"))]
    for i in range(0, len(doomed), 500):
        conn.delete(*doomed[i : i + 500])
    conn.srem("rq:queues", f"rq:queue:{queue}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=("huey-enqueue", "huey-collect", "rq-enqueue", "rq-collect"))
    ap.add_argument("--count", type=int)
    ap.add_argument("--command")
    ap.add_argument("--url")
    ap.add_argument("--queue")
    ap.add_argument("--ids", type=Path)
    a = ap.parse_args(argv)
    if a.action == "huey-enqueue":
        huey_enqueue(a.count, a.command)
    elif a.action == "huey-collect":
        print(json.dumps(huey_collect()))
    elif a.action == "rq-enqueue":
        rq_enqueue(a.url, a.queue, a.ids, a.count, a.command)
    else:
        print(json.dumps(rq_collect(a.url, a.queue, a.ids)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
