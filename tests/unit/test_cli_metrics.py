"""`queuectl metrics` through the real command line: the text on stdout, and
`--serve` scraped over HTTP from a real process."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import QHome, wait_until


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_metrics_prints_the_text_and_serves_it(qhome: QHome) -> None:
    qhome.enqueue("true", "--queue", "mail")
    r = qhome.run("metrics")
    assert r.returncode == 0 and r.stderr == ""
    assert _values(r.stdout)[("queuectl_jobs", (("queue", "mail"), ("state", "pending")))] == 1

    proc = subprocess.Popen(
        qhome.cmd("metrics", "--serve", "127.0.0.1:0"),
        env=qhome.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = wait_until(proc.stderr.readline, 15, "the server to listen")
        url = line.split()[2]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        qhome.enqueue("true", "--queue", "mail")
        # A client that connects and sends nothing does not hold up the scrapes.
        host, port = url.split("/")[2].split(":")
        idle = socket.create_connection((host, int(port)), timeout=10)
        with idle, urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = resp.read().decode()
        assert _values(body)[("queuectl_jobs", (("queue", "mail"), ("state", "pending")))] == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_a_bad_listen_address_is_one_line_and_exit_2(qhome: QHome) -> None:
    for bad in ("localhost:http", "1.2.3.4:99999", "203.0.113.1:9464"):
        r = qhome.run("metrics", "--serve", bad)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (bad, r.stderr)
