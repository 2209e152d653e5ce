"""Remediation slots against the in-memory API server (the informer: test_kube_informer.py)."""

from __future__ import annotations

from typing import Any

from agent.peers.slots import Slots


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
