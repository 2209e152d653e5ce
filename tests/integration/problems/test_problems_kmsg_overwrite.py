"""EPIPE from the real /dev/kmsg: records a reader had not read yet are overwritten by newer ones.

The kernel answers the next read(2) with EPIPE once and continues at the oldest record still in
the ring buffer (Documentation/ABI/testing/dev-kmsg). Provoked here for real: a reader is opened,
then more than the whole ring buffer (its size from syslog(2) SYSLOG_ACTION_SIZE_BUFFER) is
written before the event loop lets it read. The reader must count the loss as ``overwritten``
and go on reading: the line written after the flood arrives.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time

import pytest

from agent.problems.kmsg import KmsgReader
from agent.problems.linequeue import LineQueue, SourceStats

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("need_kmsg")]

SYSLOG_ACTION_SIZE_BUFFER = 10


def ring_size() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    size = int(libc.klogctl(SYSLOG_ACTION_SIZE_BUFFER, None, 0))
    assert size > 0, f"syslog(SIZE_BUFFER) failed: errno {ctypes.get_errno()}"
    return size


async def test_overwritten_records_are_counted_and_reading_goes_on(marker: str) -> None:
    stats = SourceStats()
    queue = LineQueue(stats, maxlen=1_000_000, rate=1e9)
    reader = KmsgReader("/dev/kmsg", queue, chunk=256)
    reader.start()
    try:
        # No await until the flood is written: the loop cannot run the reader meanwhile.
        payload = f"{marker} flood " + "x" * 150
        # Each stored record costs its text plus ~16-32 bytes of header: 2x the buffer is plenty.
        for i in range(2 * ring_size() // len(payload) + 100):
            fd = os.open("/dev/kmsg", os.O_WRONLY)  # one open per line: writes are rate-limited
            try:                                     # per open file
                os.write(fd, f"<6>{payload} {i}\n".encode())
            finally:
                os.close(fd)
        fd = os.open("/dev/kmsg", os.O_WRONLY)
        os.write(fd, f"<6>{marker} after the flood\n".encode())
        os.close(fd)

        seen: list[str] = []
        end = time.monotonic() + 20
        while not any(f"{marker} after the flood" in line for line in seen):
            assert time.monotonic() < end, f"the line after the flood never came: {stats}"
            for raw in await asyncio.wait_for(queue.get_batch(5000), 5):
                seen.append(raw.decode() if isinstance(raw, bytes) else raw)
        assert stats.dropped["overwritten"] >= 1, stats
        assert stats.up and stats.last_error is None
    finally:
        reader.close()
