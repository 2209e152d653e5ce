"""Evaluates every dashboard query and alert expression on a real Prometheus scraping real agents.

Starts, all on loopback: the in-memory API server (nodemedic_sim.apiserver, in a background
thread) seeded with the captured minikube Node and the pause ConfigMap; a fake kubelet serving
captured kubelet responses; two `nodemedic run` agents (`node-a` on the cgroup v2 systemd-driver
fixture tree, `node-b` on the v1 cgroupfs tree plus the kube-proxy-like iptables/conntrack lab
capture, so Service skew has data); and Debian's /usr/bin/prometheus scraping both every second
with dashboards/alerts.yaml loaded. Both agents run the default rules plus TEST_RULE, which
sends a cordon to the safety gate every tick, so the remediation series exist: node-a runs
with a cordon budget of 0 (every request denied with reason cluster_cap), node-b in plain
dry-run; each agent keeps its local state in its own fresh --state.dir. Once samples are in,
every PromQL expression of every dashboard panel and every alert goes through /api/v1/query:
each must parse, and each must return data unless the test lists why it is legitimately empty
here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
import yaml

from tests.loopthread import LoopThread, free_port

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = Path("/usr/bin/prometheus")
ALERTS = REPO / "dashboards" / "alerts.yaml"
FIXTURES = REPO / "tests" / "fixtures"
SCRAPE_JOB = "nodemedic"
# Grafana variables with "All" selected, a 1m rate interval and a 5m dashboard range.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__range": "5m"}

# A rule that fires on every tick (the fake kubelet is healthy), asking for a cordon.
TEST_RULE = """\
rules:
  - name: test-always-cordon
    description: Fires while the kubelet is up, so the gate sees a cordon request every tick.
    severity: info
    when: {metric: nodemedic_kubelet_up, op: "==", value: 1}
    for: 0s
    actions:
      - type: cordon
"""

# Metrics that have no series in this setup, and why. A query that returns nothing passes only
# if it uses one of these (or its panel is listed in LEGITIMATELY_EMPTY_PANELS).
LEGITIMATELY_EMPTY_METRICS: dict[str, str] = {
    "nodemedic_drain_pods_remaining": "exists only while a drain runs; nothing is drained here",
    "nodemedic_drain_started_timestamp_seconds": "exists only while a drain runs",
    "nodemedic_clock_majority_offset_seconds":
        "needs two measured peers (three clocks) for a majority; each agent here has one",
    "nodemedic_clock_majority_drifted":
        "needs two measured peers (three clocks) for a majority; each of the two agents here "
        "has one peer (tests/integration/failover/test_peer_clock.py measures three)",
}

# Panels whose filter removes every series while nothing is wrong, and why.
LEGITIMATELY_EMPTY_PANELS: dict[tuple[str, str], str] = {
    ("remediation-audit.json", "Pause switches"): "shows only pauses (> 0); nothing is paused",
    ("remediation-audit.json", "Actions in the time range"):
        "shows only counts that grew (> 0) in the range; the engine requests the test rule's "
        "cordon once, when the rule starts firing, before Prometheus' first scrape",
    ("service-skew.json", "kube-proxy chain problems"):
        "shows only problems (> 0); the lab iptables capture has none",
}

T = TypeVar("T")


def _load_generator() -> ModuleType:
    path = REPO / "dashboards" / "generate.py"
    spec = importlib.util.spec_from_file_location("nodemedic_dashboards_generate_it", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _runtime_available() -> bool:
    try:
        return importlib.util.find_spec("agent.runtime.daemon") is not None
    except ImportError:
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PROMETHEUS.exists(), reason="/usr/bin/prometheus is not installed"),
    pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed"),
    pytest.mark.skipif(not _runtime_available(), reason="agent runtime not available"),
]

gen = _load_generator()


def concrete(expr: str) -> str:
    """Replace Grafana variables the way "All", a 1m rate interval and a 5m range would."""
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$[a-z_]+", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """nodemedic_* metric names an expression reads."""
    return set(re.findall(r"\bnodemedic_[a-z0-9_]+", expr))


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


@dataclass
class Stack:
    """The running processes and the Prometheus URL the tests query."""

    prom_url: str
    logs: dict[str, Path] = field(default_factory=dict)
    state_dirs: dict[str, Path] = field(default_factory=dict)  # agent -> its --state.dir

    def query(self, promql: str) -> dict[str, Any]:
        """GET /api/v1/query; returns the JSON body also for 400 (parse errors)."""
        url = f"{self.prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        return body

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.prom_url + path, timeout=10) as resp:
            body: dict[str, Any] = json.load(resp)
        return body

    def tails(self) -> str:
        return "\n".join(
            f"--- {name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for name, p in self.logs.items() if p.exists()
        )


def _fake_proc(root: Path) -> Path:
    """A procfs whose net/nf_conntrack is the lab capture; everything else links to /proc."""
    proc = root / "proc"
    (proc / "net").mkdir(parents=True)
    for name in os.listdir("/proc"):
        if not name.isdigit() and name != "net":
            (proc / name).symlink_to(f"/proc/{name}")
    shutil.copy(FIXTURES / "net" / "lab_kubeproxy_like_proc_net_nf_conntrack.txt",
                proc / "net" / "nf_conntrack")
    return proc


def _seed_apiserver(server: Any) -> None:
    """The captured minikube Node twice (one per agent), their kubelet Leases and the pause
    ConfigMap."""
    node_list = yaml.safe_load((FIXTURES / "k8s" / "node_list_minikube_v1.35.yaml").read_text())
    node = node_list["items"][0]
    for name in ("minikube", "minikube-m02"):
        obj = json.loads(json.dumps(node))
        obj["metadata"] = {k: v for k, v in obj["metadata"].items()
                           if k not in ("resourceVersion", "uid", "creationTimestamp")}
        obj["metadata"]["name"] = name
        server.create(obj)
        renewed = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        server.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": name, "namespace": "kube-node-lease"},
                       "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                                "renewTime": renewed}})
    server.create({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "nodemedic", "namespace": "kube-system"},
                   "data": {"paused": "false"}})


def _wait(what: str, check: Any, stack: Stack, timeout: float = 60.0,
          detail: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    extra = f"\nlast state: {detail()}" if detail is not None else ""
    pytest.fail(f"timed out waiting for {what}{extra}\n{stack.tails()}")


def _prometheus_ready(stack: Stack, proc: subprocess.Popen[bytes]) -> bool:
    """Wait for /-/ready; False if Prometheus exited (e.g. its port was taken)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(stack.prom_url + "/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"Prometheus did not become ready\n{stack.tails()}")


def _wait_for_log(stack: Stack, name: str, pattern: str, timeout: float = 30.0) -> str:
    """First group of ``pattern`` in process ``name``'s output, once it appears."""
    found: list[str] = []

    def check() -> bool:
        match = re.search(pattern, stack.logs[name].read_text(errors="replace"))
        if match:
            found.append(match.group(1))
        return match is not None

    _wait(f"{name} to log {pattern}", check, stack, timeout)
    return found[0]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API server, fake kubelet, two agents and Prometheus; everything stopped afterwards."""
    from nodemedic_sim.apiserver import ApiServer

    tmp = tmp_path_factory.mktemp("prom-assets")
    procs: list[subprocess.Popen[bytes]] = []
    loop = LoopThread()
    server = ApiServer()
    stack = Stack(prom_url="")
    try:
        loop.run(server.start())
        _seed_apiserver(server)
        kubeconfig = server.write_kubeconfig(tmp / "kubeconfig")

        def spawn(name: str, argv: list[str]) -> None:
            log = tmp / f"{name}.log"
            stack.logs[name] = log
            with log.open("wb") as out:
                procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                              cwd=REPO, stdin=subprocess.DEVNULL))

        # Port 0 everywhere a process reports its address, so no other test can take the port
        # between choosing and binding it.
        spawn("fake-kubelet", [sys.executable, "-m", "nodemedic_sim.fake_kubelet",
                               "--fixtures", str(FIXTURES / "kubelet"), "--port", "0"])
        kubelet_url = _wait_for_log(stack, "fake-kubelet", r"(http://127\.0\.0\.1:\d+)")
        rules = tmp / "rules"
        rules.mkdir()
        for rule_file in (REPO / "rules").glob("*.yaml"):
            shutil.copy(rule_file, rules)
        (rules / "zz-test-always-cordon.yaml").write_text(TEST_RULE)
        common = ["--kubelet.url", kubelet_url, "--collect.interval", "1s",
                  "--rules.dir", str(rules), "--kubeconfig", str(kubeconfig),
                  "--dry-run", "--log.format", "json", "--failover.enabled",
                  # Clock exchanges every second (default 30 s), as often as the ticks: the
                  # two agents have measured each other by the time the dashboards' queries
                  # run, and an exchange that starved an agent would fail the readiness wait.
                  "--peerclock.interval", "1s",
                  # The shipped problem definitions on the real /dev/kmsg and journal, so that
                  # the problem metrics (NodemedicNodeProblem) have series.
                  "--problems.dir", str(REPO / "problems")]
        agents = {
            "node-a": ["--node-name", "minikube", "--safety.max-cordoned", "0",
                       "--path.cgroupfs", str(FIXTURES / "cgroup" / "v2-systemd")],
            "node-b": ["--node-name", "minikube-m02",
                       "--path.cgroupfs", str(FIXTURES / "cgroup" / "v1-cgroupfs"),
                       "--path.procfs", str(_fake_proc(tmp)),
                       "--lbskew.iptables-save-file",
                       str(FIXTURES / "net" / "lab_kubeproxy_like_iptables_save_nat.txt")],
        }
        targets = []
        for instance, extra in agents.items():
            # Each agent its own fresh local state, as each node has its own disk: a shared or
            # machine-wide one (/var/lib/nodemedic: a module fixture runs before conftest's
            # per-test $STATE_DIRECTORY) hands node-a the ledger of an earlier run, in which the
            # test rule's cordon step was already taken, so it never asks the gate again and
            # no denied action ever appears.
            stack.state_dirs[instance] = tmp / f"{instance}-state"
            spawn(instance, [sys.executable, "-m", "agent", "run",
                             "--web.listen-address", "127.0.0.1:0", *common, *extra,
                             "--state.dir", str(stack.state_dirs[instance])])
        for instance in agents:
            # The bound port from the "started" line, not a ":0" echoed by an earlier warning.
            listen = _wait_for_log(stack, instance, r'"listen": "(127\.0\.0\.1:[1-9]\d*)"')
            targets.append({"targets": [listen],
                            "labels": {"instance": instance, "cluster": "test"}})

        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": SCRAPE_JOB, "static_configs": targets}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        # Prometheus cannot listen on port 0 and report it: pick a free port, and pick again if
        # something else took it before Prometheus bound it (it then exits at once).
        for attempt in range(3):
            prom_port = free_port()
            spawn("prometheus", [str(PROMETHEUS), f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / f'tsdb{attempt}'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}",
                                 "--log.level=warn"])
            stack.prom_url = f"http://127.0.0.1:{prom_port}"
            if _prometheus_ready(stack, procs[-1]):
                break

        last_seen: dict[str, str] = {}

        def ready() -> bool:
            up = stack.query(f'count(up{{job="{SCRAPE_JOB}"}} == 1)')["data"]["result"]
            ticks = stack.query(
                f'min(count_over_time(nodemedic_last_tick_timestamp_seconds{{job="{SCRAPE_JOB}"}}[1m]))'
            )["data"]["result"]
            denied = stack.query("count(nodemedic_actions_denied_total)")["data"]["result"]
            with urllib.request.urlopen(f"{stack.prom_url}/api/v1/targets", timeout=5) as r:
                active = json.load(r)["data"]["activeTargets"]
            errors = {t["labels"].get("instance"): t.get("lastError") for t in active}
            last_seen["state"] = f"scrape errors={errors} ticks={ticks} denied={denied}"
            return (bool(up) and up[0]["value"][1] == "2" and bool(ticks)
                    and float(ticks[0]["value"][1]) >= 5 and bool(denied))

        _wait("both agents scraped 5 times and a denied action", ready, stack,
              detail=lambda: last_seen.get("state", ""))
        yield stack
    finally:
        for proc in reversed(procs):
            _stop(proc)
        if server.running:
            loop.run(server.stop())
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _explain_empty(board: str, title: str, expr: str) -> str | None:
    """Why an empty result is acceptable, or None if it is not."""
    if (board, title) in LEGITIMATELY_EMPTY_PANELS:
        return LEGITIMATELY_EMPTY_PANELS[(board, title)]
    reasons = [LEGITIMATELY_EMPTY_METRICS[m] for m in metric_names(expr)
               if m in LEGITIMATELY_EMPTY_METRICS]
    return "; ".join(reasons) or None


def test_prometheus_scrapes_both_agents(stack: Stack) -> None:
    """Both agents are up in Prometheus with the instance and cluster labels of the docs."""
    result = stack.query(f'up{{job="{SCRAPE_JOB}"}}')["data"]["result"]
    assert {(r["metric"]["instance"], r["metric"]["cluster"], r["value"][1]) for r in result} == {
        ("node-a", "test", "1"), ("node-b", "test", "1")
    }


def test_each_agent_starts_from_its_own_fresh_local_state(stack: Stack) -> None:
    """Each agent loaded its local state from its own directory and found none: what another
    node or an earlier run did cannot decide whether this run's rules ask the gate."""
    loaded = {}
    for instance in stack.state_dirs:
        events = [json.loads(line) for line in stack.logs[instance].read_text().splitlines()
                  if '"local_state_loaded"' in line]
        assert len(events) == 1, stack.tails()
        loaded[instance] = (events[0]["path"], events[0]["found"])
    assert loaded == {instance: (str(state_dir / "state.json"), False)
                      for instance, state_dir in stack.state_dirs.items()}
    assert set(loaded) == {"node-a", "node-b"}


@pytest.mark.parametrize(("board", "title", "expr"), gen.queries(),
                         ids=[f"{b}:{t}" for b, t, _ in gen.queries()])
def test_dashboard_query_parses_and_returns_data(stack: Stack, board: str, title: str,
                                                 expr: str) -> None:
    """Each panel query is valid PromQL for this Prometheus and returns data (or is listed)."""
    body = stack.query(concrete(expr))
    assert body["status"] == "success", f"{title}: {body.get('error')}"
    if not body["data"]["result"]:
        assert _explain_empty(board, title, expr), (
            f"{board} / {title}: no data for {concrete(expr)}\n{stack.tails()}"
        )


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: str(r["alert"]))
def test_alert_expression_parses_and_reads_existing_series(
    stack: Stack, rule: dict[str, Any]
) -> None:
    """Each alert's expression parses, and every metric it reads has series (or is listed).

    The expression itself is empty while nothing is wrong, so what must have data is what it
    reads: an alert on a misspelt or unexported metric would never fire.
    """
    body = stack.query(rule["expr"])
    assert body["status"] == "success", f"{rule['alert']}: {body.get('error')}"
    for name in sorted(metric_names(rule["expr"])):
        result = stack.query(f'count({name}{{job="{SCRAPE_JOB}"}})')["data"]["result"]
        if not result:
            assert name in LEGITIMATELY_EMPTY_METRICS, (
                f"{rule['alert']} reads {name}, which no agent exports\n{stack.tails()}"
            )


def test_prometheus_evaluates_every_alert_rule_without_error(stack: Stack) -> None:
    """Prometheus loaded all alert rules from alerts.yaml and evaluates each with health ok."""

    def evaluated() -> bool:
        rules = [r for g in stack.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return len(rules) == len(_alert_rules()) and all(
            r["lastEvaluation"] > "2000" for r in rules
        )

    _wait("every alert rule evaluated once", evaluated, stack, timeout=30)
    rules = [r for g in stack.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad
