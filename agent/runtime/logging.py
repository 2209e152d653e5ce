"""structlog configuration: JSON lines for journald/collectors, a console renderer on a TTY.

Called once by agent.cli before the daemon starts, and again on SIGHUP when the log level changes.
Records of libraries' stdlib loggers (aiohttp.server, aiohttp.access, aiohttp.web, asyncio,
py.warnings, ...) go through structlog's ProcessorFormatter with the same renderer, so each is one
JSON object too (logger name, level, timestamp; a traceback is the ``exception`` string), and so
are warnings, exceptions ignored in ``__del__`` and exceptions escaping a thread.

When stderr is journald's stream (``$JOURNAL_STREAM`` names its device and inode, as systemd sets
it for a service), each line starts with its syslog priority (``<4>`` for a warning, see
sd-daemon(3)): journald strips it and stores PRIORITY, so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
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
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    processors: list[structlog.typing.Processor] = [
        *shared,
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), handlers=[handler],
                        force=True)
    logging.captureWarnings(True)
    sys.unraisablehook = _log_unraisable
    threading.excepthook = _log_thread_exception


def _log_unraisable(u: sys.UnraisableHookArgs) -> None:
    exc = (u.exc_type, u.exc_value, u.exc_traceback) if u.exc_value is not None else None
    logging.getLogger("python.unraisable").error(
        "%s: %r", u.err_msg or "Exception ignored in", u.object, exc_info=exc)


def _log_thread_exception(a: threading.ExceptHookArgs) -> None:
    exc = (a.exc_type, a.exc_value, a.exc_traceback) if a.exc_value is not None else None
    name = a.thread.name if a.thread is not None else "?"
    logging.getLogger("python.thread").error("uncaught exception in thread %s", name,
                                             exc_info=exc)
