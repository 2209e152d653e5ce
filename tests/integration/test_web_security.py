"""--web.config.file and --web.kubernetes-auth with real clients: Debian's Prometheus scrapes
over TLS with a client certificate, with basic auth and with a ServiceAccount token (up 1) and
fails without them (up 0); curl with a wrong password gets 401 and with a foreign client
certificate no handshake; Debian's node_exporter takes the very same web config files and is
scraped with the same credentials; a bad file exits 2 at start and is refused on SIGHUP while
the last good one keeps working.

Everything runs on loopback: three `nodemedic run` agents (fixture cgroups; the token one
against the in-memory API server, in a thread, serving TokenReview/SubjectAccessReview),
prometheus-node-exporter and /usr/bin/prometheus, all stopped afterwards.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.loopthread import LoopThread, free_port
from tests.pki import Pki, bcrypt_hash

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = Path("/usr/bin/prometheus")
NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")
CURL = Path("/usr/bin/curl")
CGROUPS = REPO / "tests" / "fixtures" / "cgroup" / "v2-systemd"
USER, PASSWORD = "prometheus", "correct horse battery staple"
PROM_SA = "system:serviceaccount:monitoring:prometheus-k8s"

pytestmark = pytest.mark.slow


def _require(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:  # a missing real dependency is a failure, never a skip
        pytest.fail(f"missing {', '.join(missing)}: run `make system-deps`")


@dataclass
class Stack:
    tmp: Path
    pki: Pki
    tls_file: Path
    basic_file: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    prom_url: str = ""
    kube_reviews: Callable[[str], int] = lambda _: 0

    def spawn(self, name: str, argv: list[str]) -> None:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, cwd=self.tmp)

    def tails(self) -> str:
        return "\n".join(f"--- {n}\n{p.read_text(errors='replace')[-1500:]}"
                         for n, p in self.logs.items())

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited ({proc.returncode})\n{self.tails()}")
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}\n{self.tails()}")

    def port_from_log(self, name: str) -> int:
        found: list[int] = []

        def check() -> bool:
            m = re.search(r'"listen": "127\.0\.0\.1:([1-9]\d*)"', self.logs[name].read_text())
            if m:
                found.append(int(m.group(1)))
            return bool(m)

        self.wait(f"{name} to listen", check)
        return found[0]

    def up(self) -> dict[str, float]:
        q = urllib.parse.urlencode({"query": "up"})
        with urllib.request.urlopen(f"{self.prom_url}/api/v1/query?{q}", timeout=5) as r:
            data = json.load(r)
        return {s["metric"]["job"]: float(s["value"][1]) for s in data["data"]["result"]}


def curl(*args: str) -> tuple[int, str]:
    """(curl's exit code, HTTP status or 000)."""
    res = subprocess.run([str(CURL), "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "--max-time", "10", *args], capture_output=True, text=True, timeout=30)
    return res.returncode, res.stdout.strip()


def _agent_argv(*web: str) -> list[str]:
    return [sys.executable, "-m", "agent", "run", "--web.listen-address", "127.0.0.1:0",
            *web, "--path.cgroupfs", str(CGROUPS),
            "--kubelet.url", f"http://127.0.0.1:{free_port()}", "--rules.dir", str(REPO / "rules"),
            "--collect.interval", "1s", "--collector.timeout", "0.5s", "--log.format", "json",
            "--node-name", "test-node", "--dry-run"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require(PROMETHEUS, NODE_EXPORTER, CURL)
    tmp = tmp_path_factory.mktemp("websec")
    pki = Pki(tmp / "pki")
    # node_exporter-style files: relative paths (resolved against the file's directory), the
    # toolkit's keys only.
    tls_file = pki.dir / "web-tls.yml"
    tls_file.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        "  min_version: TLS12\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
        "    Strict-Transport-Security: max-age=31536000\n")
    basic_file = tmp / "web-basic.yml"
    basic_file.write_text(f"basic_auth_users:\n  {USER}: {bcrypt_hash(PASSWORD, 10)}\n")
    st = Stack(tmp, pki, tls_file, basic_file)
    from nodemedic_sim.apiserver import ApiServer

    loop = LoopThread()
    server = ApiServer()
    tokens = {"prometheus": "prometheus-sa-token", "grafana": "grafana-sa-token"}
    for who, token in tokens.items():
        (tmp / f"{who}.token").write_text(token + "\n")
    server.reviews.add_token(tokens["prometheus"], PROM_SA)
    server.reviews.add_token(tokens["grafana"], "system:serviceaccount:monitoring:grafana")
    # What kube-prometheus' prometheus-k8s ClusterRole grants (plus deploy/rbac.yaml's sample).
    server.reviews.allow(PROM_SA, "get", "nodes", subresource="metrics")
    try:
        loop.run(server.start())
        st.kube_reviews = lambda user: server.reviews.reviewed[user]
        kubeconfig = server.write_kubeconfig(tmp / "kubeconfig")
        st.spawn("agent-tls", _agent_argv("--web.config.file", str(tls_file)))
        st.spawn("agent-basic", _agent_argv("--web.config.file", str(basic_file)))
        st.spawn("agent-kube", _agent_argv("--web.kubernetes-auth",
                                           "--kubeconfig", str(kubeconfig)))
        for name in ("agent-tls", "agent-basic", "agent-kube"):
            st.ports[name] = st.port_from_log(name)
        for name, web in (("node-exporter-tls", tls_file), ("node-exporter-basic", basic_file)):
            st.ports[name] = free_port()
            st.spawn(name, [str(NODE_EXPORTER), f"--web.config.file={web}",
                            f"--web.listen-address=127.0.0.1:{st.ports[name]}",
                            "--collector.disable-defaults", "--collector.loadavg"])
        for name in ("node-exporter-tls", "node-exporter-basic"):
            st.wait(f"{name} to listen", lambda n=name: "Listening on" in  # type: ignore[misc]
                    st.logs[n].read_text())

        def job(name: str, target: str, **extra: Any) -> dict[str, Any]:
            return {"job_name": name, "static_configs": [{"targets": [target]}], **extra}

        tls_ok = {"ca_file": str(pki.ca), "cert_file": str(pki.client.cert),
                  "key_file": str(pki.client.key)}
        a_tls = f"127.0.0.1:{st.ports['agent-tls']}"
        a_basic = f"127.0.0.1:{st.ports['agent-basic']}"
        ne_tls = f"127.0.0.1:{st.ports['node-exporter-tls']}"
        ne_basic = f"127.0.0.1:{st.ports['node-exporter-basic']}"
        a_kube = f"127.0.0.1:{st.ports['agent-kube']}"
        good = {"username": USER, "password": PASSWORD}

        def bearer(who: str) -> dict[str, Any]:
            return {"authorization": {"type": "Bearer",
                                      "credentials_file": str(tmp / f"{who}.token")}}

        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                job("tls-client-cert", a_tls, scheme="https", tls_config=tls_ok),
                job("tls-no-client-cert", a_tls, scheme="https",
                    tls_config={"ca_file": str(pki.ca)}),
                job("tls-foreign-client-cert", a_tls, scheme="https",
                    tls_config={"ca_file": str(pki.ca), "cert_file": str(pki.stranger.cert),
                                "key_file": str(pki.stranger.key)}),
                job("basic-auth", a_basic, basic_auth=good),
                job("basic-auth-wrong", a_basic,
                    basic_auth={"username": USER, "password": "wrong"}),
                job("basic-auth-none", a_basic),
                job("node-exporter-tls", ne_tls, scheme="https", tls_config=tls_ok),
                job("node-exporter-basic", ne_basic, basic_auth=good),
                job("kube-token", a_kube, **bearer("prometheus")),
                job("kube-token-not-allowed", a_kube, **bearer("grafana")),
                job("kube-token-none", a_kube),
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        for attempt in range(3):
            port = free_port()
            st.spawn("prometheus", [str(PROMETHEUS), f"--config.file={tmp / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={tmp / f'tsdb{attempt}'}",
                                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"])
            st.prom_url = f"http://127.0.0.1:{port}"
            time.sleep(1.0)
            if st.procs["prometheus"].poll() is None:
                break
        st.wait("every job scraped", lambda: len(st.up()) == len(config["scrape_configs"])
                and st.up()["tls-client-cert"] == 1 and st.up()["basic-auth"] == 1, 90)
        yield st
    finally:
        for proc in st.procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if server.running:
            loop.run(server.stop())
        loop.close()


def test_prometheus_scrapes_only_with_the_right_credentials(stack: Stack) -> None:
    """up is 1 with the client certificate or the password, 0 without or with wrong ones."""
    up = stack.up()
    assert up == {
        "tls-client-cert": 1, "tls-no-client-cert": 0, "tls-foreign-client-cert": 0,
        "basic-auth": 1, "basic-auth-wrong": 0, "basic-auth-none": 0,
        "node-exporter-tls": 1, "node-exporter-basic": 1,
        "kube-token": 1, "kube-token-not-allowed": 0, "kube-token-none": 0,
    }, stack.tails()


def test_token_scrapes_are_served_from_the_cache(stack: Stack) -> None:
    """15 scrapes (1 s apart) with the allowed token cost one TokenReview (one per cache TTL,
    not one per scrape); curl sees 200 with it, 403 with another SA's, 401 with none."""
    base = f"http://127.0.0.1:{stack.ports['agent-kube']}/metrics"
    token = (stack.tmp / "prometheus.token").read_text().strip()
    other = (stack.tmp / "grafana.token").read_text().strip()
    assert curl("-H", f"Authorization: Bearer {token}", base) == (0, "200")
    assert curl("-H", f"Authorization: Bearer {other}", base) == (0, "403")
    assert curl(base) == (0, "401")
    def scrapes() -> float:
        q = urllib.parse.urlencode({"query": 'sum(count_over_time(up{job="kube-token"}[1m]))'})
        with urllib.request.urlopen(f"{stack.prom_url}/api/v1/query?{q}", timeout=5) as r:
            result = json.load(r)["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    stack.wait("15 token scrapes", lambda: scrapes() >= 15, 40)
    # Less than the 60 s positive TTL since the first scrape: one review in all.
    assert stack.kube_reviews(PROM_SA) == 1


def test_node_exporter_and_nodemedic_answer_the_same_file_alike(stack: Stack) -> None:
    """curl gets the same answers from node_exporter and nodemedic under the same web config:
    right password 200, wrong 401; right client certificate 200, foreign one no handshake."""
    cert = ["--cacert", str(stack.pki.ca)]
    ok = [*cert, "--cert", str(stack.pki.client.cert), "--key", str(stack.pki.client.key)]
    foreign = [*cert, "--cert", str(stack.pki.stranger.cert), "--key",
               str(stack.pki.stranger.key)]
    for agent, exporter in (("agent-basic", "node-exporter-basic"),
                            ("agent-tls", "node-exporter-tls")):
        for name in (agent, exporter):
            base = ("https" if "tls" in name else "http") + f"://127.0.0.1:{stack.ports[name]}"
            if "basic" in name:
                assert curl("-u", f"{USER}:{PASSWORD}", f"{base}/metrics") == (0, "200"), name
                assert curl("-u", f"{USER}:wrong", f"{base}/metrics") == (0, "401"), name
                assert curl("-u", f"eve:{PASSWORD}", f"{base}/metrics") == (0, "401"), name
                assert curl(f"{base}/metrics") == (0, "401"), name
            else:
                assert curl(*ok, f"{base}/metrics") == (0, "200"), name
                code, status = curl(*foreign, f"{base}/metrics")
                assert code != 0 and status == "000", (name, code, status)
                code, status = curl(*cert, f"{base}/metrics")
                assert code != 0 and status == "000", (name, code, status)


def test_security_headers_are_sent(stack: Stack) -> None:
    """http_server_config.headers reach the client, as node_exporter sends them."""
    res = subprocess.run(
        [str(CURL), "-s", "-D", "-", "-o", "/dev/null", "--cacert", str(stack.pki.ca),
         "--cert", str(stack.pki.client.cert), "--key", str(stack.pki.client.key),
         f"https://127.0.0.1:{stack.ports['agent-tls']}/metrics"],
        capture_output=True, text=True, timeout=30)
    headers = res.stdout.lower()
    assert "x-content-type-options: nosniff" in headers
    assert "strict-transport-security: max-age=31536000" in headers


def test_local_probes_need_no_password(stack: Stack) -> None:
    """/healthz from loopback answers without credentials; /status does not."""
    base = f"http://127.0.0.1:{stack.ports['agent-basic']}"
    assert curl(f"{base}/healthz") == (0, "200")
    assert curl(f"{base}/status") == (0, "401")


def _metric(stack: Stack, name: str) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports['agent-basic']}/metrics",
        headers={"Authorization": "Basic " + base64.b64encode(
            f"{USER}:{PASSWORD}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_invalid_file_on_sighup_keeps_the_last_good_one(stack: Stack) -> None:
    """A plain-text password written into the file is refused on reload (counted, logged in
    one line) and the bcrypt user keeps working."""
    good = stack.basic_file.read_text()
    try:
        stack.basic_file.write_text(f"basic_auth_users:\n  {USER}: {PASSWORD}\n")
        stack.procs["agent-basic"].send_signal(signal.SIGHUP)
        stack.wait("the reload to fail", lambda: 'result="failure"} 1.0' in _metric(
            stack, "nodemedic_config_reloads_total"), 20)
        assert "basic_auth_users.prometheus: not a bcrypt hash" in \
            stack.logs["agent-basic"].read_text()
        assert curl("-u", f"{USER}:{PASSWORD}",
                    f"http://127.0.0.1:{stack.ports['agent-basic']}/metrics") == (0, "200")
    finally:
        stack.basic_file.write_text(good)


def test_invalid_file_at_start_exits_2_with_one_line(tmp_path: Path) -> None:
    """An unknown key (strict, as the toolkit) stops the start with exit 2, naming file:line."""
    bad = tmp_path / "web.yml"
    bad.write_text("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n"
                   "  client_auth: RequireAndVerifyClientCert\n")
    res = subprocess.run([sys.executable, "-m", "agent", "run", "--web.config.file", str(bad),
                          "--rules.dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:4: tls_server_config.client_auth: unknown key" in lines[0]
