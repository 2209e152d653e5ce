"""The agent's one place that builds a kubernetes_asyncio ApiClient.

Called by agent.runtime.components.build_shared (``ctx.api``) and by tests and benchmarks
that point the agent at the in-memory API server. The client comes from ``--kubeconfig`` when it
is set, else from the in-cluster service account, else there is none (``None``: a node without a
cluster is a normal state for local runs). Every request gets a default time limit so a hung API
server cannot stall a tick; watches get a read limit derived from their ``timeoutSeconds``.
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from kubernetes_asyncio import client

from agent import __version__

if TYPE_CHECKING:
    from agent.settings import Settings

USER_AGENT = f"nodemedic/{__version__}"
CONNECT_TIMEOUT_SECONDS = 5.0
# Non-watch requests: the whole request. Long enough for a LIST of thousands of pods.
REQUEST_TIMEOUT_SECONDS = 30.0
# Watches: the server ends them after timeoutSeconds; allow this much more before giving up.
WATCH_READ_SLACK_SECONDS = 15.0


class KubeClientError(Exception):
    """The kubeconfig or in-cluster configuration exists but cannot be used."""


class ApiClient(client.ApiClient):
    """kubernetes_asyncio's ApiClient with default timeouts and nodemedic's User-Agent."""

    def __init__(self, configuration: Any) -> None:
        super().__init__(configuration)
        self.user_agent = USER_AGENT

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            query = kwargs.get("query_params") or (args[3] if len(args) > 3 else None) or []
            kwargs["_request_timeout"] = default_timeout(query)
        return super().call_api(*args, **kwargs)


class _NoModels:
    """Stands in for the ApiClient a kubernetes_asyncio Watch builds for itself: a raw watch
    deserializes nothing, and there is no session to close."""

    def deserialize(self, *_: object, **__: object) -> Any:
        raise TypeError("a raw watch builds no models")

    async def close(self) -> None:
        return None


@functools.cache
def raw_watch() -> type[Any]:
    """kubernetes_asyncio's Watch leaving objects as the JSON dicts the informers reduce.

    Building the generated models for hundreds of Lease updates a second would cost more than
    all the rest. ``Watch()`` also builds an ApiClient of its own, used only to deserialize
    models: a new aiohttp session and a new SSL context that loads the system CA store (~25 ms
    of CPU and ~0.8 MiB each) for every watch, i.e. every informer once a minute. The request
    itself goes through the ApiClient bound to the list call, so this one builds none.
    Defined on first use: kubernetes_asyncio.watch imports the whole kubeconfig loader
    (kubernetes_asyncio.config, urllib3), which an agent without a cluster never needs."""
    from kubernetes_asyncio import watch

    class RawWatch(watch.Watch):
        def __init__(self) -> None:  # what Watch.__init__ sets, without its ApiClient
            self._raw_return_type = None
            self._stop = False
            self._api_client: Any = _NoModels()
            self.resource_version = None
            self.resp = None

        def get_return_type(self, func: object) -> str:
            return ""

    return RawWatch


def default_timeout(query_params: list[tuple[str, Any]]) -> aiohttp.ClientTimeout:
    """The time limit for a request with these query parameters.

    A watch may legitimately be silent until the server's ``timeoutSeconds`` (bookmarks aside),
    so its read limit is that plus slack; a watch without ``timeoutSeconds`` only gets a connect
    limit. Everything else is bounded as a whole.
    """
    params = dict(query_params)
    if str(params.get("watch", "")).lower() in ("true", "1"):
        server_timeout = params.get("timeoutSeconds")
        sock_read = (
            float(server_timeout) + WATCH_READ_SLACK_SECONDS if server_timeout is not None else None
        )
        return aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=sock_read
        )
    return aiohttp.ClientTimeout(
        total=REQUEST_TIMEOUT_SECONDS, sock_connect=CONNECT_TIMEOUT_SECONDS
    )


async def load_configuration(kubeconfig: Path | None) -> Any | None:
    """A kubernetes_asyncio Configuration from the kubeconfig, in-cluster, or None.

    kubernetes_asyncio.config (kubeconfig parsing, urllib3, ~0.1 s of CPU to import) is loaded
    only when there is something to load: a kubeconfig, or the service environment variables
    that in-cluster loading needs (without them it could only conclude "no cluster")."""
    if kubeconfig is None and not (os.environ.get("KUBERNETES_SERVICE_HOST")
                                   and os.environ.get("KUBERNETES_SERVICE_PORT")):
        return None
    from kubernetes_asyncio import config
    from kubernetes_asyncio.config.config_exception import ConfigException

    cfg = client.Configuration()
    if kubeconfig is not None:
        if not await asyncio.to_thread(kubeconfig.exists):
            raise KubeClientError(f"--kubeconfig={kubeconfig}: file not found")
        try:
            await config.load_kube_config(
                config_file=str(kubeconfig), client_configuration=cfg, persist_config=False
            )
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            raise KubeClientError(f"--kubeconfig={kubeconfig}: {exc}") from exc
        return cfg
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except ConfigException:
        return None  # not in a pod and no kubeconfig: run without the API
    return cfg


async def create_api_client(settings: Settings) -> ApiClient | None:
    """The shared API client for ``settings`` (None when no cluster is configured).

    Use as ``async with`` or call ``await api.close()``; raises :class:`KubeClientError` when a
    configured kubeconfig cannot be used.
    """
    cfg = await load_configuration(settings.kubeconfig)
    if cfg is None:
        return None
    return ApiClient(cfg)
