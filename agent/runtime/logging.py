"""structlog configuration: JSON lines for journald/collectors, a console renderer on a TTY.

Called once by agent.cli before the daemon starts, and again on SIGHUP when the log level changes.
When stderr is journald's stream (``$JOURNAL_STREAM`` names its device and inode, as systemd sets
it for a service), each line starts with its syslog priority (``<4>`` for a warning, see
sd-daemon(3)): journald strips it and stores PRIORITY, so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
# syslog priorities (sd-daemon(3) prefixes) by structlog level name
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
             "critical": 2}


def stderr_is_journal() -> bool:
    """True when stderr is the journald stream systemd gave the service."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def _priority_prefix(
    _logger: object, method: str, line: str | bytes
) -> str | bytes:
    """Last processor: prefix the rendered line with ``<N>`` for journald."""
    return f"<{_PRIORITY.get(method, 6)}>{line if isinstance(line, str) else line.decode()}"


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Configure structlog (and route stdlib logging of libraries through the same level)."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        renderer,
    ]
    if not use_console and stderr_is_journal():
        processors.append(_priority_prefix)  # type: ignore[arg-type]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
