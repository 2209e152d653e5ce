"""A real in-process agent for the stress tests, and probes that see it as a user would.

``running_agent`` starts agent.runtime.daemon.Agent on a free loopback port with only the
collectors a test names (the others would read this machine's real kubelet/cgroups), and always
stops it. ``healthz`` asks /healthz the way a liveness probe does: with a deadline.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from agent.collectors import registry
from agent.runtime.daemon import Agent
from agent.settings import settings_for_tests

PROBE_TIMEOUT = 2.0  # a kubelet liveness probe's default timeout is 1 s; we allow 2 on 2 cores


def short_budget() -> bool:
    """True unless NODEMEDIC_STRESS_BUDGET=long (bench/fuzz.py, manual runs)."""
    return os.environ.get("NODEMEDIC_STRESS_BUDGET", "short") != "long"


@asynccontextmanager
async def running_agent(tmp_path: Path, enable: tuple[str, ...] = (),
                        **overrides: Any) -> AsyncIterator[Agent]:
    """An Agent serving on 127.0.0.1:<free port> with only ``enable`` collectors."""
    registry.load_builtin()
    (tmp_path / "no-rules").mkdir(exist_ok=True)  # empty: a missing rules dir is refused
    values: dict[str, Any] = {
        "web_listen_address": "127.0.0.1:0",
        "node_name": "stress-node",
        "rules_dir": tmp_path / "no-rules",
        "collect_interval": 1.0,
        "collector_timeout": 0.9,  # below the interval, as the settings require
        "collectors": {name: name in enable for name in registry.collectors()},
    }
    values.update(overrides)
    agent = Agent(settings_for_tests(**values))
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


async def healthz(port: int, timeout: float = PROBE_TIMEOUT) -> int:
    """Status of GET /healthz on a fresh connection; 0 when no answer came within ``timeout``."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.get(f"http://127.0.0.1:{port}/healthz") as r:
            await r.read()
            return r.status
    except (TimeoutError, aiohttp.ClientError):
        return 0


async def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
            s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.read()
