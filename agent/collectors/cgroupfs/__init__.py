"""Synchronous cgroup v1/v2 reading for the ``cgroup`` collector (agent.collectors.cgroup).

``parse`` turns control-file bytes into numbers, ``layout`` finds hierarchies and kubepods
cgroups, ``read`` reads one tick. No asyncio here: the collector calls :func:`scan` in a thread.
"""

from agent.collectors.cgroupfs.layout import CgroupRef, Layout
from agent.collectors.cgroupfs.read import REASONS, CgroupStats, NodeScan, scan

__all__ = ["REASONS", "CgroupRef", "CgroupStats", "Layout", "NodeScan", "scan"]
