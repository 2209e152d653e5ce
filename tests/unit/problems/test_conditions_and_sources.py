"""The condition state machine, the kmsg record format, file tailing and the bounded queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.problems.conditions import ConditionBook, rfc3339
from agent.problems.filesource import FileTailer
from agent.problems.kmsg import parse_record
from agent.problems.linequeue import LineQueue, SourceStats
from agent.problems.model import ConditionDef

DEFS = {"ReadonlyFilesystem": ConditionDef("ReadonlyFilesystem", "FilesystemIsNotReadOnly",
                                           "fine")}


def test_transition_time_changes_only_with_status() -> None:
    """A new reason or message while True keeps lastTransitionTime; recovery moves it."""
    book = ConditionBook(DEFS, now=100)
    assert book.set_problem("ReadonlyFilesystem", "A", "m1", 200)
    assert not book.set_problem("ReadonlyFilesystem", "B", "m2", 300)
    (c,) = book.api_conditions(heartbeat=400)
    assert (c["status"], c["reason"], c["lastTransitionTime"]) == ("True", "B", rfc3339(200))
    assert c["lastHeartbeatTime"] == rfc3339(400)
    assert book.set_default("ReadonlyFilesystem", 500)
    (c,) = book.api_conditions(heartbeat=500)
    assert (c["status"], c["reason"], c["lastTransitionTime"]) == \
        ("False", "FilesystemIsNotReadOnly", rfc3339(500))


def test_clear_after_expires_and_is_refreshed() -> None:
    """clear_after counts from the latest match."""
    book = ConditionBook(DEFS, now=0)
    book.set_problem("ReadonlyFilesystem", "A", "m", 10, clear_after=60)
    book.set_problem("ReadonlyFilesystem", "A", "m", 50, clear_after=60)
    assert book.expire(100) == []
    assert book.expire(110) == ["ReadonlyFilesystem"]


def test_restore_adopts_node_state_but_resets_kernel_problems_of_an_old_boot() -> None:
    """A restart adopts True with its transition time; a kernel-log problem raised before
    this boot is reset; a condition we changed since start is not overwritten."""
    node = [{"type": "ReadonlyFilesystem", "status": "True", "reason": "FilesystemIsReadOnly",
             "message": "m", "lastTransitionTime": rfc3339(1000)},
            {"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(1)}]
    book = ConditionBook(DEFS, now=5000)
    assert book.restore(node, boot_time=500, kernel_reasons=frozenset({"FilesystemIsReadOnly"}),
                        clear_after={}, now=5000) == ["ReadonlyFilesystem"]
    assert book.states["ReadonlyFilesystem"].transition == 1000
    assert set(book.states) == {"ReadonlyFilesystem"}  # Ready is not ours
    rebooted = ConditionBook(DEFS, now=5000)
    rebooted.restore(node, boot_time=2000, kernel_reasons=frozenset({"FilesystemIsReadOnly"}),
                     clear_after={}, now=5000)
    assert rebooted.states["ReadonlyFilesystem"].status == "False"
    touched = ConditionBook(DEFS, now=5000)
    touched.set_problem("ReadonlyFilesystem", "New", "m", 5001)
    assert touched.restore(node, 0, frozenset(), {}, 5002) == []
    assert touched.states["ReadonlyFilesystem"].reason == "New"


def test_kmsg_record_format() -> None:
    """prio,seq,ts_usec,flags;message plus ' KEY=value' continuation lines."""
    rec = parse_record(b"6,339,5140900,-;NET: Registered protocol family 10\n"
                       b" SUBSYSTEM=net\n DEVICE=+net:lo\n")
    assert rec is not None
    assert (rec.priority, rec.seq, rec.ts, rec.message) == \
        (6, 339, 5.1409, "NET: Registered protocol family 10")
    assert rec.props == (("SUBSYSTEM", "net"), ("DEVICE", "+net:lo"))
    assert parse_record(b"garbage without a header") is None
    assert parse_record(b"x,y,z;msg") is None


def test_file_tailer_follows_rotation_and_truncation(tmp_path: Path) -> None:
    """Lines appended are read once; a rotated file is drained then the new one read from its
    start; a truncated file is re-read from 0; the file's old content is skipped at start."""
    log = tmp_path / "kern.log"
    log.write_bytes(b"old line\n")
    t = FileTailer(str(log))
    assert t.poll() == []
    with log.open("ab") as fh:
        fh.write(b"one\ntw")
    assert t.poll() == [b"one"]
    with log.open("ab") as fh:
        fh.write(b"o\n")
    assert t.poll() == [b"two"]
    with log.open("ab") as fh:
        fh.write(b"before-rotation\n")
    log.rename(tmp_path / "kern.log.1")
    log.write_bytes(b"after-rotation\n")
    assert t.poll() == [b"before-rotation", b"after-rotation"]
    log.write_bytes(b"x\n")  # truncated in place (shorter than our offset)
    assert t.poll() == [b"x"]
    assert t.rotations == 1
    t.close()


async def test_queue_bounds_and_counts_drops() -> None:
    """Over the rate limit lines are dropped as 'rate', over the queue size as 'queue';
    everything below both limits is delivered in order."""
    now = [0.0]
    stats = SourceStats()
    q = LineQueue(stats, maxlen=5, rate=10, clock=lambda: now[0])
    q.put_many([f"l{i}" for i in range(8)])
    assert (len(q), stats.dropped["queue"], stats.dropped["rate"]) == (5, 3, 0)
    assert await q.get_batch(10) == [f"l{i}" for i in range(5)]
    q.put_many([f"m{i}" for i in range(5)])  # tokens: 10 - 8 = 2 left
    assert (len(q), stats.dropped["rate"]) == (2, 3)
    now[0] = 1.0
    q.put_many(["n"])
    assert stats.read == 14 and len(q) == 3
    waiter = asyncio.create_task(q.get_batch(1))
    assert (await waiter) == ["m0"]


def test_reopened_kmsg_does_not_replay_records() -> None:
    """After a reopen the kernel hands out the buffer from its oldest record again: records
    already seen (by sequence number) are not matched a second time."""
    from agent.problems.matcher import Matcher
    from agent.problems.model import LogMonitor, LogRule, LogSource
    from agent.problems.pattern import compile_rule
    from agent.problems.sources import Feed, SourceRuntime

    regex, multi = compile_rule("Remounting filesystem read-only")
    mon = LogMonitor("m", "f", LogSource("kmsg", "/dev/kmsg"), 10, (),
                     (LogRule("temporary", "RO", "x", regex, multi),))
    rt = SourceRuntime(LogSource("kmsg", "/dev/kmsg"), LineQueue(SourceStats()), boot=0.0)
    rt.feeds.append(Feed(Matcher(mon), since=0.0))
    rec = [b"3,%d,1000,-;EXT4-fs (sda1): Remounting filesystem read-only\n" % s for s in (7, 8)]
    assert len(rt.process(rec)) == 2
    assert rt.process(rec) == []  # the same records again after a reopen
    assert len(rt.process([rec[1].replace(b"3,8,", b"3,9,")])) == 1
