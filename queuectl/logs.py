"""structlog set-up: JSON events, one object per line, no global configuration.

Workers and the monitor log their events to stderr (supervisord writes them to
files under logs/); recovery logs for auditors are separate files (monitor.py).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

#: QUEUECTL_LOG_LEVEL=debug also logs every completed job (one line per job costs a
#: busy worker several percent of its throughput; the history has every attempt).
LEVEL_ENV = "QUEUECTL_LOG_LEVEL"


def log_level() -> int:
    name = os.environ.get(LEVEL_ENV, "info").strip().upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


def json_logger(stream: TextIO | None = None, **bound: Any) -> Any:
    """A structlog logger writing JSON lines (ISO-8601 UTC timestamps) to `stream`;
    events below QUEUECTL_LOG_LEVEL (default info) cost next to nothing."""
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(log_level()),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        context_class=dict,
        cache_logger_on_first_use=True,
    ).bind(**bound)
