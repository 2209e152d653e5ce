"""Every setting, changed by a reload, reaches what reads it or is reported as needing a restart.

Issue 16's live bug: a SIGHUP changing ``cgroup.psi``, ``cgroup.min-interval`` or the lbskew
options logged "reloaded" while the collectors kept the old values. Each Settings field declares
how a reload applies it (agent.settings.OnReload); this test changes every field, one at a time,
reloads and checks the new value where the running agent reads it (the daemon, the remediation
stage, its gate, the failover stage and its remedy, every collector) or, for restart-only
settings, that the running value is kept and the restart is reported in /status and in
``nodemedic_config_restart_required``. ``CASES`` must name every field: an option added without
a case fails here until it is covered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp import BasicAuth, ClientSession
from structlog.testing import capture_logs

from agent.peers.stage import FailoverStage
from agent.runtime.daemon import Agent
from agent.runtime.logging import configure_logging
from agent.runtime.reloadplan import plan_reload
from agent.runtime.remediation import RemediationStage
from agent.settings import Settings, flag_name, reload_mode

REPO = Path(__file__).resolve().parents[3]
CGROUP = REPO / "tests" / "fixtures" / "cgroup" / "v2-systemd"
COLLECTORS = {"cgroup": True, "kubelet": True, "host": True, "lbskew": True, "node": False,
              "problems": False, "peerclock": False}


def cases(tmp: Path) -> dict[str, Any]:
    """field -> a valid value different from the base settings'."""
    rules2 = tmp / "rules2"
    rules2.mkdir()
    (rules2 / "r.yaml").write_text(
        "rules:\n  - name: r\n    when: {metric: nodemedic_kubelet_up, op: '==', value: 0}\n"
        "    actions: [{type: event, reason: R, message: m}]\n"
    )
    token = tmp / "token"
    token.write_text("t0ken\n")
    web = tmp / "web.yml"  # basic auth only: a plain listener stays plain (TLS on/off restarts)
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    return {
        "config": tmp / "other.yaml",
        "web_listen_address": "127.0.0.1:1",
        "web_max_connections": 7,
        "web_config_file": web,
        "web_kubernetes_auth": True,
        "web_probe_address": "127.0.0.1:0",
        "path_cgroupfs": REPO / "tests" / "fixtures" / "cgroup",
        "path_procfs": Path("/proc/self/.."),  # the same /proc, another value
        "kubelet_url": "http://127.0.0.1:2",
        "kubelet_token_file": token,
        "kubelet_ca_file": token,
        "kubelet_insecure_skip_verify": True,
        "kubelet_summary_min_interval": 0.0,
        "kubeconfig": tmp / "kubeconfig",
        "node_name": "n2",
        "rules_dir": rules2,
        "state_dir": tmp / "state2",
        "collect_interval": 1800.0,
        "collector_timeout": 3.0,
        "cgroup_min_interval": 60.0,
        "cgroup_psi": "container",
        "dry_run": True,
        "actions_restart_allowlist": ("x.service",),
        "actions_webhook_allowlist": ("http://hook.example/",),
        "safety_max_cordoned": "5",
        "safety_max_actions_per_hour": 3,
        "safety_drain_grace_cap": 60.0,
        "safety_pause_configmap": "kube-system/other",
        "safety_cordon_lock": "kube-system/other-lock",
        "safety_gated_actions": ("drain",),
        "safety_alert_gate_prometheus_url": "http://127.0.0.1:4",
        "safety_alert_gate_alertmanager_url": "http://127.0.0.1:5",
        "safety_alert_gate_alerts": ('{alertname="NodeDown", severity=~"critical|page"}',),
        "safety_alert_gate_interval": 30.0,
        "safety_alert_gate_timeout": 2.0,
        "safety_alert_gate_stale_intervals": 5,
        "safety_allow_windows": ("Mon-Fri 09:00-17:00 Europe/Berlin",),
        "safety_deny_windows": ("Sat,Sun 00:00-24:00 UTC",),
        "host_disk_paths": ("/",),
        "log_level": "debug",
        "log_format": "json",
        "lbskew_iptables_save_command": "/nonexistent/iptables-save",
        "lbskew_iptables_save_file": token,
        "lbskew_rules_min_interval": 5.0,
        "lbskew_conntrack_command": "/nonexistent/conntrack",
        "lbskew_conntrack_cpu": "2%",
        "lbskew_min_samples": 7,
        "safety_workload_other_nodes": 2,
        "safety_workload_window": 600.0,
        "peerclock_peers": 3,
        "peerclock_interval": 10.0,
        "peerclock_window": 4,
        "peerclock_max_offset": 0.25,
        "failover_enabled": False,
        "failover_lease_namespace": "other",
        "failover_node_grace": 60.0,
        "failover_probers": 1,
        "failover_probe_timeout": 0.5,
        "failover_max_unhealthy": "30%",
        "failover_max_unhealthy_zone": "40%",
        "failover_fencing_time": 100.0,
        "failover_fence_command": ("/bin/true",),
        "failover_healthy_delay": 60.0,
        "failover_max_concurrent": 2,
        "failover_lease_duration": 30.0,
        "failover_retry_period": 1.0,
        "problems_dir": tmp / "problems2",
        "problems_plugin_dir": tmp,
        "problems_max_lines_per_second": 5000,
        "problems_heartbeat_interval": 30.0,
        "collectors": {**COLLECTORS, "host": False},
    }


def base(tmp: Path) -> dict[str, Any]:
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    return dict(web_listen_address="127.0.0.1:0", rules_dir=rules, collectors=COLLECTORS,
                collect_interval=3600, node_name="n1", path_cgroupfs=CGROUP,
                kubelet_url="http://127.0.0.1:1", failover_enabled=True,
                # a source, so that naming alerts alone is a valid change
                safety_alert_gate_prometheus_url="http://127.0.0.1:3")


def test_every_settings_field_has_a_case(tmp_path: Path) -> None:
    """A new option fails here until the reload test covers it."""
    assert set(cases(tmp_path)) == set(Settings.model_fields)


def test_an_undeclared_option_is_reported_as_needing_a_restart(tmp_path: Path) -> None:
    """The safe default: an option added without an OnReload declaration is never silently
    'reloaded' on its old value."""

    class WithNewOption(Settings):
        brand_new_option: int = 0

    assert reload_mode("brand_new_option", WithNewOption) == "restart"
    old = WithNewOption(**base(tmp_path))
    plan = plan_reload(old, WithNewOption(**base(tmp_path), brand_new_option=5))
    assert plan.restart_required == {"brand_new_option": (0, 5)}
    assert plan.effective.brand_new_option == 0  # type: ignore[attr-defined]


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[tuple[Agent, Callable[[Settings], None]]]:
    holder: dict[str, Settings] = {"s": Settings(**base(tmp_path))}
    a = Agent(holder["s"], reload_settings=lambda: holder["s"])
    await a.start()

    def set_next(s: Settings) -> None:
        holder["s"] = s

    try:
        yield a, set_next
    finally:
        await a.stop()
        configure_logging("info", "auto")


def holders(a: Agent) -> dict[str, Any]:
    """Everything that keeps its own reference to the settings, by what it is."""
    stage = next(c for c in a._components if isinstance(c, RemediationStage))
    failover = next(c for c in a._components if isinstance(c, FailoverStage))
    return {"agent": a, "stage": stage, "gate": stage.gate, "failover": failover,
            "remedy": failover.remedy}


async def get_status(a: Agent) -> dict[str, Any]:
    # The web_config_file case turns basic auth on; credentials are ignored where none is set.
    auth = {"Authorization": BasicAuth("prom", "pw").encode()}
    async with ClientSession() as s, s.get(f"http://127.0.0.1:{a.port}/status",
                                           headers=auth) as r:
        body: dict[str, Any] = await r.json()
        return body


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
async def test_reload_applies_or_reports_every_option(
    field: str, tmp_path: Path, agent: tuple[Agent, Callable[[Settings], None]]
) -> None:
    a, set_next = agent
    value = cases(tmp_path)[field]
    old_value = getattr(a.settings, field)
    assert value != old_value
    old_collection = a._collection
    assert old_collection is not None
    set_next(Settings(**{**base(tmp_path), field: value}))
    with capture_logs() as logs:
        await a.reload()
    events = {e["event"]: e for e in logs}
    status = await get_status(a)
    assert status["last_reload_error"] is None
    pending = {r["setting"] for r in status["config"]["restart_required"]}
    sample = a.registry.get_sample_value("nodemedic_config_restart_required",
                                         {"setting": flag_name(field)})
    mode = reload_mode(field)
    if mode == "restart":
        assert pending == {flag_name(field)}
        assert sample == 1.0
        assert "reloaded" not in events, "said 'reloaded' while running on the old value"
        assert events["reloaded_restart_required"]["restart_required"] == [flag_name(field)]
        assert events["setting_change_needs_restart"]["setting"] == flag_name(field)
        for name, h in holders(a).items():
            assert getattr(h.settings, field) == old_value, f"{name} took a restart-only change"
        return
    assert pending == set() and sample is None
    if field not in ("log_level", "log_format"):  # those reconfigure logging, capture included
        assert events["reloaded"]["applied"] == [flag_name(field)]
    for name, h in holders(a).items():
        assert getattr(h.settings, field) == value, f"{name} still has the old {field}"
    assert a._collection is not None
    if mode == "collectors":
        assert a._collection is not old_collection, "collectors were not rebuilt"
        for c in a._collection.collectors:
            assert getattr(c.ctx.settings, field) == value, f"collector {c.name}: old {field}"
    else:
        assert a._collection is old_collection, "a live option rebuilt the collectors"
    # Behaviour visible to a user, for the options /status shows.
    shown = {
        "dry_run": lambda: status["remediation"]["dry_run"],
        "rules_dir": lambda: status["remediation"]["rules_dir"],
        "collect_interval": lambda: status["interval_seconds"],
        "safety_max_actions_per_hour": lambda: status["remediation"]["gate"][
            "max_actions_per_hour"],
        "collectors": lambda: sorted(n for n, on in value.items() if on),
        "safety_gated_actions": lambda: tuple(status["remediation"]["gate"]["gated_actions"]),
        "safety_alert_gate_alerts": lambda: tuple(
            status["remediation"]["gate"]["alert_gate"]["alerts"]),
        "safety_alert_gate_alertmanager_url": lambda: status["remediation"]["gate"][
            "alert_gate"]["sources"]["alertmanager"],
        "safety_allow_windows": lambda: tuple(
            status["remediation"]["gate"]["windows"]["allow"]),
        "safety_deny_windows": lambda: tuple(status["remediation"]["gate"]["windows"]["deny"]),
    }
    expected = {"rules_dir": str(value),
                "collectors": sorted(c.name for c in a._collection.collectors)}
    if field in shown:
        assert shown[field]() == expected.get(field, value)
    if field == "rules_dir":
        assert status["remediation"]["rules_loaded"] == 1
    if field == "web_config_file":  # the new file's basic auth now guards /status
        async with ClientSession() as s, s.get(f"http://127.0.0.1:{a.port}/status") as r:
            assert r.status == 401
    if field == "failover_max_concurrent":
        assert holders(a)["failover"].slots.max_concurrent == value


async def test_psi_off_reload_removes_the_psi_series(
    tmp_path: Path, agent: tuple[Agent, Callable[[Settings], None]]
) -> None:
    """The reproduction of issue 16: cgroup.psi pod (default) -> off by SIGHUP drops the PSI series
    from /metrics (before the fix the collectors kept reading PSI)."""
    a, set_next = agent

    async def psi_series() -> int:
        await a.tick_once()
        async with ClientSession() as s, s.get(f"http://127.0.0.1:{a.port}/metrics") as r:
            text = await r.text()
        return sum(1 for line in text.splitlines()
                   if line.startswith("nodemedic_container_pressure_"))

    assert await psi_series() > 0
    set_next(Settings(**{**base(tmp_path), "cgroup_psi": "off"}))
    await a.reload()
    assert await psi_series() == 0
