"""The two Kubernetes backends the API tests run on: the in-memory server and a real control plane.

``memory`` is nodemedic_sim's in-memory API server (fast, fault-injectable). ``real`` is the
etcd + kube-apiserver + kube-controller-manager + kube-scheduler that hack/k8s/up.sh starts from
the versions pinned in hack/k8s/versions.env, once per test session, in a temporary directory
(or an existing cluster: ``NODEMEDIC_K8S_KUBECONFIG=path``, which is never stopped and should be
a scratch cluster: tests create and delete nodes and objects in it).

``NODEMEDIC_K8S_BACKENDS`` (default ``memory,real``) chooses which run. When ``real`` is chosen
and the control plane cannot be built or started, the tests that need it fail with the reason:
they never skip silently.

:class:`Backend` is what a test holds: ``api`` (a kubernetes_asyncio ApiClient), ``seed`` (store
an object as given, status included, as ApiServer.create does), ``get`` and ``request`` (raw
HTTP), the same on both. On ``real`` every object a test created is deleted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from nodemedic_sim.apiserver import ApiServer

ROOT = Path(__file__).resolve().parent.parent
HACK = ROOT / "hack" / "k8s"
BACKENDS_ENV = "NODEMEDIC_K8S_BACKENDS"
KUBECONFIG_ENV = "NODEMEDIC_K8S_KUBECONFIG"
# What a test may create on the real server, deleted after each test (cluster-scoped first).
CLEANED = (
    "Node", "Namespace", "Pod", "ConfigMap", "Event", "Lease", "PodDisruptionBudget",
    "EndpointSlice", "Service", "Deployment", "ReplicaSet", "DaemonSet", "StatefulSet",
)
# Namespaces the real server owns: objects in them are cleaned, the namespaces are kept.
SYSTEM_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


def chosen_backends() -> list[str]:
    raw = os.environ.get(BACKENDS_ENV, "memory,real")
    names = [b.strip() for b in raw.split(",") if b.strip()]
    bad = [b for b in names if b not in ("memory", "real")]
    if bad or not names:
        raise ValueError(f"{BACKENDS_ENV}={raw!r}: use 'memory', 'real' or 'memory,real'")
    return names


@dataclass
class Credentials:
    """Where a real server is and how to reach it (from a kubeconfig with client certs)."""

    kubeconfig: Path
    server: str
    ca: str | None
    cert: str | None
    key: str | None
    token: str | None = None

    @classmethod
    def load(cls, kubeconfig: Path) -> Credentials:
        doc = yaml.safe_load(kubeconfig.read_text())
        ctx_name = doc["current-context"]
        ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])
        return cls(kubeconfig, cluster["server"], cluster.get("certificate-authority"),
                   user.get("client-certificate"), user.get("client-key"), user.get("token"))

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        if self.cert and self.key:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


# hack/k8s/up.sh runs at most this often per session.
START_ATTEMPTS = 2


class RealCluster:
    """The session's real control plane: started by hack/k8s/up.sh or given by kubeconfig."""

    def __init__(self, defaults: bool = False) -> None:
        self.defaults = defaults
        self.tmp: Path | None = None
        self.creds: Credentials | None = None
        self.error: str | None = None

    def start(self) -> Credentials:
        if self.creds is not None:
            return self.creds
        if self.error is not None:
            raise RuntimeError(self.error)
        given = os.environ.get(KUBECONFIG_ENV)
        if given:
            self.creds = Credentials.load(Path(given))
            return self.creds
        # One retry: a start that ran out of time on a loaded machine (CI's first start after the
        # builds) should not fail the whole real tier; a second failure is reported with both.
        failures: list[str] = []
        for _ in range(START_ATTEMPTS):
            err = self._start_once()
            if err is None:
                break
            failures.append(err)
        else:
            self.error = (f"the real control plane did not start ({len(failures)} attempts; set "
                          f"{BACKENDS_ENV}=memory to skip the real tier):\n"
                          + "\n--- next attempt ---\n".join(f[-3000:] for f in failures))
            raise RuntimeError(self.error)
        if failures:
            warnings.warn(f"the real control plane started at the second attempt; the first "
                          f"failed:\n{failures[0][-3000:]}", stacklevel=2)
        assert self.creds is not None
        return self.creds

    def _start_once(self) -> str | None:
        """One hack/k8s/up.sh run: None when it started (creds set), else what it said."""
        self.tmp = Path(tempfile.mkdtemp(prefix="nodemedic-k8s-"))
        env = {**os.environ, "K8S_DIR": str(self.tmp / "k8s")}
        # Short enough that the node lifecycle tests see the controller act within a test
        # (bench/failover_real.py passes defaults=True: the controller-manager's own defaults).
        if not self.defaults:
            env.setdefault("NODEMEDIC_K8S_EXTRA_CM_FLAGS", "--node-monitor-grace-period=20s")
        proc = subprocess.run(["bash", str(HACK / "up.sh")], env=env, capture_output=True,
                              text=True, timeout=3600, check=False)
        if proc.returncode != 0:
            shutil.rmtree(self.tmp, ignore_errors=True)  # up.sh ran down.sh on its way out
            self.tmp = None
            return f"hack/k8s/up.sh exit {proc.returncode}:\n{proc.stderr}"
        self.creds = Credentials.load(Path(proc.stdout.strip().splitlines()[-1]))
        return None

    @functools.cached_property
    def bin_dir(self) -> Path:
        """The pinned binaries (hack/k8s/build.sh, asked once)."""
        out = subprocess.run(["bash", str(HACK / "build.sh")], capture_output=True, text=True,
                             check=True)
        return Path(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.tmp is None:
            return
        env = {**os.environ, "K8S_DIR": str(self.tmp / "k8s")}
        subprocess.run(["bash", str(HACK / "down.sh")], env=env, capture_output=True,
                       check=False, timeout=120)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None


# Kinds only the real server serves (the in-memory one knows nodemedic_sim.apiserver.resources).
REAL_ONLY: dict[str, tuple[str, str, str, bool]] = {
    "Service": ("", "v1", "services", True),
    "ServiceAccount": ("", "v1", "serviceaccounts", True),
    "Deployment": ("apps", "v1", "deployments", True),
    "ReplicaSet": ("apps", "v1", "replicasets", True),
    "StatefulSet": ("apps", "v1", "statefulsets", True),
    "ClusterRole": ("rbac.authorization.k8s.io", "v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", False),
}


def resource(kind: str) -> tuple[str, str, str, bool]:
    """(group, version, plural, namespaced) of a kind."""
    if kind in REAL_ONLY:
        return REAL_ONLY[kind]
    rt = ApiServer.resource(kind)
    return rt.group, rt.version, rt.plural, rt.namespaced


def collection_path(kind: str) -> str:
    group, version, plural, _ = resource(kind)
    return f"/apis/{group}/{version}/{plural}" if group else f"/api/{version}/{plural}"


def rest_path(kind: str, namespace: str, name: str = "", sub: str = "") -> str:
    """The REST path of a kind (as served by both servers), e.g. /api/v1/namespaces/x/pods/p."""
    group, version, plural, namespaced = resource(kind)
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespaced:
        base += f"/namespaces/{namespace or 'default'}"
    out = f"{base}/{plural}"
    if name:
        out += f"/{name}"
    if sub:
        out += f"/{sub}"
    return out


@dataclass
class Backend:
    """One backend as a test sees it; see the module docstring."""

    name: str
    url: str
    api: Any
    server: ApiServer | None = None
    creds: Credentials | None = None
    baseline: set[tuple[str, str, str]] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None

    @property
    def real(self) -> bool:
        return self.name == "real"

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_ctx: ssl.SSLContext | bool = self.creds.ssl_context() if self.creds else False
            headers = self.creds.headers() if self.creds else {}
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(ssl=ssl_ctx))
        return self._session

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        """A raw call; returns (status, decoded JSON body or text)."""
        kw: dict[str, Any] = {}
        if body is not None:  # a patch's content type differs, its body is JSON all the same
            kw["data"] = body if isinstance(body, (bytes, str)) else json.dumps(body)
            kw["headers"] = {"Content-Type": content_type}
        async with self.session().request(method, self.url + path, **kw) as resp:
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, await resp.text()

    async def seed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as given (status included); a missing namespace is created."""
        if self.server is not None:
            return self.server.create(obj)
        kind = str(obj["kind"])
        _, _, _, namespaced = resource(kind)
        subresources = ApiServer.resource(kind).subresources if kind not in REAL_ONLY else ()
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace") or ("default" if namespaced else "")
        if namespaced and ns not in SYSTEM_NAMESPACES:
            await self.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        status = obj.get("status")
        code, stored = await self.request("POST", rest_path(kind, ns), obj)
        if code >= 300:
            raise AssertionError(f"seeding {kind} {meta.get('name')}: {code} {stored}")
        if status and "status" in subresources:
            path = rest_path(kind, ns, stored["metadata"]["name"], "status")
            for _ in range(10):  # a controller may write the new object first (409: re-read)
                stored["status"] = status
                code, body = await self.request("PUT", path, stored)
                if code != 409:
                    break
                _, stored = await self.request("GET", path)
            if code >= 300:
                raise AssertionError(f"seeding {kind} status: {code} {body}")
            stored = body
        if kind == "PodDisruptionBudget":
            stored = await self._settled_pdb(ns, stored["metadata"]["name"])
        return dict(stored)

    async def _settled_pdb(self, ns: str, name: str) -> dict[str, Any]:
        """The PDB once the disruption controller computed its status: until then the real
        server answers every eviction it covers with 429 (the in-memory one computes it inline)."""
        deadline = time.monotonic() + 30
        while True:
            code, pdb = await self.request("GET", rest_path("PodDisruptionBudget", ns, name))
            observed = (pdb.get("status") or {}).get("observedGeneration", 0)
            if code == 200 and observed >= pdb["metadata"].get("generation", 1):
                return dict(pdb)
            if time.monotonic() > deadline:
                raise AssertionError(f"PDB {ns}/{name}: the disruption controller never "
                                     f"computed its status: {pdb}")
            await asyncio.sleep(0.1)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.server is not None:
            return self.server.get(kind, namespace, name)
        code, obj = await self.request("GET", rest_path(kind, namespace, name))
        return dict(obj) if code == 200 else None

    async def inventory(self) -> set[tuple[str, str, str]]:
        """(kind, namespace, name) of every object of the CLEANED kinds."""
        out: set[tuple[str, str, str]] = set()
        for kind in CLEANED:
            code, body = await self.request("GET", collection_path(kind))
            if code != 200:
                continue
            for item in body.get("items", []):
                m = item["metadata"]
                out.add((kind, m.get("namespace", ""), m["name"]))
        return out

    async def cleanup(self) -> None:
        """Delete what the test created (real backend), pods without grace: no kubelet runs."""
        left: list[str] = []
        try:
            if self.server is None:
                for kind, ns, name in sorted(await self.inventory() - self.baseline):
                    if kind == "Namespace" and name in SYSTEM_NAMESPACES:
                        continue
                    if kind == "Pod":
                        # A finalizer a test set would keep the pod; drop it, delete at once.
                        await self.request("PATCH", rest_path(kind, ns, name),
                                           {"metadata": {"finalizers": None}},
                                           "application/merge-patch+json")
                    code, body = await self.request(
                        "DELETE", rest_path(kind, ns, name) + "?gracePeriodSeconds=0")
                    if code not in (200, 202, 404):  # 404: gone with its owner already
                        left.append(f"{kind} {ns}/{name}: DELETE answered {code} {body}")
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None
        if left:  # the next test would find them: say so here, not as a puzzle later
            raise AssertionError("objects this test created could not be deleted:\n"
                                 + "\n".join(left))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def micro_time(now: float) -> str:
    """``now`` as a Kubernetes MicroTime (what a kubelet writes in its Lease's renewTime)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


async def renew_node_lease(kube: Backend, node: str, *, create: bool = False,
                           now: float | None = None) -> None:
    """Renew ``node``'s Lease in kube-node-lease as its kubelet would (``create``: make it first,
    or renew it if it exists)."""
    stamp = micro_time(time.time() if now is None else now)
    if create:
        code, _ = await kube.request("POST", rest_path("Lease", "kube-node-lease"), {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": stamp}})
        if code != 409:
            return
    await kube.request("PATCH", rest_path("Lease", "kube-node-lease", node),
                       {"spec": {"renewTime": stamp}}, "application/merge-patch+json")


class Heartbeats:
    """Renews each node's Lease in kube-node-lease (and its Ready heartbeat once), as kubelets
    do: without it a real node lifecycle controller marks a new node's pods NotReady at once and
    taints the node unreachable after --node-monitor-grace-period. ``stop(node)`` silences one
    node (the failure the failover tests inject). Use as ``async with Heartbeats(kube, nodes)``."""

    def __init__(self, kube: Backend, nodes: list[str], every: float = 2.0) -> None:
        self.kube = kube
        self.alive = set(nodes)
        self.every = every
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeats:
        for name in sorted(self.alive):
            await self._renew(name, create=True)
            path = rest_path("Node", "", name, "status")
            cond = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}
            await self.kube.request("PATCH", path, {"status": {"conditions": [cond]}},
                                    "application/strategic-merge-patch+json")
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def stop(self, node: str) -> None:
        self.alive.discard(node)

    async def _renew(self, node: str, create: bool = False) -> None:
        await renew_node_lease(self.kube, node, create=create)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            for name in sorted(self.alive):
                await self._renew(name)


def cluster_singleton() -> Iterator[RealCluster]:
    """Generator for a session fixture: one RealCluster, stopped at the end."""
    cluster = RealCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


RBAC = ROOT / "deploy" / "rbac.yaml"
SA = "/api/v1/namespaces/kube-system/serviceaccounts/nodemedic"


def kubectl(cluster: RealCluster, kube: Backend, *args: str, stdin: str | None = None) -> str:
    """Run the pinned kubectl as cluster-admin; fails with its stderr."""
    assert kube.creds is not None
    out = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(kube.creds.kubeconfig), *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout


async def nodemedic_token(cluster: RealCluster, kube: Backend) -> str:
    """deploy/rbac.yaml applied; a one-hour token of its nodemedic ServiceAccount (TokenRequest,
    as `kubectl create token nodemedic -n kube-system` gives)."""
    await asyncio.to_thread(kubectl, cluster, kube, "apply", "-f", str(RBAC))
    code, tr = await kube.request("POST", f"{SA}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}})
    assert code == 201, tr
    return str(tr["status"]["token"])
