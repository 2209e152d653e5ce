"""Scale of the in-memory API server: 5,000 nodes, 50,000 pods and their watches in one process.

Run by `make bench` (bench/run_all.py) or directly:
`python bench/apiserver_scale.py [--nodes 5000] [--pods 50000] [--requests 400]`.
Writes bench/results/apiserver_scale.json and bench/results/apiserver_scale.md.

The server runs in a child process (this script with --serve) so its RSS and CPU are its own. It
is seeded with realistic Nodes (conditions, addresses, capacity), node Leases and Pods (owner,
labels, one container with resources, tolerations, four conditions). Then, from this process:
- one watch per node on its Node and one on its Lease (field selector metadata.name, as the
  nodemedic node collector opens them), i.e. 2 x --nodes concurrent watches;
- request latency p50/p95/p99 at concurrency 8 for: GET node, LIST pods of one node (field
  selector spec.nodeName, as kubectl drain and the kubelet do), PATCH node status (a condition
  heartbeat), PUT lease (a renewal), and the delay until the patched node's watcher sees it;
- full LISTs of all nodes and all pods.
Reported: server RSS empty / seeded / with watches, seed time, server CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodemedic_sim.apiserver import ApiServer  # noqa: E402

RESULTS = REPO / "bench" / "results"
CONCURRENCY = 8


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def node_obj(i: int) -> dict[str, Any]:
    name = f"node-{i:05d}"
    conds = [
        {
            "type": t,
            "status": "False",
            "reason": f"KubeletHas{r}",
            "message": f"kubelet has {m}",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        for t, r, m in (
            ("MemoryPressure", "SufficientMemory", "sufficient memory"),
            ("DiskPressure", "NoDiskPressure", "no disk pressure"),
            ("PIDPressure", "SufficientPID", "sufficient PID"),
        )
    ]
    conds.append(
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    )
    cap = {"cpu": "8", "memory": "32827396Ki", "pods": "110", "ephemeral-storage": "101445540Ki"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": f"zone-{i % 3}",
                "node.kubernetes.io/instance-type": "n2-standard-8",
            },
        },
        "spec": {"podCIDR": f"10.{i // 256}.{i % 256}.0/24", "providerID": f"gce://p/z/{name}"},
        "status": {
            "conditions": conds,
            "capacity": cap,
            "allocatable": cap,
            "addresses": [
                {"type": "InternalIP", "address": f"172.16.{i // 256}.{i % 256}"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.32.0",
                "osImage": "Debian GNU/Linux 12",
                "kernelVersion": "6.1.0",
                "containerRuntimeVersion": "containerd://1.7",
            },
        },
    }


def lease_obj(i: int) -> dict[str, Any]:
    name = f"node-{i:05d}"
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": "2026-01-01T00:00:00.000000Z",
        },
    }


def pod_obj(i: int, nodes: int) -> dict[str, Any]:
    app = f"app-{i % 500}"
    node = f"node-{i % nodes:05d}"
    conds = [
        {"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{app}-{i:06d}",
            "namespace": f"ns-{i % 50}",
            "labels": {"app": app, "pod-template-hash": "5d9c7b8f6c", "tier": "web"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{app}-5d9c7b8f6c",
                    "uid": f"rs-{i % 500}",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "main",
                    "image": f"registry.example/{app}:1.0",
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                }
            ],
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}",
            "qosClass": "Burstable",
            "conditions": conds,
            "containerStatuses": [
                {
                    "name": "main",
                    "ready": True,
                    "restartCount": 0,
                    "image": f"registry.example/{app}:1.0",
                    "started": True,
                }
            ],
        },
    }


async def serve(nodes: int, pods: int) -> None:
    """Child mode: seed, print {"url", "seed_seconds"} and serve until SIGTERM."""
    _raise_fd_limit()
    server = ApiServer(history_size=20_000)
    t0 = time.perf_counter()
    for i in range(nodes):
        server.create(node_obj(i))
        server.create(lease_obj(i))
    for i in range(pods):
        server.create(pod_obj(i, max(nodes, 1)))
    seed_s = time.perf_counter() - t0
    await server.start()
    print(json.dumps({"url": server.url, "seed_seconds": seed_s}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()


def _heartbeat(i: int) -> str:
    return f"2026-01-02T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"


def _pct(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if not xs:
        return {}

    def q(p: float) -> float:
        return round(1000 * xs[min(len(xs) - 1, int(p * len(xs)))], 2)

    return {
        "p50_ms": q(0.50),
        "p95_ms": q(0.95),
        "p99_ms": q(0.99),
        "mean_ms": round(1000 * statistics.fmean(xs), 2),
        "n": len(xs),
    }


class Watches:
    """One streaming watch per (path, name); records when each object's events arrive."""

    def __init__(self) -> None:
        self.seen: dict[str, asyncio.Event] = {}
        self.events = 0
        self.errors = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def _one(
        self,
        http: aiohttp.ClientSession,
        url: str,
        name: str,
        rv: str,
        ready: asyncio.Event,
        key: str,
    ) -> None:
        params = {
            "watch": "true",
            "fieldSelector": f"metadata.name={name}",
            "resourceVersion": rv,
            "timeoutSeconds": "3600",
        }
        try:
            async with http.get(url, params=params) as resp:
                ready.set()
                async for _line in resp.content:
                    self.events += 1
                    ev = self.seen.get(key)
                    if ev is not None:
                        ev.set()
        except (aiohttp.ClientError, asyncio.CancelledError):
            self.errors += 1
            ready.set()

    async def open(
        self, http: aiohttp.ClientSession, url: str, names: list[str], rv: str, kind: str
    ) -> None:
        readies = []
        for n in names:
            ready = asyncio.Event()
            readies.append(ready)
            self.tasks.append(
                asyncio.create_task(self._one(http, url, n, rv, ready, f"{kind}/{n}"))
            )
            if len(readies) % 200 == 0:
                await asyncio.gather(*(r.wait() for r in readies[-200:]))
        await asyncio.gather(*(r.wait() for r in readies))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _timed(n: int, make: Any) -> list[float]:
    lat: list[float] = []
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            await make(i)
            lat.append(time.perf_counter() - t0)

    await asyncio.gather(*(one(i) for i in range(n)))
    return lat


async def _child(nodes: int, pods: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--nodes", str(nodes), "--pods", str(pods)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    _raise_fd_limit()
    empty, _ = await _child(0, 0)
    await asyncio.sleep(0.5)
    rss_empty = psutil.Process(empty.pid).memory_info().rss
    _stop(empty)

    proc, info = await _child(args.nodes, args.pods)
    ps = psutil.Process(proc.pid)
    url = info["url"]
    out: dict[str, Any] = {
        "nodes": args.nodes,
        "pods": args.pods,
        "leases": args.nodes,
        "seed_seconds": round(info["seed_seconds"], 1),
        "rss_empty_mib": round(rss_empty / 2**20, 1),
    }
    try:
        out["rss_seeded_mib"] = round(ps.memory_info().rss / 2**20, 1)
        conn = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
            async with http.get(f"{url}/api/v1/nodes", params={"limit": "1"}) as r:
                rv = (await r.json())["metadata"]["resourceVersion"]
            names = [f"node-{i:05d}" for i in range(args.nodes)]
            watches = Watches()
            t0 = time.perf_counter()
            await watches.open(http, f"{url}/api/v1/nodes", names, rv, "nodes")
            await watches.open(
                http,
                f"{url}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                names,
                rv,
                "leases",
            )
            out["watches"] = len(watches.tasks)
            out["watch_open_seconds"] = round(time.perf_counter() - t0, 1)
            await asyncio.sleep(1)
            out["rss_with_watches_mib"] = round(ps.memory_info().rss / 2**20, 1)
            rng = random.Random(7)
            lat: dict[str, Any] = {}
            cpu0 = ps.cpu_times()
            total_requests = 0

            async def get_node(_i: int) -> None:
                async with http.get(f"{url}/api/v1/nodes/{rng.choice(names)}") as r:
                    await r.read()

            async def pods_on_node(_i: int) -> None:
                async with http.get(
                    f"{url}/api/v1/pods",
                    params={"fieldSelector": f"spec.nodeName={rng.choice(names)}"},
                ) as r:
                    await r.read()

            watch_delay: list[float] = []

            order = names[:]
            rng.shuffle(order)

            async def patch_status(_i: int) -> None:
                n = order[_i % len(order)]  # distinct nodes, so each waiter sees its own event
                seen = watches.seen[f"nodes/{n}"] = asyncio.Event()
                t0 = time.perf_counter()
                async with http.patch(
                    f"{url}/api/v1/nodes/{n}/status",
                    data=json.dumps(
                        {
                            "status": {
                                "conditions": [
                                    {
                                        "type": "Ready",
                                        "status": "True",
                                        # never the seeded value: a no-op patch sends no event
                                        "lastHeartbeatTime": _heartbeat(_i),
                                    }
                                ]
                            }
                        }
                    ),
                    headers={"Content-Type": "application/strategic-merge-patch+json"},
                ) as r:
                    await r.read()
                await asyncio.wait_for(seen.wait(), timeout=30)
                watch_delay.append(time.perf_counter() - t0)

            async def renew_lease(_i: int) -> None:
                n = rng.choice(names)
                base = f"{url}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{n}"
                async with http.get(base) as r:
                    lease = await r.json()
                lease["spec"]["renewTime"] = f"2026-01-01T01:00:{_i % 60:02d}.000000Z"
                async with http.put(
                    base, data=json.dumps(lease), headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()

            for name, fn, n in (
                ("get_node", get_node, args.requests),
                ("list_pods_of_node", pods_on_node, args.requests // 4),
                ("patch_node_status", patch_status, args.requests),
                ("get_and_put_lease", renew_lease, args.requests),
            ):
                lat[name] = _pct(await _timed(n, fn))
                total_requests += n * (2 if name == "get_and_put_lease" else 1)
            lat["watch_event_after_patch"] = _pct(watch_delay)
            full: dict[str, list[float]] = {"list_all_nodes": [], "list_all_pods": []}
            for _ in range(3):
                for key, path in (
                    ("list_all_nodes", "/api/v1/nodes"),
                    ("list_all_pods", "/api/v1/pods"),
                ):
                    t0 = time.perf_counter()
                    async with http.get(url + path) as r:
                        body = await r.read()
                    full[key].append(time.perf_counter() - t0)
                    out[f"{key}_bytes"] = len(body)
                    total_requests += 1
            for key, xs in full.items():
                lat[key] = _pct(xs)
            cpu1 = ps.cpu_times()
            out["latency"] = lat
            out["server_cpu_ms_per_request"] = round(
                1000 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / total_requests, 2
            )
            out["rss_after_load_mib"] = round(ps.memory_info().rss / 2**20, 1)
            out["watch_events_received"] = watches.events
            out["watch_errors"] = watches.errors
            await watches.close()
    finally:
        _stop(proc)
    return out


def write(res: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "apiserver_scale.json").write_text(json.dumps(res, indent=2) + "\n")
    lat = res["latency"]
    rows = "\n".join(
        f"| {k} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | {v['n']} |"
        for k, v in lat.items()
    )
    md = f"""## In-memory API server at scale (`bench/apiserver_scale.py`)

{res["nodes"]:,} Nodes, {res["pods"]:,} Pods and {res["leases"]:,} Leases in one server process,
with {res["watches"]:,} concurrent watches open (one per node on its Node and one on its Lease).
Client and server share this machine's {psutil.cpu_count()} cores; concurrency {CONCURRENCY}.

| memory | RSS (MiB) |
|---|---|
| empty server | {res["rss_empty_mib"]} |
| seeded | {res["rss_seeded_mib"]} |
| with {res["watches"]:,} watches | {res["rss_with_watches_mib"]} |
| after the load below | {res["rss_after_load_mib"]} |

Seeding took {res["seed_seconds"]} s; opening the watches {res["watch_open_seconds"]} s. Server CPU:
{res["server_cpu_ms_per_request"]} ms per request over the load below. Full LIST bodies: nodes
{res["list_all_nodes_bytes"] / 2**20:.1f} MiB, pods {res["list_all_pods_bytes"] / 2**20:.1f} MiB.
Watch events received: {res["watch_events_received"]:,}; watch errors: {res["watch_errors"]}.

| request | p50 ms | p95 ms | p99 ms | n |
|---|---|---|---|---|
{rows}
"""
    (RESULTS / "apiserver_scale.md").write_text(md)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods", type=int, default=50000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.nodes, args.pods))
        return 0
    res = asyncio.run(drive(args))
    write(res)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
