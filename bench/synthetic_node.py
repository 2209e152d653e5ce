"""Write a synthetic Kubernetes node's kubepods cgroup tree, and the kubelet /pods list matching it.

Used by bench/footprint.py and bench/cgroup_collect.py (250 pods x 2 containers, the size the
footprint targets are stated for) and by tests/unit/collectors/test_cgroup_synthetic.py. File
contents are the real captures in tests/fixtures/cgroup/captures/ with their numbers scaled per
cgroup (deterministically, from ``seed``), so every file has the kernel's exact format and size;
limits, quotas, throttling and OOM kills are set according to each pod's QoS class.

    from bench.synthetic_node import build_node, pods_json
    refs = build_node(Path("/tmp/node"), pods=250, containers=2, layout="v2-systemd")
    doc = pods_json(refs)   # serve as the kubelet's /pods
    summary = summary_json(refs)   # and as its /stats/summary

Two things make it a real node rather than a kind one, both opt-in (the benches that compare
with earlier rounds keep the node those rounds had):

- ``sandbox_pid``: every pod also holds its sandbox, as containerd makes it (a
  ``cri-containerd-<id>.scope`` beside the containers, no limits, not in the kubelet's lists)
  whose ``cgroup.procs`` names that process; :func:`pause_process` runs one whose ``comm`` is
  ``pause``, as the runtime's is.
- :class:`Advancer`: the kernel's counters move between reads (CPU usage, CFS periods and
  throttled periods of limited containers, PSI totals of pressured ones, memory usage jitter),
  so history and windowed rules work on changing series as on a live node.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from agent.structs.pods import PodRef

Layout = Literal["v2-systemd", "v1-cgroupfs"]

CAPTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cgroup" / "captures"
_V2_SRC = CAPTURES / "v2_user_session_scope"
_V1_SRC = CAPTURES / "v1_eks_amzn2_kubepods_burstable_container"
_V2_FILES = ("memory.current", "memory.stat", "memory.max", "memory.events", "cpu.stat",
             "cpu.max", "cpu.pressure", "memory.pressure", "io.pressure", "cpu.weight",
             "memory.high", "pids.current")
_V1_MEM_FILES = ("memory.usage_in_bytes", "memory.stat", "memory.limit_in_bytes",
                 "memory.oom_control", "memory.failcnt", "memory.max_usage_in_bytes")
_V1_CPU_FILES = ("cpu.stat", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares",
                 "cpuacct.usage", "cpuacct.stat", "cpuacct.usage_percpu")
_V1_UNLIMITED = "9223372036854771712\n"
_NAMESPACES = ("default", "kube-system", "payments", "search", "checkout", "batch", "monitoring")
_APPS = ("api", "worker", "web", "cache", "indexer", "gateway", "exporter", "scheduler")
_QOS = (("Guaranteed", 0.15), ("Burstable", 0.55), ("BestEffort", 0.30))
_UNSCALED = frozenset({"cpu.weight", "cpu.shares", "memory.high"})
_NUM = re.compile(rb"(?<![\w.])(\d+)(?![\w.])")


def _load(src: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {n: (src / n).read_bytes() for n in names if (src / n).exists()}


def _scale(data: bytes, factor: float) -> bytes:
    """Multiply every integer in a keyed/flat file by ``factor`` (keeps ratios plausible)."""
    return _NUM.sub(lambda m: str(int(int(m.group(1)) * factor)).encode(), data)


def _write(d: Path, files: dict[str, bytes]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with open(d / name, "wb") as f:
            f.write(data)


def _psi(rng: random.Random, pressured: bool) -> bytes:
    lines = []
    for kind in ("some", "full"):
        a10 = rng.uniform(5, 40) if pressured else 0.0
        total = rng.randrange(10**6, 10**9) if pressured else rng.randrange(0, 10**6)
        lines.append(f"{kind} avg10={a10:.2f} avg60={a10 / 2:.2f} avg300={a10 / 4:.2f} "
                     f"total={total}\n")
    return "".join(lines).encode()


def _v2_files(base: dict[str, bytes], rng: random.Random, qos: str) -> dict[str, bytes]:
    # The capture is a 10 GiB session; real containers are 10 MiB..1 GiB: factor 0.001..0.1.
    f = rng.uniform(0.001, 0.1)
    out = {n: d if n in _UNSCALED else _scale(d, f) for n, d in base.items()}
    usage = int(out["memory.current"])
    limited = qos != "BestEffort"
    throttled = limited and rng.random() < 0.2
    quota = rng.choice((10000, 25000, 50000, 100000, 200000))
    out["memory.max"] = f"{usage * 2 // 4096 * 4096}\n".encode() if limited else b"max\n"
    out["cpu.max"] = f"{quota} 100000\n".encode() if limited else b"max 100000\n"
    periods = rng.randrange(10**4, 10**6) if limited else 0
    nthr = rng.randrange(1, max(2, periods // 10)) if throttled else 0
    out["cpu.stat"] = re.sub(
        rb"nr_periods \d+\nnr_throttled \d+\nthrottled_usec \d+",
        f"nr_periods {periods}\nnr_throttled {nthr}\nthrottled_usec {nthr * 37000}".encode(),
        out["cpu.stat"],
    )
    kills = 1 if rng.random() < 0.02 else 0
    out["memory.events"] = (f"low 0\nhigh 0\nmax {kills * 12}\noom {kills}\noom_kill {kills}\n"
                            "oom_group_kill 0\n").encode()
    out["cpu.pressure"] = _psi(rng, throttled)
    out["memory.pressure"] = _psi(rng, False)
    out["io.pressure"] = _psi(rng, rng.random() < 0.1)
    return out


def _v1_files(
    mem: dict[str, bytes], cpu: dict[str, bytes], rng: random.Random, qos: str
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    # The capture is a 1.2 GiB container: factor 0.01..0.8.
    f = rng.uniform(0.01, 0.8)
    m = {n: _scale(d, f) for n, d in mem.items()}
    fc = rng.uniform(0.001, 0.5)
    c = {n: d if n in _UNSCALED else _scale(d, fc) for n, d in cpu.items()}
    usage = int(m["memory.usage_in_bytes"])
    limited = qos != "BestEffort"
    m["memory.limit_in_bytes"] = (f"{usage * 2 // 4096 * 4096}\n".encode() if limited
                                  else _V1_UNLIMITED.encode())
    m["memory.oom_control"] = (f"oom_kill_disable 0\nunder_oom 0\n"
                               f"oom_kill {1 if rng.random() < 0.02 else 0}\n").encode()
    c["cpu.cfs_period_us"] = b"100000\n"
    if limited:
        c["cpu.cfs_quota_us"] = f"{rng.choice((10000, 25000, 50000, 100000))}\n".encode()
        periods = rng.randrange(10**4, 10**6)
        nthr = rng.randrange(1, periods // 10) if rng.random() < 0.2 else 0
    else:
        c["cpu.cfs_quota_us"] = b"-1\n"
        periods = nthr = 0
    c["cpu.stat"] = (f"nr_periods {periods}\nnr_throttled {nthr}\n"
                     f"throttled_time {nthr * 37000000}\n").encode()
    return m, c


def build_node(
    root: Path,
    pods: int = 250,
    containers: int = 2,
    layout: Layout = "v2-systemd",
    *,
    seed: int = 2,
    sandbox_pid: int | None = None,
) -> list[PodRef]:
    """Write the tree under ``root`` (created) and return the pods it holds; with
    ``sandbox_pid``, each pod's sandbox cgroup too (holding that process)."""
    if layout not in ("v2-systemd", "v1-cgroupfs"):
        raise ValueError(f"layout must be v2-systemd or v1-cgroupfs, got {layout!r}")
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    refs: list[PodRef] = []
    if layout == "v2-systemd":
        base = _load(_V2_SRC, _V2_FILES)
        (root / "cgroup.controllers").write_bytes(b"cpuset cpu io memory hugetlb pids rdma misc\n")
        top = root / "kubepods.slice"
        _write(top, base)
        for q in ("burstable", "besteffort"):
            _write(top / f"kubepods-{q}.slice", base)
    else:
        mem_base = _load(_V1_SRC, _V1_MEM_FILES)
        cpu_base = _load(_V1_SRC, _V1_CPU_FILES)
        (root / "cpu,cpuacct").mkdir(parents=True, exist_ok=True)
        for link in ("cpu", "cpuacct"):
            if not (root / link).exists():
                os.symlink("cpu,cpuacct", root / link)
        mtop, ctop = root / "memory" / "kubepods", root / "cpu,cpuacct" / "kubepods"
        for q in ("", "burstable", "besteffort"):
            _write(mtop / q, mem_base)
            _write(ctop / q, cpu_base)
    for i in range(pods):
        qos = rng.choices([q for q, _ in _QOS], weights=[w for _, w in _QOS])[0]
        uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        app = rng.choice(_APPS)
        name = f"{app}-{rng.getrandbits(40):010x}"[:20] + f"-{i}"
        ctrs = {f"{rng.getrandbits(256):064x}": (app if j == 0 else f"sidecar-{j}")
                for j in range(containers)}
        refs.append(PodRef(uid, rng.choice(_NAMESPACES), name, qos, "Running", ctrs))
        ql = qos.lower()
        if layout == "v2-systemd":
            u = uid.replace("-", "_")
            pod_dir = (top / f"kubepods-pod{u}.slice" if qos == "Guaranteed"
                       else top / f"kubepods-{ql}.slice" / f"kubepods-{ql}-pod{u}.slice")
            _write(pod_dir, _v2_files(base, rng, qos))
            for cid in ctrs:
                _write(pod_dir / f"cri-containerd-{cid}.scope", _v2_files(base, rng, qos))
            if sandbox_pid is not None:
                # containerd gives the sandbox no limits of its own (the pod's apply).
                files = _v2_files(base, rng, "BestEffort")
                files["cgroup.procs"] = f"{sandbox_pid}\n".encode()
                _write(pod_dir / f"cri-containerd-{rng.getrandbits(256):064x}.scope", files)
        else:
            rel = f"pod{uid}" if qos == "Guaranteed" else f"{ql}/pod{uid}"
            m, c = _v1_files(mem_base, cpu_base, rng, qos)
            _write(mtop / rel, m)
            _write(ctop / rel, c)
            for cid in ctrs:
                m, c = _v1_files(mem_base, cpu_base, rng, qos)
                _write(mtop / rel / cid, m)
                _write(ctop / rel / cid, c)
            if sandbox_pid is not None:
                m, c = _v1_files(mem_base, cpu_base, rng, "BestEffort")
                procs = f"{sandbox_pid}\n".encode()
                sid = f"{rng.getrandbits(256):064x}"
                _write(mtop / rel / sid, {**m, "cgroup.procs": procs})
                _write(ctop / rel / sid, {**c, "cgroup.procs": procs})
    return refs


@contextlib.contextmanager
def pause_process() -> Iterator[int]:
    """A process whose ``comm`` is ``pause`` (``sleep`` run through a symlink of that name, as
    the kernel names a process after the file it executed); yields its PID, stops it after."""
    with tempfile.TemporaryDirectory(prefix="nodemedic-pause-") as d:
        link = Path(d) / "pause"
        os.symlink("/bin/sleep", link)
        proc = subprocess.Popen([str(link), "infinity"])
        try:
            yield proc.pid
        finally:
            proc.terminate()
            proc.wait(10)


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` whole at once, as a kernel file reads: never empty or half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


_CPU_KEYS = re.compile(rb"^([\w.]+) (\d+)$", re.M)


class Advancer:
    """Moves the counters of every container and pod cgroup under a v2 ``root`` as a live node
    does, once per :meth:`step` (or every ``every`` seconds in a thread, :meth:`start`): CPU usage
    grows, limited cgroups count CFS periods (throttled ones throttled periods and time),
    pressured ones PSI totals, and memory usage wanders by up to 2 %."""

    def __init__(self, root: Path, every: float = 10.0, seed: int = 3) -> None:
        self.dirs = sorted(d for d in root.rglob("*") if (d / "cpu.stat").is_file())
        self.every = every
        self.rng = random.Random(seed)
        self.steps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> None:
        rng = self.rng
        for d in self.dirs:
            stat = (d / "cpu.stat").read_bytes()
            vals = {k: int(v) for k, v in _CPU_KEYS.findall(stat)}
            used = rng.randrange(1_000, 2_000_000)  # 0.001..2 s of CPU per step
            inc = {b"usage_usec": used, b"user_usec": used * 2 // 3, b"system_usec": used // 3}
            if vals.get(b"nr_periods"):
                inc[b"nr_periods"] = int(self.every * 10)  # 100 ms periods
                if vals.get(b"nr_throttled"):
                    thr = rng.randrange(0, int(self.every * 10))
                    inc[b"nr_throttled"] = thr
                    inc[b"throttled_usec"] = thr * 37_000
            _replace(d / "cpu.stat", b"".join(
                k + b" " + str(v + inc.get(k, 0)).encode() + b"\n" for k, v in vals.items()))
            mem = d / "memory.current"
            usage = int(mem.read_bytes())
            _replace(mem, f"{max(4096, int(usage * rng.uniform(0.98, 1.02)))}\n".encode())
            psi = d / "cpu.pressure"
            text = psi.read_bytes()
            if b"avg10=0.00" not in text:  # pressured: the stall totals grow
                _replace(psi, re.sub(rb"total=(\d+)", lambda m: b"total=" + str(
                    int(m.group(1)) + rng.randrange(1_000, 500_000)).encode(), text))
        self.steps += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.step()

    def start(self) -> Advancer:
        self._thread = threading.Thread(target=self._run, name="advancer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


def pods_json(refs: list[PodRef], node_name: str = "synthetic-node") -> dict[str, Any]:
    """A kubelet /pods PodList document for ``refs`` (what the kubelet client parses)."""
    items = []
    for ref in refs:
        names = list(ref.containers.values())
        items.append({
            "metadata": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
            "spec": {"nodeName": node_name, "containers": [{"name": n} for n in names]},
            "status": {
                "phase": ref.phase or "Running",
                "qosClass": ref.qos_class,
                "containerStatuses": [
                    {"name": n, "containerID": f"containerd://{cid}", "ready": True,
                     "restartCount": 0, "state": {"running": {}}}
                    for cid, n in ref.containers.items()
                ],
            },
        })
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}


SUMMARY_FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "kubelet" / (
    "stats_summary_minikube_v1.35.json")


def summary_json(refs: list[PodRef], node_name: str = "synthetic-node") -> dict[str, Any]:
    """A kubelet /stats/summary for ``refs``, each pod shaped like a pod of the captured
    minikube summary (cycled: CPU, memory, rootfs, logs, volumes, network per container and
    pod) with this pod's name, namespace, uid and containers. A real kubelet's summary grows by
    ~3.5 KB per pod (~0.9 MB at 250 pods): a bench serving the 17-pod capture instead would
    leave its decoding out of the agent's cost."""
    doc = json.loads(SUMMARY_FIXTURE.read_text())
    templates = [p for p in doc["pods"] if p.get("containers")]
    pods = []
    for i, ref in enumerate(refs):
        p = copy.deepcopy(templates[i % len(templates)])
        p["podRef"] = {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid}
        shape = p["containers"][0]
        p["containers"] = [dict(copy.deepcopy(shape), name=n) for n in ref.containers.values()]
        pods.append(p)
    doc["node"]["nodeName"] = node_name
    doc["pods"] = pods
    return dict(doc)
