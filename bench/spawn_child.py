"""One process of the spawn limit: start `/bin/sh -c COMMAND` COUNT times, one at a time.

The flags are the executor's (queuectl/executor.py): a new session, stdin from
/dev/null, stdout and stderr to files, close_fds; then wait for the child.  The
environment is inherited (the executor passes its own dict; that cost belongs to
the queue, not to the limit).  Prints one JSON object: the wall-clock times of the
first start and the last exit, and how many commands ran.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--command", default="true")
    args = ap.parse_args()
    argv = ["/bin/sh", "-c", args.command]
    failed = 0
    with tempfile.TemporaryFile(buffering=0) as out, tempfile.TemporaryFile(buffering=0) as err:
        start = time.time()
        for _ in range(args.count):
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            if proc.wait() != 0:
                failed += 1
        end = time.time()
    print(json.dumps({"start": start, "end": end, "count": args.count, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
