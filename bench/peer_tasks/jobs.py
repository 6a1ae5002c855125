"""The job every peer runs: the workload's shell command, run the way their users run one.

`subprocess.run(cmd, shell=True)` is `/bin/sh -c cmd`; its output is captured (a
task usually keeps what its command printed) and only its size is returned.  The
times are the task's own `time.time()` around the command: the peers' rate is the
first start to the last end, as queuectl's is its first `started_at` to its last
`finished_at`.
"""

from __future__ import annotations

import subprocess
import time


def run_shell(command: str) -> dict[str, float]:
    start = time.time()
    proc = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    end = time.time()
    return {"start": start, "end": end, "code": proc.returncode, "out": len(proc.stdout)}
