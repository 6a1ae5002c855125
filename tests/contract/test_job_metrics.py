"""Store.job_metrics on both stores, at fixed instants, and the exposition text
`queuectl metrics` makes of it, read back with Prometheus's own parser."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from queuectl import metrics, procs
from queuectl.api import Queue
from queuectl.models import MONITOR_LEASE, NewJob, Reason, WorkerInfo
from queuectl.monitor import Monitor
from queuectl.store import Store
from queuectl.store.outcome import Completed, Retry
from tests.helpers import T0


def _new(job_id: str, queue: str = "default", run_at: float = T0) -> NewJob:
    return NewJob(id=job_id, command="true", max_retries=1, priority=0, timeout=1, run_at=run_at, queue=queue)


def _finish(store: Store, at: float, ran: float, outcome: object) -> None:
    job = store.claim("w1", now=at)
    assert job is not None
    assert store.finish(job.id, job.lease, outcome, now=at + ran)  # type: ignore[arg-type]


def test_job_metrics_counts_runtimes_recoveries_and_the_oldest_due(store: Store, tmp_path: Path) -> None:
    store.enqueue([_new("a"), _new("b"), _new("c"), _new("r", queue="reports", run_at=T0 + 100)], T0)
    _finish(store, T0, 0.3, Completed())  # a: 0.3 s
    _finish(store, T0 + 1, 7.0, Completed())  # b: 7 s
    _finish(store, T0 + 10, 1.0, Retry(T0 + 20, 1, "exit 1"))  # c: failed, due at T0 + 20
    # A job of a live worker, past its timeout, is recovered (reason: timeout).
    store.register_worker(
        WorkerInfo(
            id="w9",
            host=procs.hostname(),
            pid=os.getpid(),
            proc_start=procs.proc_start(os.getpid()),
            started_at=T0 + 30,
            heartbeat_at=T0 + 30,
        )
    )
    store.enqueue([_new("t")], T0 + 30)
    stuck = store.claim("w9", now=T0 + 30)
    assert stuck is not None and stuck.id == "t"
    store.config_set({"kill_grace": "0", "timeout_grace": "0"})
    Monitor(store, queue="k", logs_dir=tmp_path / "logs").run_once(now=T0 + 40)

    jm = store.job_metrics(metrics.BOUNDS, now=T0 + 50)
    rows = {(q, s): (n, a) for q, s, n, a in jm.jobs}
    assert rows[("default", "completed")] == (2, 2)
    assert rows[("default", "failed")] == (2, 2)  # c (retrying) and t (recovered)
    assert rows[("reports", "pending")] == (1, 0)
    assert (jm.runtime_count, round(jm.runtime_sum, 6)) == (2, 7.3)
    assert dict(zip(jm.bounds, jm.runtime_buckets, strict=True))[0.5] == 1
    assert dict(zip(jm.bounds, jm.runtime_buckets, strict=True))[10.0] == 2
    assert jm.recoveries == {Reason.TIMEOUT.value: 1}
    assert jm.oldest_due_at == T0 + 20  # c; "reports" is not due until T0 + 100
    assert store.job_metrics(metrics.BOUNDS, now=T0 + 5).oldest_due_at is None


def test_the_exposition_parses_with_prometheus_own_parser(store: Store) -> None:
    store.enqueue([_new("a"), _new("b", queue='re"ports')], T0)
    _finish(store, T0, 2.0, Completed())
    assert store.acquire_lease(MONITOR_LEASE, "m", "monitor", 10, now=T0 + 3)
    assert store.release_lease(MONITOR_LEASE, "m", True, now=T0 + 3)
    text = metrics.render(Queue(store), now=T0 + 10)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert families["queuectl_jobs"].type == "gauge"
    assert samples[("queuectl_jobs", (("queue", "default"), ("state", "completed")))] == 1
    assert samples[("queuectl_jobs", (("queue", 're"ports'), ("state", "pending")))] == 1
    assert samples[("queuectl_jobs", (("queue", "default"), ("state", "dead")))] == 0
    assert families["queuectl_job_run_seconds"].type == "histogram"
    assert samples[("queuectl_job_run_seconds_bucket", (("le", "1.0"),))] == 0
    assert samples[("queuectl_job_run_seconds_bucket", (("le", "5.0"),))] == 1
    assert samples[("queuectl_job_run_seconds_bucket", (("le", "+Inf"),))] == 1
    assert samples[("queuectl_job_run_seconds_sum", ())] == 2.0
    assert families["queuectl_recoveries"].type == "counter"  # the parser drops _total
    assert samples[("queuectl_recoveries_total", (("reason", "worker_died"),))] == 0
    assert samples[("queuectl_oldest_due_job_age_seconds", ())] == 10.0  # b, due since T0
    assert samples[("queuectl_recovery_pass_age_seconds", ())] == 7.0
    assert samples[("queuectl_workers_alive", ())] == 0


def test_finished_since_counts_the_attempts_that_ended_in_the_window(store: Store) -> None:
    store.enqueue([_new("a"), _new("b"), _new("c")], T0)
    _finish(store, T0, 1.0, Completed())  # a ends at T0 + 1
    _finish(store, T0 + 10, 1.0, Retry(T0 + 100, 1, "exit 1"))  # b fails at T0 + 11
    _finish(store, T0 + 20, 1.0, Completed())  # c ends at T0 + 21
    assert store.finished_since(T0 + 5) == {"failed": 1, "completed": 1}
    assert store.finished_since(T0) == {"failed": 1, "completed": 2}
    assert store.finished_since(T0 + 30) == {}
