"""One reader per distinct log source, fanned out to every monitor that reads it.

Built by agent.problems.detector: several NPD monitors read /dev/kmsg (kernel-monitor,
readonly-monitor, ...), and they share one fd, one queue and one consumer; likewise one file
tailer per path and one journalctl per filter. :meth:`SourceRuntime.process` parses a batch of
raw lines and feeds each monitor's matcher; it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from agent.problems.filesource import FileTailer, tail_file
from agent.problems.journal import journal_argv, parse_journal_line, run_journal
from agent.problems.kmsg import KmsgReader, boot_wall_time, parse_record
from agent.problems.linequeue import LineQueue, SourceStats
from agent.problems.matcher import Hit, Matcher
from agent.problems.model import LogSource

_SEEN = (-1.0, "")  # a kmsg record already processed before the reader was reopened


@dataclass
class Feed:
    """One monitor on a shared source: its matcher, lookback start, message extractor."""

    matcher: Matcher
    since: float
    extract: re.Pattern[str] | None = None


@dataclass
class SourceRuntime:
    """A source's reader, queue, counters and the monitors it feeds."""

    spec: LogSource
    queue: LineQueue
    feeds: list[Feed] = field(default_factory=list)
    boot: float = field(default_factory=boot_wall_time)
    kmsg: KmsgReader | None = None
    last_seq: int = -1  # kmsg: a reopened reader starts at the oldest record; skip the seen
    started: float = field(default_factory=time.time)  # journal entries before it: lookback
    _live: bool = True
    cursor: str = ""  # journald: the last entry read, where a restarted journalctl resumes

    @property
    def stats(self) -> SourceStats:
        return self.queue.stats

    def _parse(self, raw: str | bytes) -> tuple[float, str] | None:
        plugin = self.spec.plugin
        if plugin == "kmsg":
            rec = parse_record(raw)
            if rec is None:
                return None
            if rec.seq <= self.last_seq:
                return _SEEN
            self.last_seq = rec.seq
            live_seq = self.kmsg.live_seq if self.kmsg is not None else None
            self._live = live_seq is not None and rec.seq >= live_seq
            return self.boot + rec.ts, rec.message
        if plugin == "journald":
            entry = parse_journal_line(raw)
            if entry is None:
                return None
            ts, msg, cursor = entry
            self.cursor = cursor or self.cursor
            self._live = ts >= self.started
            return ts, msg
        self._live = True  # a file is followed from its end: every line is new
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return time.time(), text

    def process(self, batch: list[str | bytes]) -> list[Hit]:
        """Parse and match a batch (worker thread); returns every hit in order."""
        hits: list[Hit] = []
        matched = unparsable = 0
        for raw in batch:
            parsed = self._parse(raw)
            if parsed is _SEEN:
                continue
            if parsed is None:
                unparsable += 1
                continue
            ts, msg = parsed
            msg = msg.strip()  # as NPD's watchers do; empty messages are skipped
            if not msg:
                continue
            found = False
            for feed in self.feeds:
                if ts < feed.since:
                    continue
                text = msg
                if feed.extract is not None:
                    m = feed.extract.search(msg)
                    if m is None:
                        continue
                    text = m.group(1) if m.lastindex else m.group(0)
                new = feed.matcher.feed(ts, text)
                if new:
                    hits.extend(new if self._live else [replace(h, live=False) for h in new])
                    found = True
            matched += found
        self.stats.matched += matched
        self.stats.dropped["unparsable"] += unparsable
        return hits

    def start(self, tasks: list[asyncio.Task[None]], journalctl: str) -> None:
        """Start reading (the kmsg fd opens here and raises OSError when it cannot)."""
        spec = self.spec
        if spec.plugin == "kmsg":
            self.kmsg = KmsgReader(spec.path, self.queue)
            try:
                self.kmsg.start()
            except OSError as exc:
                self.stats.up, self.stats.last_error = False, f"{spec.path}: {exc.strerror}"
                self.kmsg = None
        elif spec.plugin == "filelog":
            tasks.append(asyncio.create_task(tail_file(FileTailer(spec.path), self.queue),
                                             name=f"problems-tail:{spec.path}"))
        else:
            # NPD reads the journal directory in logPath; where it does not exist (volatile
            # journal in /run/log/journal) journalctl's own default finds the journal.
            directory = spec.path if spec.path and os.path.isdir(spec.path) else ""

            def argv() -> list[str]:
                return journal_argv(spec.identifiers, spec.units, spec.lookback,
                                    binary=journalctl, directory=directory,
                                    after_cursor=self.cursor)

            tasks.append(asyncio.create_task(run_journal(argv, self.queue),
                                             name=f"problems-journal:{spec.key}"))

    def reopen_kmsg(self) -> None:
        """Retry a kernel log that could not be opened or failed (EACCES, a read error)."""
        if self.spec.plugin != "kmsg" or (self.kmsg is not None and self.stats.up):
            return
        if self.kmsg is not None:
            self.kmsg.close()
        self.kmsg = KmsgReader(self.spec.path, self.queue)
        try:
            self.kmsg.start()
        except OSError as exc:
            self.stats.up, self.stats.last_error = False, f"{self.spec.path}: {exc.strerror}"
            self.kmsg = None
        else:
            self.stats.last_error = None

    def close(self) -> None:
        if self.kmsg is not None:
            self.kmsg.close()
            self.kmsg = None


def build_sources(monitors: list[tuple[LogSource, Matcher]], rate: float, maxlen: int,
                  now: float, stats_for: Callable[[str], SourceStats]) -> dict[str, SourceRuntime]:
    """Group monitors by source key; the shared reader looks back as far as the longest."""
    out: dict[str, SourceRuntime] = {}
    for spec, matcher in monitors:
        rt = out.get(spec.key)
        if rt is None:
            rt = out[spec.key] = SourceRuntime(spec, LineQueue(stats_for(spec.key), maxlen, rate))
        elif spec.lookback > rt.spec.lookback:
            rt.spec = spec
        rt.feeds.append(Feed(matcher, now - spec.lookback, spec.message_regex))
    return out
