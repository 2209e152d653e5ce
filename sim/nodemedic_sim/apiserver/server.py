"""``ApiServer``: an in-memory Kubernetes API server on aiohttp for tests, the demo and benchmarks.

Used by the pytest fixtures in nodemedic_sim.pytest_plugin, by ``nodemedic apiserver``
and by bench/apiserver_scale.py. It routes /api and /apis requests to the
registry (nodemedic_sim.apiserver.registry), streams watches from the store, answers discovery
(/version, /api, /apis) well enough for kubernetes_asyncio and kubectl, renders Tables for
``kubectl get``, injects faults and counts requests. One process, one event loop; objects are
plain dicts shared between list responses and watch events.

Typical use::

    async with ApiServer() as server:
        server.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
        ...  # point kubernetes_asyncio at server.url (or server.write_kubeconfig(path))
        assert server.get("Node", "", "n1")["spec"]["unschedulable"] is True
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import copy
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from nodemedic_sim.apiserver import convert, eviction, managed, openapi, reviews, table
from nodemedic_sim.apiserver import fieldvalidation as fv
from nodemedic_sim.apiserver import status as st
from nodemedic_sim.apiserver.faults import Faults, RequestLog
from nodemedic_sim.apiserver.patch import apply_patch
from nodemedic_sim.apiserver.registry import Registry
from nodemedic_sim.apiserver.resources import BY_KIND, RESOURCES, ResourceType, lookup
from nodemedic_sim.apiserver.selectors import (
    Matcher,
    equality_terms,
    object_matcher,
    parse_field_selector,
    parse_label_selector,
)
from nodemedic_sim.apiserver.store import Obj, Store, Watcher

KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-nodemedic",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
# Field manager of writes made through the helpers below (a test acting as some client).
HELPER_MANAGER = "test-helper"
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
_BIG_LIST = 2000  # lists longer than this are streamed in chunks of this size


class _Req:
    """A parsed resource request: which resource, object and Kubernetes verb."""

    __slots__ = ("name", "namespace", "rt", "subresource", "verb")

    def __init__(self, rt: ResourceType, namespace: str, name: str, subresource: str, verb: str):
        self.rt, self.namespace, self.name, self.subresource, self.verb = (
            rt,
            namespace,
            name,
            subresource,
            verb,
        )

    @property
    def resource(self) -> str:
        base = f"{self.rt.plural}.{self.rt.group}" if self.rt.group else self.rt.plural
        return f"{base}/{self.subresource}" if self.subresource else base


_REQ_KEY: web.RequestKey[_Req | None] = web.RequestKey("nodemedic_k8s_request")


def _flag(raw: str | None) -> bool:
    """A boolean query parameter as Go's strconv.ParseBool reads it ("true", "True", "1")."""
    return (raw or "").lower() in ("true", "1", "t")


def _parse_path(request: web.Request) -> _Req | None:
    parts = [p for p in request.path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    rt = lookup(group, version, rest[0])
    if rt is None:
        return None
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if sub and sub not in rt.subresources:
        return None
    method = request.method
    q = request.query
    if not name:
        verb = {
            "GET": "watch" if _flag(q.get("watch")) else "list",
            "POST": "create",
            "DELETE": "deletecollection",
        }.get(method, method.lower())
    else:
        verb = {
            "GET": "get",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
            "POST": "create",
        }.get(method, method.lower())
    return _Req(rt, namespace, name, sub, verb)


def _dumps(obj: Any) -> str:
    """Compact JSON, as kube-apiserver writes it."""
    return json.dumps(obj, separators=(",", ":"))


def _json(obj: Any, status: int = 200) -> web.Response:
    # Go's json.Encoder, which kube-apiserver writes with, ends every body with a newline.
    return web.Response(
        body=_dumps(obj).encode() + b"\n", status=status, content_type="application/json"
    )


def _error(err: st.ApiError) -> web.Response:
    return _json(err.body(), err.code)


def _manager(request: web.Request) -> str:
    return managed.manager_of(request.query.get("fieldManager"), request.headers.get("User-Agent"))


def _view(rt: ResourceType, obj: Obj) -> Obj:
    """The object as sent to a client of ``rt``: kind and apiVersion first."""
    return {"kind": rt.kind, "apiVersion": rt.api_version, **convert.from_storage(rt, obj)}


def _encode_continue(rv: int, key: tuple[str, str]) -> str:
    raw = _dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{key[0]}/{key[1]}\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        ns, _, name = str(data["start"]).rstrip("\x00").partition("/")
        return int(data["rv"]), (ns, name)
    except (ValueError, KeyError, TypeError) as exc:
        raise st.bad_request(f"continue key is not valid: {exc}") from exc


def _int_param(q: Any, name: str) -> int | None:
    raw = q.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise st.bad_request(f"invalid {name} {raw!r}: must be an integer") from exc


def _watch_index(rt: ResourceType, field_selector: str | None) -> tuple[str, str] | None:
    """The store index a watch can be filed under (its events then skip other watchers)."""
    terms = equality_terms(field_selector)
    if "metadata.name" in terms:
        return ("metadata.name", terms["metadata.name"])
    if rt.plural == "pods" and "spec.nodeName" in terms:
        return ("spec.nodeName", terms["spec.nodeName"])
    return None


class ApiServer:
    """The in-memory API server. ``await start()`` / ``await stop()`` or ``async with``.

    State (objects, resourceVersion, history) lives in the instance and survives ``stop()`` /
    ``start()``, so a restart on the same port looks like an apiserver restart to clients.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        history_size: int = 50_000,
        watch_buffer: int = 100_000,
        bookmark_interval: float = 60.0,
        default_watch_timeout: float = 1800.0,
        sweep_interval: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.port = port
        self.store = Store(history_size=history_size, watch_buffer=watch_buffer)
        self.registry = Registry(self.store, clock)
        self.faults = Faults()
        self.requests = RequestLog()
        self.reviews = reviews.Reviews()
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.sweep_interval = sweep_interval
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._watch_tasks: set[asyncio.Task[Any]] = set()

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:34567``."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (on the port given, a free one, or the same port as before a stop)."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
        self._runner = runner
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def stop(self) -> None:
        """Stop listening and cut every open connection (watches end abruptly)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.drop_watches()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.sweep()

    def sweep(self) -> None:
        """Finish graceful pod deletions that are due and refresh PDB status (controller work)."""
        self.registry.sweep()
        dirty, self.registry.pdb_dirty = self.registry.pdb_dirty, set()
        for ns in dirty:
            eviction.refresh_namespace(self.registry, ns)

    # ---- test helpers --------------------------------------------------------------------
    @staticmethod
    def resource(kind: str) -> ResourceType:
        """Resource for a kind ("Node") or plural ("nodes", "leases", "events.events.k8s.io")."""
        if kind in BY_KIND:
            return BY_KIND[kind]
        for r in RESOURCES:
            if kind in (r.plural, f"{r.plural}.{r.group}"):
                return r
        raise KeyError(f"unknown resource {kind!r}")

    def create(self, obj: Obj, manager: str | None = None) -> Obj:
        """Store ``obj`` (with apiVersion/kind) as given, status included; missing namespaces
        are created. Returns the stored object with kind/apiVersion. Its fields are recorded as
        set by ``manager``; by default by nobody (no managedFields: a seeded object's history
        is unknown, as on a server that does not track field owners)."""
        rt = self.resource(str(obj.get("kind")))
        ns = (obj.get("metadata") or {}).get("namespace") or ("default" if rt.namespaced else "")
        if rt.namespaced and self.store.get("namespaces", "", ns) is None:
            self.registry.create(self.resource("Namespace"), "", {"metadata": {"name": ns}})
        stored = self.registry.create(rt, ns, convert.to_storage(rt, obj), raw=True,
                                      manager=manager)
        return copy.deepcopy(_view(rt, stored))

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        """A deep copy of the object with kind/apiVersion (safe to modify), or None."""
        rt = self.resource(kind)
        obj = self.store.get(rt.key, namespace if rt.namespaced else "", name)
        return None if obj is None else copy.deepcopy(_view(rt, obj))

    def list(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Deep copies of all objects of ``kind`` (optionally in one namespace)."""
        rt = self.resource(kind)
        return [copy.deepcopy(_view(rt, o)) for o in self.store.items(rt.key, namespace)]

    def patch(  # noqa: PLR0917 - mirrors the REST call's parts
        self,
        kind: str,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str = "application/merge-patch+json",
        subresource: str = "",
        manager: str = HELPER_MANAGER,
    ) -> Obj:
        """Patch an object as a client would (status too, with ``subresource="status"``);
        ``manager`` is the field manager it is recorded under (``kubectl-cordon`` for an admin's
        ``kubectl cordon``)."""
        rt = self.resource(kind)
        obj = self.registry.patch(
            rt, namespace, name, content_type, patch, subresource, manager=manager
        )
        return copy.deepcopy(_view(rt, obj))

    def delete(self, kind: str, namespace: str, name: str, grace_period: int | None = None) -> None:
        """Delete as a client would (pods: graceful unless ``grace_period=0``)."""
        rt = self.resource(kind)
        opts = {} if grace_period is None else {"gracePeriodSeconds": grace_period}
        self.registry.delete(rt, namespace, name, opts)

    def set_kubelet_alive(self, node: str, alive: bool) -> None:
        """A dead kubelet never confirms pod deletion: its terminating pods stay Terminating."""
        if alive:
            self.registry.unresponsive_nodes.discard(node)
        else:
            self.registry.unresponsive_nodes.add(node)

    def compact(self) -> None:
        """Compact history: watches from an older resourceVersion now get 410 Gone."""
        self.store.compact()

    def drop_watches(self) -> int:
        """Cut every open watch connection abruptly; returns how many were cut."""
        n = self.store.close_watchers("drop")
        for task in list(self._watch_tasks):
            task.cancel()
        return n

    def kubeconfig(self) -> dict[str, Any]:
        """A kubeconfig dict for this server (plain HTTP, a dummy token)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "nodemedic-test", "cluster": {"server": self.url}}],
            "users": [{"name": "nodemedic-test", "user": {"token": "nodemedic-test"}}],
            "contexts": [
                {
                    "name": "nodemedic-test",
                    "context": {"cluster": "nodemedic-test", "user": "nodemedic-test"},
                }
            ],
            "current-context": "nodemedic-test",
        }

    def write_kubeconfig(self, path: Path) -> Path:
        """Write :meth:`kubeconfig` as YAML to ``path`` (mode 0600)."""
        path.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        path.chmod(0o600)
        return path

    # ---- HTTP ----------------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        start = time.perf_counter()
        req = _parse_path(request)
        verb, resource = (req.verb, req.resource) if req else (request.method.lower(), request.path)
        client = (request.headers.get("User-Agent") or "unknown").split(" ")[0]
        request[_REQ_KEY] = req
        key = self.requests.started(verb, resource, client)
        try:
            delay = self.faults.delay_for(verb)
            if delay > 0:
                await asyncio.sleep(delay)
            code = self.faults.take(verb, resource, client)
            if code is not None:
                return _error(st.injected(code))
            return await handler(request)
        except st.ApiError as err:
            return _error(err)
        finally:
            self.requests.finished(key, time.perf_counter() - start)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if request.method == "GET" and path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok", content_type="text/plain")
        if request.method == "GET" and (spec := openapi.serve(request)) is not None:
            return spec
        if request.method == "GET":
            doc = self._discovery(path)
            if doc is not None:
                return _json(doc)
        if request.method == "POST" and path in reviews.PATHS:
            return _json(self.reviews.handle(path, await self._body(request)), 201)
        req: _Req | None = request[_REQ_KEY]
        if req is None:
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": "the server could not find the requested resource",
                    "reason": "NotFound",
                    "details": {},
                    "code": 404,
                },
                404,
            )
        handler = {
            "list": self._list,
            "watch": self._watch,
            "create": self._create,
            "get": self._get,
            "update": self._replace,
            "patch": self._patch,
            "delete": self._delete,
        }.get(req.verb)
        if handler is None:
            raise st.method_not_allowed()
        return await handler(request, req)

    def _discovery(self, path: str) -> Any:
        if path == "/version":
            return KUBE_VERSION
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        groups = sorted({(r.group, r.version) for r in RESOURCES if r.group})
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group_doc(g, v) for g, v in groups],
            }
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "apis":
            for g, v in groups:
                if g == parts[1]:
                    return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(g, v)}
        if path == "/api/v1":
            return self._resource_list("", "v1")
        if len(parts) == 3 and parts[0] == "apis" and (parts[1], parts[2]) in groups:
            return self._resource_list(parts[1], parts[2])
        return None

    @staticmethod
    def _group_doc(group: str, version: str) -> dict[str, Any]:
        gv = {"groupVersion": f"{group}/{version}", "version": version}
        return {"name": group, "versions": [gv], "preferredVersion": gv}

    @staticmethod
    def _resource_list(group: str, version: str) -> dict[str, Any]:
        out = []
        for r in RESOURCES:
            if r.group != group or r.version != version:
                continue
            out.append(
                {
                    "name": r.plural,
                    "singularName": r.kind.lower(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": _VERBS,
                    "shortNames": list(r.short_names),
                }
            )
            for sub in r.subresources:
                if sub == "eviction":
                    out.append(
                        {
                            "name": f"{r.plural}/eviction",
                            "singularName": "",
                            "namespaced": True,
                            "group": "policy",
                            "version": "v1",
                            "kind": "Eviction",
                            "verbs": ["create"],
                        }
                    )
                else:
                    out.append(
                        {
                            "name": f"{r.plural}/{sub}",
                            "singularName": "",
                            "namespaced": r.namespaced,
                            "kind": r.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise st.bad_request(
                    f"the body of the request could not be decoded: {exc}"
                ) from exc

    def _matcher(self, request: web.Request, rt: ResourceType) -> Matcher | None:
        label = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(request.query.get("fieldSelector"), rt)
        return object_matcher(label, fields)

    def _candidates(self, request: web.Request, req: _Req) -> builtins.list[Obj]:
        """Objects a list or watch must consider, narrowed by an index when the selector allows."""
        terms = equality_terms(request.query.get("fieldSelector"))
        ns = req.namespace or None
        name = terms.get("metadata.name")
        if name is not None and (ns is not None or not req.rt.namespaced):
            obj = self.store.get(req.rt.key, ns or "", name)
            return [] if obj is None else [obj]
        node = terms.get("spec.nodeName") if req.rt.plural == "pods" else None
        return self.store.items(req.rt.key, ns, node=node)

    async def _list(self, request: web.Request, req: _Req) -> web.StreamResponse:
        rt, q = req.rt, request.query
        matcher = self._matcher(request, rt)
        rv_now = self.store.resource_version
        if q.get("resourceVersionMatch") == "Exact" and q.get("resourceVersion") not in (
            None,
            str(rv_now),
        ):
            raise st.gone(f"too old resource version: {q.get('resourceVersion')} ({rv_now})")
        items = self._candidates(request, req)
        token = q.get("continue")
        if token:
            token_rv, after = _decode_continue(token)
            if token_rv < self.store.oldest_available:
                raise st.gone(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use the "
                    "continue token in this response to retrieve the remainder of the results. "
                    "Continuing with the provided token results in an inconsistent list - objects "
                    "that were created, modified, or deleted between the time the first chunk was "
                    "returned and now may show up in the list."
                )
            rv_now = token_rv
            items = [
                o
                for o in items
                if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after
            ]
        if matcher is not None:
            items = [o for o in items if matcher(o)]
        limit = _int_param(q, "limit")
        meta: dict[str, Any] = {"resourceVersion": str(rv_now)}
        if limit and limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = _encode_continue(rv_now, (last.get("namespace", ""), last["name"]))
            if matcher is None:  # as kube-apiserver: no count when a selector filtered the list
                meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if table.wants_table(request.headers.get("Accept", "")):
            return _json(
                table.table(
                    rt,
                    items,
                    str(rv_now),
                    extra_meta={k: v for k, v in meta.items() if k != "resourceVersion"},
                )
            )
        if convert.needs_conversion(rt):
            items = [convert.from_storage(rt, o) for o in items]
        body = {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": items,
        }
        if len(items) <= _BIG_LIST:
            return _json(body)
        return await self._stream_list(request, body)

    async def _stream_list(self, request: web.Request, body: Obj) -> web.StreamResponse:
        """Send a big list in chunks serialised off the event loop, so neither the loop nor
        memory holds the whole body (a 50,000-pod list is ~70 MB of JSON)."""
        items = body["items"]
        head = _dumps({**body, "items": []})[:-2]  # ...,"items":[
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(head.encode())

        def encode(chunk: builtins.list[Obj], first: bool) -> bytes:
            text = ",".join(_dumps(o) for o in chunk)
            return (text if first else "," + text).encode()

        for i in range(0, len(items), _BIG_LIST):
            await resp.write(await asyncio.to_thread(encode, items[i : i + _BIG_LIST], i == 0))
        await resp.write(b"]}\n")
        await resp.write_eof()
        return resp

    async def _get(self, request: web.Request, req: _Req) -> web.StreamResponse:
        obj = self.registry.get(req.rt, req.namespace, req.name)
        if table.wants_table(request.headers.get("Accept", "")):
            return _json(table.table(req.rt, [obj], obj["metadata"]["resourceVersion"]))
        return _json(_view(req.rt, obj))

    async def _create(self, request: web.Request, req: _Req) -> web.StreamResponse:
        body = await self._body(request)
        dry = request.query.get("dryRun") == "All"
        if req.subresource == "eviction":
            return _json(
                eviction.evict(self.registry, req.namespace, req.name, body or {}, dry), 201
            )
        if req.name:
            raise st.method_not_allowed()
        if not isinstance(body, dict):
            raise st.bad_request("the body of the request was not a valid object")
        if dry:
            raise st.bad_request("dryRun is not supported by this test server")
        body, unknown = fv.check_body(request, req.rt, body, "CreateOptions")
        obj = self.registry.create(
            req.rt, req.namespace, convert.to_storage(req.rt, body), manager=_manager(request)
        )
        return fv.add_warnings(_json(_view(req.rt, obj), 201), unknown)

    async def _replace(self, request: web.Request, req: _Req) -> web.StreamResponse:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise st.bad_request("the body of the request was not a valid object")
        body, unknown = fv.check_body(request, req.rt, body, "UpdateOptions")
        obj = self.registry.replace(
            req.rt, req.namespace, req.name, convert.to_storage(req.rt, body), req.subresource,
            manager=_manager(request),
        )
        return fv.add_warnings(_json(_view(req.rt, obj)), unknown)

    async def _patch(self, request: web.Request, req: _Req) -> web.StreamResponse:
        body = await self._body(request)
        ctype = request.headers.get("Content-Type", "")
        rt = req.rt
        if fv.directive(request, "PatchOptions") == "Strict":  # the patched object is checked
            new = apply_patch(_view(rt, self.registry.get(rt, req.namespace, req.name)), ctype,
                              body, rt.kind)
            fv.check_patched(request, rt, body, new, "strategic" in ctype)
        if convert.needs_conversion(rt):
            old = self.registry.get(rt, req.namespace, req.name)
            new = apply_patch(_view(rt, old), ctype, body, rt.kind)
            new_rv = (new.get("metadata") or {}).get("resourceVersion")
            if new_rv != old["metadata"]["resourceVersion"]:
                raise st.conflict(rt.plural, rt.group, req.name)
            obj = self.registry.replace(
                rt, req.namespace, req.name, convert.to_storage(rt, new), manager=_manager(request)
            )
        else:
            obj = self.registry.patch(
                rt, req.namespace, req.name, ctype, body, req.subresource,
                manager=_manager(request),
            )
        return _json(_view(rt, obj))

    async def _delete(self, request: web.Request, req: _Req) -> web.StreamResponse:
        body = await self._body(request)
        options: Obj = dict(body) if isinstance(body, dict) else {}
        grace = _int_param(request.query, "gracePeriodSeconds")
        if grace is not None and options.get("gracePeriodSeconds") is None:
            options["gracePeriodSeconds"] = grace
        obj = self.registry.delete(req.rt, req.namespace, req.name, options)
        return _json(_view(req.rt, obj))

    async def _watch(self, request: web.Request, req: _Req) -> web.StreamResponse:
        rt, q = req.rt, request.query
        matcher = self._matcher(request, rt)
        timeout = _int_param(q, "timeoutSeconds")
        deadline = time.monotonic() + (
            timeout if timeout is not None else self.default_watch_timeout
        )
        bookmarks = _flag(q.get("allowWatchBookmarks"))
        send_initial = _flag(q.get("sendInitialEvents"))
        as_table = table.wants_table(request.headers.get("Accept", ""))
        rv_param = q.get("resourceVersion") or ""
        w = Watcher(
            rt.key,
            req.namespace or None,
            matcher,
            self.store.watch_buffer,
            index=_watch_index(rt, request.query.get("fieldSelector")),
        )
        initial: list[tuple[str, Obj, int]] = []
        error: st.ApiError | None = None
        if rv_param in ("", "0") or send_initial:
            initial = [
                ("ADDED", o, 0)
                for o in self._candidates(request, req)
                if matcher is None or matcher(o)
            ]
        else:
            try:
                rv = int(rv_param)
            except ValueError:
                raise st.bad_request(f"invalid resource version {rv_param!r}") from None
            try:
                for ev in self.store.events_after(rt.key, rv):
                    w.offer(ev)
            except st.ApiError as exc:
                error = exc
        if error is None:
            self.store.add_watcher(w)  # same loop iteration as the snapshot: no event is missed
        resp = web.StreamResponse(
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"}
        )
        resp.enable_chunked_encoding()
        task = asyncio.current_task()
        if task is not None:
            self._watch_tasks.add(task)  # lets drop_watches() cut this stream
        first = [True]

        def line(etype: str, obj: Obj) -> bytes:
            if etype in ("ERROR", "BOOKMARK"):
                payload = obj
            elif as_table:
                payload = table.table(rt, [obj], obj["metadata"]["resourceVersion"], first[0])
                first[0] = False
            else:
                payload = _view(rt, obj)
            return _dumps({"type": etype, "object": payload}).encode() + b"\n"

        def bookmark(extra: dict[str, str] | None = None) -> bytes:
            meta: dict[str, Any] = {"resourceVersion": str(self.store.resource_version)}
            if extra:
                meta["annotations"] = extra
            return line(
                "BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}
            )

        try:
            await resp.prepare(request)
            if error is not None:
                await resp.write(line("ERROR", error.body()))
                await resp.write_eof()
                return resp

            def encode_events(events: builtins.list[tuple[str, Obj, int]]) -> bytes:
                return b"".join(line(t, o) for t, o, _ in events)

            # The initial state can be the whole collection: encode it in chunks off the loop.
            for i in range(0, len(initial), _BIG_LIST):
                part = initial[i : i + _BIG_LIST]
                if len(initial) > _BIG_LIST:
                    data = await asyncio.to_thread(encode_events, part)
                else:
                    data = encode_events(part)
                await resp.write(data)
            if send_initial and bookmarks:
                await resp.write(bookmark({"k8s.io/initial-events-end": "true"}))
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                wait = deadline - now
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                if not w.buffer and not w.closed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(w.wakeup.wait(), timeout=wait)
                w.wakeup.clear()
                if w.buffer:
                    out = []
                    while w.buffer:
                        t, o, _ = w.buffer.popleft()
                        out.append(line(t, o))
                    await resp.write(b"".join(out))
                if w.closed:
                    if w.close_reason == "drop" and request.transport is not None:
                        request.transport.close()
                        return resp
                    break
                if bookmarks and time.monotonic() >= next_bookmark:
                    await resp.write(bookmark())
                    next_bookmark = time.monotonic() + self.bookmark_interval
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            if request.transport is not None:
                request.transport.close()
        finally:
            self.store.remove_watcher(w)
            if task is not None:
                self._watch_tasks.discard(task)
        return resp
