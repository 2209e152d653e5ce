"""A recorded incident for the replay tests: one definition, written two ways.

:func:`sample` says, per node and step, what the kubelet collector saw (up 1/0), that it failed
(``FAILED``: recorded as nodemedic_collector_success 0 and no series) or that Prometheus recorded
nothing at all (``OUTAGE``: a scrape outage). :func:`openmetrics` renders it for
``promtool tsdb create-blocks-from openmetrics``; :func:`snapshot` is the Snapshot the live
agent took at that step (for an outage: what replay must assume, a failed collection).
:class:`Prometheus` runs the Debian prometheus on blocks made from it.
"""

from __future__ import annotations

import math
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from agent.collectors import registry
from agent.structs.metrics import Family
from agent.structs.snapshot import CollectorStatus, Snapshot
from tests.loopthread import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
STEP = 10.0
STEPS = 180  # 30 minutes
FAILED = "failed"
OUTAGE = "outage"
Sample = float | str  # 1.0 / 0.0, FAILED or OUTAGE

RULES = """\
rules:
  - name: kubelet-down
    description: the kubelet is down
    severity: critical
    when:
      metric: nodemedic_kubelet_up
      op: "=="
      value: 0
    for: 1m
    healthy_for: 2m
    cooldown: 10m
    actions:
      - type: restart-service
        unit: kubelet.service
    escalate:
      - after: 2m
        actions:
          - type: cordon
        undo:
          - type: uncordon
"""


def _down(*spans: tuple[int, int]) -> Callable[[float], float]:
    return lambda t: 0.0 if any(a <= t < b for a, b in spans) else 1.0


_UP: dict[str, Callable[[float], float]] = {
    "node-a": _down((60, 300), (480, 1200)),
    "node-b": _down((600, 1500)),
    "node-c": _down((700, 1500)),
    "node-d": _down((240, 600)),
}
_BROKEN: dict[str, tuple[str, int, int]] = {
    "node-c": (FAILED, 300, 400),  # the kubelet collector failed (inclusive seconds)
    "node-d": (OUTAGE, 300, 400),  # Prometheus scraped nothing, while the rule was pending
}
NODES = tuple(_UP)


def sample(node: str, rel: float) -> Sample:
    broken = _BROKEN.get(node)
    if broken is not None and broken[1] <= rel <= broken[2]:
        return broken[0]
    return _UP[node](rel)


def window_start() -> float:
    """Four hours ago on a two-hour block boundary: in the past, inside retention."""
    return float(math.floor(time.time() / 7200) * 7200 - 4 * 3600)


def openmetrics(t0: float) -> str:
    rows: dict[str, list[str]] = {"nodemedic_kubelet_up": [], "nodemedic_collector_success": []}
    for node in NODES:
        for i in range(STEPS):
            rel = i * STEP
            value = sample(node, rel)
            if value == OUTAGE:
                continue
            at = f"{t0 + rel:.0f}"
            # address: the target as scraped, what instance is without relabelling
            address = f"10.0.0.{NODES.index(node) + 1}:9678"
            inst = f'instance="{node}",job="nodemedic",address="{address}"'
            ok = 0 if value == FAILED else 1
            rows["nodemedic_collector_success"].append(
                f'nodemedic_collector_success{{collector="kubelet",{inst}}} {ok} {at}')
            if value != FAILED:
                rows["nodemedic_kubelet_up"].append(
                    f"nodemedic_kubelet_up{{{inst}}} {value:g} {at}")
        if node == "node-b":  # a second job (federation) with other values: --replay.match
            rows["nodemedic_kubelet_up"] += [
                f'nodemedic_kubelet_up{{instance="{node}",job="federate"}} 1 {t0 + i * STEP:.0f}'
                for i in range(STEPS)]
    out = []
    for metric, lines in rows.items():
        out += [f"# HELP {metric} recorded", f"# TYPE {metric} gauge", *lines]
    return "\n".join([*out, "# EOF", ""])


def snapshot(node: str, t0: float, i: int) -> Snapshot:
    """What the live agent on ``node`` collected at step ``i`` (kubelet collector only)."""
    owner, spec = registry.metric_catalogue()["nodemedic_kubelet_up"]
    t = t0 + i * STEP
    value = sample(node, i * STEP)
    ok = isinstance(value, float)
    families = {}
    if isinstance(value, float):
        fam = Family(spec)
        fam.add((), value)
        families[spec.name] = fam
    status = CollectorStatus(owner, ok, 0.0, None if ok else "failed", reason="" if ok else "error")
    return Snapshot(taken_at=t, monotonic=t, families=MappingProxyType(families),
                    collectors=MappingProxyType({owner: status}),
                    owners=MappingProxyType({spec.name: owner}))


class Prometheus:
    """The Debian Prometheus serving TSDB blocks made by promtool from ``text``."""

    def __init__(self, workdir: Path, text: str) -> None:
        self.workdir = workdir
        (workdir / "history.om").write_text(text)
        data = workdir / "data"
        subprocess.run([str(PROMTOOL), "tsdb", "create-blocks-from", "openmetrics",
                        str(workdir / "history.om"), str(data)], check=True,
                       capture_output=True, timeout=120)
        (workdir / "prometheus.yml").write_text("global: {}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(3):  # the port can be taken between free_port() and the bind
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self.proc = subprocess.Popen(
                [str(PROMETHEUS), f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=3650d",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("wb"))
            if self._ready():
                return
            self.stop()
        raise RuntimeError(f"prometheus did not start: {(workdir / 'prometheus.log').read_text()}")

    def _ready(self) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
