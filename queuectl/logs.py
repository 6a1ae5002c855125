"""structlog set-up: JSON events, one object per line, no global configuration.

Workers and the monitor log their events to stderr (supervisord writes them to
files under logs/); recovery logs for auditors are separate files (monitor.py).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import structlog


def json_logger(stream: TextIO | None = None, **bound: Any) -> Any:
    """A structlog logger writing JSON lines (ISO-8601 UTC timestamps) to `stream`."""
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        context_class=dict,
        cache_logger_on_first_use=True,
    ).bind(**bound)
