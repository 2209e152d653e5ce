"""The kernel ring buffer, /dev/kmsg: record parsing and a non-blocking reader.

Each read(2) of /dev/kmsg returns exactly one record, ``prio,seq,ts_usec,flags[,...];message``
followed by continuation lines `` KEY=value`` (SUBSYSTEM=, DEVICE=), all newline-terminated
(Documentation/ABI/testing/dev-kmsg). ``ts_usec`` is microseconds of the kernel's local clock
since boot. A reader opened at the start sees every record still in the buffer; when its position
was overwritten by newer records read(2) fails with EPIPE once and continues at the oldest record:
we count that as ``overwritten`` and go on. With O_NONBLOCK, EAGAIN means "nothing more now".

The reader runs on the event loop through ``loop.add_reader`` and reads at most ``chunk``
records per wake-up, so a flood never starves the loop; records go raw into a
:class:`agent.problems.linequeue.LineQueue` and are parsed in the consumer's worker thread.
Records older than the lookback window are skipped by the parser (NPD's behaviour).
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from dataclasses import dataclass

from agent.problems.linequeue import LineQueue

RECORD_MAX = 8192  # the kernel's record size limit (CONSOLE_EXT_LOG_MAX)


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    """One parsed record: syslog priority (facility << 3 | level), sequence number, boot-relative
    timestamp in seconds, the message and its continuation properties."""

    priority: int
    seq: int
    ts: float
    message: str
    props: tuple[tuple[str, str], ...] = ()


def parse_record(raw: bytes | str) -> KmsgRecord | None:
    """Parse one /dev/kmsg record; None when it does not have the kernel's format."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    head, sep, rest = text.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 3:
        return None
    try:
        prio, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    message, *cont = rest.rstrip("\n").split("\n")
    props = tuple(
        (k.strip(), v) for k, _, v in (c.partition("=") for c in cont if c.startswith(" "))
    )
    return KmsgRecord(prio, seq, usec / 1e6, message, props)


def _seq(raw: bytes) -> int | None:
    try:
        return int(raw.split(b",", 2)[1])
    except (IndexError, ValueError):
        return None


def boot_wall_time() -> float:
    """Wall-clock time of boot as the kernel's log clock sees it (CLOCK_MONOTONIC origin)."""
    return time.time() - time.monotonic()


class KmsgReader:
    """Reads /dev/kmsg (or another kmsg-format character device) into a queue."""

    def __init__(self, path: str, queue: LineQueue, chunk: int = 256) -> None:
        self.path = path
        self.queue = queue
        self.chunk = chunk
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Records with a sequence number from here on were logged after we opened the device:
        # "live" (Events, counters), as opposed to the lookback backlog. Decided by sequence,
        # not time: the kernel's log clock drifts from the wall clock over a long uptime.
        self.live_seq: int | None = None
        self._last_seq = -1

    def start(self) -> None:
        """Open the device and register with the event loop; raises OSError (e.g. EACCES)."""
        self._loop = asyncio.get_running_loop()
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._loop.add_reader(self._fd, self._on_readable)
        self.queue.stats.up = True

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        batch: list[str | bytes] = []
        stats = self.queue.stats
        for _ in range(self.chunk):
            try:
                raw = os.read(fd, RECORD_MAX)
            except BlockingIOError:
                if self.live_seq is None:  # the backlog present at open is drained
                    self.live_seq = self._last_seq + 1
                break
            except BrokenPipeError:  # EPIPE: records we had not read were overwritten
                stats.dropped["overwritten"] += 1
                continue
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # record larger than our buffer: skip it
                    stats.dropped["too_long"] += 1
                    continue
                stats.last_error = f"read {self.path}: {exc.strerror}"
                stats.up = False
                self.close()
                return
            if not raw:
                break
            seq = _seq(raw)
            if seq is not None:
                self._last_seq = seq
            batch.append(raw)
        if batch:
            self.queue.put_many(batch)

    def close(self) -> None:
        if self._fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
