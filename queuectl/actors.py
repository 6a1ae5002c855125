"""Who an audited change is by: the `actor` of its events (store/trail.py).

A worker is its worker id; the monitor `monitor:<host>:<pid>`; any other process
(a CLI command, a program using the library) the OS user and host, `user@host`.
Imports nothing but os: `queuectl enqueue` names its actor too.
"""

from __future__ import annotations

import os


def cli_actor() -> str:
    """This process's OS user and host, `user@host` (the uid when no name is known)."""
    user = ""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        user = os.environ.get(name, "")
        if user:
            break
    if not user:
        try:
            import pwd

            user = pwd.getpwuid(os.getuid()).pw_name
        except (ImportError, KeyError):
            user = str(os.getuid())
    return f"{user}@{os.uname().nodename}"


def monitor_actor(role: str = "monitor") -> str:
    """`role:host:pid` of this process, for the monitor's changes."""
    return f"{role}:{os.uname().nodename}:{os.getpid()}"
