"""Wiring: the shared clients collectors use, and the per-tick components after collection.

Called by agent.runtime.daemon at start and on reload. ``build_shared`` sets the clients several
collectors share on the CollectorContext:
- ``ctx.kubelet``: agent.kubelet_client.KubeletClient (one /pods fetch per tick for all of them);
- ``ctx.api``: a kubernetes_asyncio ApiClient from agent.kube.client, or None without a cluster.
``build_components`` returns the objects that see each snapshot (rules + remediation, and
failover when enabled).
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from agent.collectors.base import CollectorContext
from agent.kube.client import create_api_client
from agent.kubelet_client import KubeletClient
from agent.settings import Settings
from agent.structs.metrics import Family
from agent.structs.snapshot import Snapshot

log = structlog.get_logger("nodemedic.components")


class Component(Protocol):
    """Something that runs after each collection (e.g. the remediation stage)."""

    async def start(self) -> None: ...
    async def on_snapshot(self, snapshot: Snapshot) -> None: ...
    def families(self) -> list[Family]: ...
    def status(self) -> dict[str, Any]: ...
    async def reload(self, settings: Settings) -> None:
        """Apply new settings/rules; raise (keeping the old ones) when they are invalid.

        A component should also offer ``async prepare_reload(settings) -> commit``: validate and
        build everything new without changing what runs (raise on any problem), and return a
        synchronous commit that applies it and cannot fail. The daemon prepares every component
        (and new collectors) before it commits any, so a reload is all or nothing; a component
        with only ``reload`` is called after all others prepared, as the last step that may
        fail."""
    async def close(self) -> None: ...


async def build_shared(ctx: CollectorContext, api: Any | None = None) -> None:
    """Create the shared kubelet and API clients (the API client is None without a cluster).

    ``api``: an existing API client to keep (a reload rebuilding collectors must not close the
    client the remediation and failover stages hold)."""
    ctx.kubelet = KubeletClient.from_settings(ctx.settings)
    ctx.api = api
    if api is None:
        try:
            ctx.api = await create_api_client(ctx.settings)
        except Exception as exc:  # no cluster is a normal state for `make run`
            log.warning("api_client_unavailable", error=str(exc))


async def close_shared(ctx: CollectorContext, keep_api: bool = False) -> None:
    clients: list[tuple[str, Any]] = [("kubelet", ctx.kubelet)]
    ctx.kubelet = None
    if not keep_api:
        clients.append(("api", ctx.api))
        ctx.api = None
    for key, client in clients:
        if client is not None:
            try:
                await client.close()
            except Exception as exc:
                log.warning("client_close_failed", client=key, error=str(exc))


async def build_components(settings: Settings, ctx: CollectorContext) -> list[Component]:
    """The remediation stage (rules engine + safety gate + actions) on every agent, and the
    failover stage (leader election, peer detection, failed-node remediation) when
    ``--failover.enabled``."""
    from agent.runtime.remediation import build_stage

    components: list[Component] = [await build_stage(settings, ctx)]
    if settings.failover_enabled:
        from agent.peers.stage import build_failover_stage

        components.append(await build_failover_stage(settings, ctx))
    return components
