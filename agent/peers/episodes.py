"""What the failover leader remembers about each node: one record per node, pruned as a whole.

Used by agent.peers.stage and agent.peers.work. Every piece of per-node memory the leader keeps
between two evaluations lives in one :class:`NodeEpisode`, so forgetting a deleted node
(autoscaled clusters churn through names) is deleting one record, and a new field cannot be
forgotten by the pruning. Nothing here is persisted: what must survive a restart or a new leader
lives in the node's state annotation (agent.peers.remedy).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

PRUNE_SLACK = 16  # names remembered beyond the node count before a prune pass runs


@dataclass
class NodeEpisode:
    """The leader's memory of one node (its current or last failover episode)."""

    announced: str | None = None  # the state we last recorded (and maybe sent an Event) for
    healthy_since: float | None = None  # monotonic time it was first seen healthy again
    failed_since: float | None = None  # monotonic start of its failure (for the fencing time)
    not_before: float = 0.0  # no new work before this monotonic time (back-off)
    stopped: str | None = None  # why an admin's action stopped its failover
    cordon_noted: bool = False  # the "cordoned" timeline entry and Event are done this episode
    capped_noted: bool = False  # the "capped" timeline entry is done (until a slot is won)
    settled: bool = False  # fenced, and its Event and slot release were seen done
    work: asyncio.Task[None] | None = None  # the failover task walking its ladder, if any

    @property
    def busy(self) -> bool:
        return self.work is not None and not self.work.done()


class Episodes:
    """The records by node name; ``get`` creates one on first use."""

    def __init__(self) -> None:
        self.records: dict[str, NodeEpisode] = {}

    def get(self, name: str) -> NodeEpisode:
        rec = self.records.get(name)
        if rec is None:
            rec = self.records[name] = NodeEpisode()
        return rec

    def peek(self, name: str) -> NodeEpisode | None:
        return self.records.get(name)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[tuple[str, NodeEpisode]]:
        return iter(list(self.records.items()))

    def busy(self) -> list[str]:
        """Names with a failover task running now, sorted."""
        return sorted(n for n, rec in self.records.items() if rec.busy)

    def step_down(self) -> list[asyncio.Task[None]]:
        """Forget what only a leader holds (running work, settled, stopped: the next leader reads
        it back from the annotations); returns the tasks to cancel."""
        tasks = []
        for rec in self.records.values():
            if rec.work is not None:
                tasks.append(rec.work)
            rec.work, rec.settled, rec.stopped = None, False, None
        return tasks

    def prune(self, nodes: set[str]) -> list[str]:
        """Delete the records of nodes no longer in ``nodes``; a record whose failover still
        runs is kept until it finishes. Returns the names deleted."""
        gone = [n for n, rec in self.records.items() if n not in nodes and not rec.busy]
        for name in gone:
            del self.records[name]
        return gone
