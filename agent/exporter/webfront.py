"""The HTTP server's protection as the daemon wires it: web config, TLS, auth, probe listener.

Used by agent.runtime.daemon (start, reload, stop) and agent.cli (``check_settings`` before the
agent starts, so an invalid ``--web.config.file`` exits 2 with one line). Everything a reload
may change is prepared first (:meth:`WebFront.prepare` parses the file and builds the TLS context
without touching the running server) and swapped in by :meth:`WebFront.commit` only when the
whole reload succeeded, so a bad file keeps the last good protection. Turning TLS on or off, and
the probe listener, need a restart (a listener cannot change protocol under open connections).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from agent.exporter.auth import Protection, probes_only
from agent.exporter.kubeauth import KubeAuthorizer
from agent.exporter.self_metrics import SelfMetrics
from agent.exporter.server import AgentView, build_app, start_server
from agent.exporter.tlsctx import RotatingContext, build_context
from agent.exporter.webconfig import WebConfig, WebConfigError, load_web_config
from agent.settings import Settings

log = structlog.get_logger("nodemedic.web")


def read_config(settings: Settings) -> WebConfig:
    """The web config the settings name (an empty one without ``--web.config.file``); checks
    that the TLS files load and that the options fit together. Blocking: run it in a thread."""
    cfg = WebConfig() if settings.web_config_file is None else \
        load_web_config(settings.web_config_file)
    tls = cfg.tls_server_config
    where = f"--web.config.file={settings.web_config_file}"
    if tls.enabled:
        try:
            build_context(tls)
        except WebConfigError as exc:
            raise WebConfigError(f"{where}: {exc}") from exc
    if settings.web_kubernetes_auth and cfg.basic_auth_users:
        raise WebConfigError(f"{where}: basic_auth_users and --web.kubernetes-auth both use the "
                             "Authorization header; choose one")
    if tls.enabled and settings.failover_enabled and not settings.web_probe_address:
        raise WebConfigError(f"{where}: with TLS on, --failover.enabled needs "
                             "--web.probe-address (peers probe /healthz over plain HTTP)")
    return cfg


def check_settings(settings: Settings) -> str | None:
    """The one-line error for invalid web settings, or None."""
    try:
        read_config(settings)
    except WebConfigError as exc:
        return str(exc)
    return None


@dataclass
class Prepared:
    """A validated web config (and its TLS context, built) waiting for the rest of a reload."""

    config: WebConfig
    context: ssl.SSLContext | None


class WebFront:
    """Protection, TLS and the probe listener of one agent."""

    def __init__(self, settings: Settings, config: WebConfig,
                 api: Callable[[], Any | None]) -> None:
        self.settings = settings
        kube = KubeAuthorizer(api, settings.node_name) if settings.web_kubernetes_auth else None
        self.protection = Protection(config, kube)
        tls = config.tls_server_config
        self.ssl_context: RotatingContext | None = RotatingContext(tls) if tls.enabled else None
        self._probe_runner: web.AppRunner | None = None

    @classmethod
    async def create(cls, settings: Settings, api: Callable[[], Any | None]) -> WebFront:
        config = await asyncio.to_thread(read_config, settings)
        return cls(settings, config, api)

    @property
    def guards(self) -> Sequence[Middleware]:
        return (self.protection.middleware,)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    async def serve(self, agent: AgentView, metrics: SelfMetrics, host: str, port: int,
                    max_in_flight: int) -> tuple[web.AppRunner, int]:
        """Start the main listener (protected) and, if configured, the probe listener."""
        app = build_app(agent, metrics, max_in_flight, guards=self.guards)
        runner, bound = await start_server(app, host, port, self.ssl_context)
        if self.settings.web_probe_address:
            phost, _, pport = self.settings.web_probe_address.rpartition(":")
            probe_app = build_app(agent, metrics, max_in_flight, guards=(probes_only,))
            try:
                self._probe_runner, _ = await start_server(
                    probe_app, phost.strip("[]") or "0.0.0.0", int(pport))
            except BaseException:
                await runner.cleanup()
                raise
        log.info("web_protection", tls=self.ssl_context is not None,
                 basic_auth_users=len(self.protection.config.basic_auth_users),
                 kubernetes_auth=self.protection.kube is not None,
                 probe_address=self.settings.web_probe_address or None)
        return runner, bound

    def check_api(self, api: Any | None) -> None:
        """Refuse to start with --web.kubernetes-auth but no API client (nothing could pass)."""
        if self.protection.kube is not None and api is None:
            raise WebConfigError("--web.kubernetes-auth needs the Kubernetes API (--kubeconfig or "
                                 "in-cluster credentials)")

    async def prepare(self, settings: Settings) -> Prepared:
        """Validate the reloaded settings' web config (raises; the running one is untouched)."""
        config = await asyncio.to_thread(read_config, settings)
        tls = config.tls_server_config
        running = self.ssl_context is not None
        if tls.enabled != running:
            # The listener's socket is TLS or not from its start: applying the rest of this file
            # while the transport stays as it was would run on a configuration nobody wrote.
            raise WebConfigError(
                f"--web.config.file={settings.web_config_file}: turning TLS "
                f"{'on' if tls.enabled else 'off'} needs a restart (the running listener is "
                f"{'TLS' if running else 'plain HTTP'}); nothing of this reload was applied")
        context = await asyncio.to_thread(build_context, tls) if tls.enabled else None
        return Prepared(config, context)

    def commit(self, settings: Settings, prepared: Prepared) -> None:
        """Swap in a prepared web config (the rest of the reload succeeded); cannot fail."""
        tls = prepared.config.tls_server_config
        if self.ssl_context is not None and prepared.context is not None:
            self.ssl_context.install(tls, prepared.context)
        # web.kubernetes-auth and web.probe-address are restart-only settings: the reload plan
        # keeps their running values and reports them (agent.settings.OnReload).
        self.protection.update(prepared.config)

    async def stop(self) -> None:
        if self._probe_runner is not None:
            await self._probe_runner.cleanup()
            self._probe_runner = None
