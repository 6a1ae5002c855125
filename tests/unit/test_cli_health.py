"""`queuectl health` through the real command line: exit 0 when served, 1 with one
line per problem, --json; the workers asked for under supervisord."""

from __future__ import annotations

import json

from tests.helpers import QHome


def test_health_exit_codes_lines_and_json(qhome: QHome) -> None:
    qhome.enqueue("true")
    r = qhome.run("health")
    assert r.returncode == 1, r.stderr
    assert r.stdout == "recovery: no recovery pass has run yet: start a monitor or a worker\n"
    qhome.invoke("recover")  # one pass by hand
    r = qhome.run("health")
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")
    assert json.loads(qhome.run("health", "--json").stdout) == {"healthy": True, "problems": []}

    # Workers asked for (`worker start --count 2`) whose supervisord is gone.
    (qhome.path / "run").mkdir(mode=0o700, exist_ok=True)
    (qhome.path / "run" / "workers.count").write_text("2\n")
    r = qhome.run("health", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout) == {
        "healthy": False,
        "problems": [
            {"check": "workers", "message": "asked for 2 worker(s), but supervisord is not running"}
        ],
    }
    # `worker stop` asks for none: the shortfall is gone.
    assert qhome.run("worker", "stop").returncode == 0
    assert qhome.run("health").returncode == 0
