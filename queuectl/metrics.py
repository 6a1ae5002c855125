"""Prometheus text exposition (format 0.0.4) of one queue, for node_exporter's
textfile collector (`queuectl metrics > FILE`) or a scrape (`metrics --serve`).

Written by hand, without a client library: each scrape reads the database afresh
(Store.job_metrics and the workers and pass-lease rows), so there is no registry to
keep, and nothing is imported that a worker would load.  Names follow Prometheus's
conventions: a `queuectl_` prefix, base units in the name (`_seconds`), `_total` on
counters.  The counters and the histogram are computed from the jobs and history the
database still holds: a purge (or retention) lowers them, which Prometheus's rate()
treats as a counter reset.
"""

from __future__ import annotations

from typing import Any

from queuectl.models import MONITOR_LEASE, JobMetrics, JobState, LeaseInfo, Reason

#: The run-time histogram's bucket bounds, in seconds (+Inf is added).
BOUNDS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

#: The content type of the text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(queue: Any, now: float | None = None) -> str:
    """Every metric of `queue` (an api.Queue) at `now` (the store's clock by default)."""
    store = queue.store
    t = store.now() if now is None else now
    out = _Text()
    _jobs(out, store.job_metrics(BOUNDS, t))
    _workers(out, queue, t, store.lease_info(MONITOR_LEASE))
    return out.text()


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: str) -> None:
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{text}}} {_num(value)}" if text else f"{name} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _jobs(out: _Text, jm: JobMetrics) -> None:
    per_queue: dict[str, dict[str, tuple[int, int]]] = {}
    for q, state, n, attempts in jm.jobs:
        per_queue.setdefault(q, {})[state] = (n, attempts)
    for i, (name, what) in enumerate(
        (
            ("queuectl_jobs", "Jobs in the database, by queue and state."),
            ("queuectl_job_attempts", "Attempts spent by the jobs in the database, by queue and state."),
        )
    ):
        out.family(name, "gauge", what)
        for q in sorted(per_queue):
            for s in JobState:
                out.sample(name, per_queue[q].get(s.value, (0, 0))[i], queue=q, state=s.value)
    name = "queuectl_job_run_seconds"
    out.family(name, "histogram", "Run time of the last attempt of each completed job in the database.")
    for bound, n in zip(jm.bounds, jm.runtime_buckets, strict=True):
        out.sample(f"{name}_bucket", n, le=_num(bound))
    out.sample(f"{name}_bucket", jm.runtime_count, le="+Inf")
    out.sample(f"{name}_sum", jm.runtime_sum)
    out.sample(f"{name}_count", jm.runtime_count)
    name = "queuectl_recoveries_total"
    out.family(name, "counter", "Attempts ended by a recovery, by reason (stored history).")
    for r in Reason:
        out.sample(name, jm.recoveries.get(r.value, 0), reason=r.value)
    name = "queuectl_oldest_due_job_age_seconds"
    out.family(name, "gauge", "Seconds the longest-waiting due job (pending or failed) has waited; 0: none.")
    out.sample(name, 0.0 if jm.oldest_due_at is None else max(0.0, jm.now - jm.oldest_due_at))


def _workers(out: _Text, queue: Any, t: float, info: LeaseInfo | None) -> None:
    cutoff = t - queue.config().heartbeat_timeout
    workers = queue.workers()
    name = "queuectl_workers_alive"
    out.family(name, "gauge", "Workers whose last heartbeat is within heartbeat_timeout.")
    out.sample(name, sum(w.heartbeat_at >= cutoff for w in workers))
    name = "queuectl_worker_heartbeat_age_seconds"
    out.family(name, "gauge", "Seconds since each registered worker's last heartbeat.")
    for w in sorted(workers, key=lambda w: w.id):
        out.sample(name, max(0.0, t - w.heartbeat_at), worker_id=w.id, host=w.host)
    if info is not None and info.last_pass_at is not None:
        name = "queuectl_recovery_pass_age_seconds"
        out.family(name, "gauge", "Seconds since the last completed recovery pass.")
        out.sample(name, max(0.0, t - info.last_pass_at))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(x: float) -> str:
    if isinstance(x, int):
        return str(x)
    return repr(float(x)) if not float(x).is_integer() else f"{float(x):.1f}"


def parse_listen(text: str) -> tuple[str, int]:
    """`--serve HOST:PORT`, `:PORT` or `PORT` (host 127.0.0.1) -> (host, port);
    ValueError with the reason."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f"--serve must be HOST:PORT, :PORT or PORT with a port from 0 to 65535, not {text!r}"
        )
    return host, int(port)


#: Seconds a client of `metrics --serve` may stay silent before it is dropped.
CLIENT_TIMEOUT = 10.0


def serve(queue: Any, host: str, port: int, ready: Any) -> None:
    """Answer GET /metrics (and /) with render(queue) until interrupted.  Each client
    has a thread of its own (one that connects and sends nothing holds up no scrape,
    and is dropped after CLIENT_TIMEOUT); the renders take turns on this process's one
    store connection.  `ready(url)` is called once listening."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    turn = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        timeout = CLIENT_TIMEOUT

        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            try:
                with turn:
                    body = render(queue).encode()
            except Exception as exc:  # a scrape that fails says why; the server goes on
                self.send_error(503, explain=f"{type(exc).__name__}: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # no access log on stderr

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    try:
        bound_host, bound_port = server.server_address[:2]
        ready(f"http://{bound_host!s}:{bound_port}/metrics")
        server.serve_forever()
    finally:
        server.server_close()
