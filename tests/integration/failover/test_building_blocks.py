"""Remediation slots and the informer against the in-memory API server."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.peers import rest
from agent.peers.informer import Informer
from agent.peers.slots import Slots
from agent.testing.apiserver import ApiServer


async def test_slots_cap_concurrent_remediations_cluster_wide(kube_api: Any) -> None:
    """With one slot, a second node waits until the first is released, whoever asks."""
    leader_a = Slots(kube_api, "kube-system", 1)
    leader_b = Slots(kube_api, "kube-system", 1)
    assert await leader_a.acquire("node-1")
    assert not await leader_b.acquire("node-2")
    assert await leader_b.acquire("node-1"), "a new leader resumes the node holding the slot"
    await leader_a.release("node-1")
    assert await leader_b.acquire("node-2")
    assert await leader_a.holders() == {0: "node-2"}


async def test_expired_slot_is_free_again(kube_api: Any) -> None:
    """A slot nobody renewed for its duration no longer blocks remediation."""
    clock = [1_000_000.0]
    slots = Slots(kube_api, "kube-system", 1, slot_seconds=60, wall=lambda: clock[0])
    assert await slots.acquire("node-1")
    clock[0] += 61
    assert await slots.acquire("node-2")


async def test_informer_relists_after_410_gone(apiserver: ApiServer, kube_api: Any) -> None:
    """After history is compacted and watches cut, the informer relists and sees new nodes."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a"}})
    inf: Informer[str] = Informer(kube_api, rest.NODES, lambda o: str(o["metadata"]["name"]))
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 5)
        assert set(inf.items) == {"a"}
        apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "b"}})
        apiserver.compact()
        apiserver.drop_watches()
        apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "c"}})
        for _ in range(100):
            if set(inf.items) == {"a", "b", "c"}:
                break
            await asyncio.sleep(0.05)
        assert set(inf.items) == {"a", "b", "c"}
        apiserver.delete("nodes", "", "a")
        for _ in range(100):
            if "a" not in inf.items:
                break
            await asyncio.sleep(0.05)
        assert set(inf.items) == {"b", "c"}
    finally:
        task.cancel()


async def test_informer_skips_garbage_objects(apiserver: ApiServer, kube_api: Any) -> None:
    """An object the reducer cannot read is skipped and counted, not fatal."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ok"}})
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bad"}})

    def reduce(obj: dict[str, Any]) -> str:
        if obj["metadata"]["name"] == "bad":
            raise ValueError("unreadable")
        return "fine"

    inf: Informer[str] = Informer(kube_api, rest.NODES, reduce)
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 5)
        assert inf.items == {"ok": "fine"}
        assert inf.skipped == 1
    finally:
        task.cancel()
