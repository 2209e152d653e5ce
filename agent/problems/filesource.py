"""Tail a plain log file across rotation and truncation (NPD's filelog plugin).

Polled (no inotify dependency): every ``interval`` seconds a worker thread reads what was
appended, at most ``max_bytes`` per poll so memory stays bounded. Rotation (the path now names
another inode) is followed after draining the old file; truncation (the file became shorter than
our offset) restarts at 0. A file written faster than lines are matched is read behind
(backpressure from the queue), never dropped, except by the rate limit. The reader starts at
the end of the file: NPD re-reads the lookback window by parsing each line's timestamp, which
nodemedic does not do for files (documented difference). A line longer than ``max_line``
bytes is cut and counted ``too_long``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import BinaryIO

from agent.problems.linequeue import LineQueue


class FileTailer:
    """State of one tailed file; :meth:`poll` runs in a worker thread."""

    def __init__(self, path: str, max_bytes: int = 1 << 20, max_line: int = 16384,
                 from_start: bool = False) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_line = max_line
        self._fh: BinaryIO | None = None
        self._ino: tuple[int, int] | None = None
        self._partial = b""
        self._from_start = from_start
        self.too_long = 0
        self.rotations = 0

    def _open(self, at_end: bool) -> None:
        fh = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
        st = os.fstat(fh.fileno())
        if at_end:
            fh.seek(0, os.SEEK_END)
        self._fh, self._ino, self._partial = fh, (st.st_dev, st.st_ino), b""

    def poll(self) -> list[bytes]:
        """Lines appended since the last poll (raises OSError while the file is missing)."""
        if self._fh is None:
            try:
                self._open(at_end=not self._from_start)
            finally:
                self._from_start = True  # a file that appears (again) later is read whole
        assert self._fh is not None
        lines = self._read(self._fh)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return lines  # rotated away and not yet re-created: keep the old one
        if (st.st_dev, st.st_ino) != self._ino:
            lines += self._read(self._fh)  # drain what was written before the rotation
            self._fh.close()
            self._open(at_end=False)
            self.rotations += 1
            lines += self._read(self._fh)
        elif st.st_size < self._fh.tell():
            self._fh.seek(0)
            self._partial = b""
            lines += self._read(self._fh)
        return lines

    def _read(self, fh: BinaryIO) -> list[bytes]:
        data = fh.read(self.max_bytes)
        if not data:
            return []
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self.max_line:
            self._partial = b""
            self.too_long += 1
        long = sum(1 for ln in lines if len(ln) > self.max_line)
        if long:
            self.too_long += long
            return [ln[: self.max_line] for ln in lines]
        return lines

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def tail_file(tailer: FileTailer, queue: LineQueue, interval: float = 0.5) -> None:
    """Poll ``tailer`` forever and feed ``queue``; errors are kept for /status and retried."""
    stats = queue.stats
    try:
        while True:
            try:
                lines = await asyncio.to_thread(tailer.poll)
            except OSError as exc:
                stats.up, stats.last_error = False, f"{tailer.path}: {exc.strerror or exc}"
                tailer.close()
            else:
                stats.up, stats.last_error = True, None
                stats.dropped["too_long"] = tailer.too_long
                for i in range(0, len(lines), 1000):
                    await queue.wait_room(1000)  # lag behind the file rather than drop
                    queue.put_many(lines[i:i + 1000])
                if len(lines) > 1000:
                    continue  # more is probably waiting: poll again at once
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(OSError):
            tailer.close()
