"""Impossible or contradictory settings are refused at start and at reload (issue 12 item 6).

Before the fix ``--safety.max-cordoned 150%`` was accepted (and cordoned the 10th of 10 nodes),
``--failover.max-unhealthy 200%`` turned mass-failure protection off, a collector timeout longer
than the interval, a retry period longer than the lease, a node name Kubernetes cannot have and a
missing rules directory all started an agent that looked healthy.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from agent import cli
from agent.runtime.daemon import Agent
from agent.settings import (
    LEASE_RENEW_CONTEXT,
    Settings,
    SettingsError,
    build_parser,
    load_settings,
)

OFF = {"cgroup": False, "kubelet": False, "host": False, "lbskew": False, "node": False}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    build_parser(p, ())
    return p.parse_args(argv)


REFUSED = [
    (["--safety.max-cordoned", "150%"], "--safety.max-cordoned='150%': must be a node count N or "
     "a share from 0% to 100%"),
    (["--failover.max-unhealthy", "200%"], "--failover.max-unhealthy='200%': must be"),
    (["--failover.max-unhealthy-zone", "101%"], "--failover.max-unhealthy-zone='101%'"),
    (["--collector.timeout", "20s"], "--collector.timeout='20s': must be shorter than "
     "--collect.interval (10s)"),
    (["--collect.interval", "5s", "--collector.timeout", "5s"], "--collector.timeout='5s'"),
    (["--failover.lease-duration", "1s", "--failover.retry-period", "20s"],
     "--failover.retry-period='20s': must be at most a third of --failover.lease-duration (1s"),
    (["--node-name", "Bad_Name!"], "--node-name='Bad_Name!': must be a Kubernetes node name: "
     "an RFC 1123 DNS subdomain"),
    (["--node-name", "a" * 254], "--node-name="),
    (["--kubelet.insecure-skip-verify", "--kubelet.ca-file", "/etc/ca.pem"],
     "--kubelet.insecure-skip-verify='true': contradicts --kubelet.ca-file"),
]


@pytest.mark.parametrize(("argv", "needle"), REFUSED)
def test_impossible_settings_are_refused_with_range_and_reason(argv: list[str],
                                                               needle: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(parse(argv), environ={})
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv",
    [["--safety.max-cordoned", "100%"], ["--safety.max-cordoned", "150"],
     ["--failover.max-unhealthy", "0%"], ["--collect.interval", "2s"],
     ["--collect.interval", "1s"], ["--node-name", "ip-10-0-0-1.eu-west-1.compute.internal"],
     ["--failover.lease-duration", "1.5s", "--failover.retry-period", "0.25s"]],
)
def test_possible_edge_values_are_accepted(argv: list[str]) -> None:
    """100%, absolute counts, a short interval (the timeout default follows it), DNS names."""
    s = load_settings(parse(argv), environ={})
    assert s.collector_timeout < s.collect_interval


def test_refused_at_start_with_exit_2_and_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", "--rules.dir", str(tmp_path), "--safety.max-cordoned", "150%"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--safety.max-cordoned='150%'" in err


def test_missing_rules_dir_is_refused_at_start(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Not a warning any more: an agent with no rules directory protects nothing."""
    code = cli.main(["run", "--rules.dir", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--rules.dir=" in err and "does not exist" in err


def settings(rules: Path, **kw: Any) -> Settings:
    return Settings(web_listen_address="127.0.0.1:0", rules_dir=rules, collectors=OFF,
                    collect_interval=3600, node_name="n1", **kw)


async def get_status(agent: Agent) -> dict[str, Any]:
    async with ClientSession() as s, s.get(f"http://127.0.0.1:{agent.port}/status") as r:
        body: dict[str, Any] = await r.json()
        return body


async def test_refused_at_reload_keeps_the_last_good(tmp_path: Path) -> None:
    """A config file with 150% or a vanished rules directory: the reload fails with the same
    one-line error and the agent keeps running on its last good settings and rules."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text(
        "rules:\n  - name: r\n    when: {metric: nodemedic_kubelet_up, op: '==', value: 0}\n"
        "    actions: [{type: event, reason: R, message: m}]\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(f"rules.dir: {rules}\nnode-name: n1\n")

    def reread() -> Settings:
        return load_settings(None, environ={"NODEMEDIC_CONFIG": str(config),
                                            "NODEMEDIC_WEB_LISTEN_ADDRESS": "127.0.0.1:0"})

    agent = Agent(settings(rules), reload_settings=reread)
    await agent.start()
    try:
        config.write_text(f"rules.dir: {rules}\nnode-name: n1\nsafety.max-cordoned: 150%\n")
        await agent.reload()
        body = await get_status(agent)
        assert "safety.max-cordoned='150%'" in body["last_reload_error"]
        assert "0% to 100%" in body["last_reload_error"]
        assert agent.settings.safety_max_cordoned == "10%"
        assert agent._components[0].gate.settings.safety_max_cordoned == "10%"  # type: ignore[attr-defined]

        config.write_text(f"rules.dir: {tmp_path / 'gone'}\nnode-name: n1\n")
        await agent.reload()
        body = await get_status(agent)
        assert "--rules.dir=" in body["last_reload_error"]
        assert "does not exist" in body["last_reload_error"]
        assert body["remediation"]["rules_dir"] == str(rules)
        assert body["remediation"]["rules_loaded"] == 1
    finally:
        await agent.stop()


async def test_zero_rules_loaded_is_visible(tmp_path: Path) -> None:
    """An empty rules directory is allowed but shows: /status and nodemedic_rules_loaded 0 (the
    metric NodemedicNoRulesLoaded alerts on)."""
    agent = Agent(settings(tmp_path))
    await agent.start()
    try:
        await agent.tick_once()
        assert (await get_status(agent))["remediation"]["rules_loaded"] == 0
        exp = await agent.exposition()
        assert exp is not None and b"\nnodemedic_rules_loaded 0.0\n" in exp.text
    finally:
        await agent.stop()


# A real kubelet renews its node Lease every 10 s; a peer probes only while its lease is younger
# than half the node grace, so a grace under 20 s changes the probers at every renewal (seen: a
# 4 s grace tripped mass-failure protection on a healthy cluster).
def test_failover_grace_under_two_lease_renewals_is_refused() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(parse(["--failover.enabled", "--failover.node-grace", "4s"]), environ={})
    msg = str(err.value)
    assert msg.startswith("--failover.node-grace='4s': must be at least 20s with "
                          "--failover.enabled"), msg
    assert "renewal interval (10s)" in msg and "\n" not in msg


def test_failover_grace_in_config_file_is_refused_with_its_location(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("failover.enabled: true\nfailover.node-grace: 19s\n")
    with pytest.raises(SettingsError) as err:
        load_settings(None, environ={"NODEMEDIC_CONFIG": str(config)})
    assert str(err.value).startswith(f"{config}: failover.node-grace='19s': must be at least 20s")


@pytest.mark.parametrize("argv", [
    ["--failover.enabled", "--failover.node-grace", "20s"],
    ["--failover.node-grace", "4s"],  # failover off: the grace is not used
])
def test_failover_grace_of_two_renewals_or_failover_off_is_accepted(argv: list[str]) -> None:
    load_settings(parse(argv), environ={})


async def test_failover_grace_refused_at_reload_keeps_the_last_good(tmp_path: Path) -> None:
    """failover.node-grace is applied live: a reload to 4s is refused, 40s stays in force."""
    rules = tmp_path / "rules"
    rules.mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(f"rules.dir: {rules}\nnode-name: n1\nfailover.enabled: true\n")

    def reread() -> Settings:
        return load_settings(None, environ={"NODEMEDIC_CONFIG": str(config),
                                            "NODEMEDIC_WEB_LISTEN_ADDRESS": "127.0.0.1:0"})

    agent = Agent(settings(rules, failover_enabled=True), reload_settings=reread)
    await agent.start()
    try:
        config.write_text(f"rules.dir: {rules}\nnode-name: n1\nfailover.enabled: true\n"
                          "failover.node-grace: 4s\n")
        await agent.reload()
        body = await get_status(agent)
        assert "failover.node-grace='4s': must be at least 20s" in body["last_reload_error"]
        assert agent.settings.failover_node_grace == 40.0
    finally:
        await agent.stop()


def test_a_harness_with_faster_fake_kubelets_says_so_explicitly() -> None:
    """nodemedic_sim's Fleet states its fake kubelets' renewal interval; the rule is the same."""
    base = {"failover_enabled": True, "node_name": "n1"}
    fast = {LEASE_RENEW_CONTEXT: 1.0}
    assert Settings.model_validate({**base, "failover_node_grace": 2.0},
                                   context=fast).failover_node_grace == 2.0
    with pytest.raises(ValueError, match="at least 2s"):
        Settings.model_validate({**base, "failover_node_grace": 1.5}, context=fast)
    with pytest.raises(ValueError, match="at least 20s"):
        Settings(**base, failover_node_grace=2.0)  # no context: a real kubelet's 10 s
