"""The gate's decisions that need no API: dry-run, bad params, budgets, cooldowns, undo."""

from __future__ import annotations

import pytest
from helpers_safety import request, settings

from agent.actions import registry
from agent.safety.gate import SafetyGate
from agent.structs.remediation import Outcome


class Clock:
    def __init__(self, t: float = 10_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def gate(clock: Clock | None = None, **overrides: object) -> SafetyGate:
    c = clock or Clock()
    return SafetyGate(settings(**overrides), None, clock=c, monotonic=c)


def executed(g: SafetyGate, decision) -> None:  # type: ignore[no-untyped-def]
    g.record_execution(decision, Outcome(decision, "success"))
    g.count(decision, Outcome(decision, "success"))


RESTART = {"unit": "kubelet.service"}


async def test_api_actions_without_an_api_are_missing_data() -> None:
    """Without a configured API, cordon is denied as missing_data, never attempted."""
    d = await gate().decide(request("cordon"))
    assert (d.kind, d.reason) == ("denied", "missing_data")


async def test_local_actions_run_without_an_api() -> None:
    """restart-service needs no API and is allowed in standalone mode."""
    d = await gate().decide(request("restart-service", RESTART))
    assert (d.kind, d.reason) == ("allowed", "ok")
    assert d.detail == "systemctl restart kubelet.service"


async def test_global_dry_run_decides_but_never_allows() -> None:
    """--dry-run turns an allowed request into dry_run and says what would happen."""
    d = await gate(dry_run=True).decide(request("restart-service", RESTART))
    assert (d.kind, d.reason) == ("dry_run", "dry_run")
    assert d.detail == "--dry-run: would systemctl restart kubelet.service"


async def test_per_rule_dry_run() -> None:
    """A rule's own dry_run previews only that rule."""
    d = await gate().decide(request("restart-service", RESTART, dry_run=True))
    assert d.kind == "dry_run"
    assert "rule kubelet-down dry_run" in d.detail


async def test_invalid_params_and_unknown_actions_are_denied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-allow-listed unit and an unknown action never reach execution; an action no rule
    can name cannot even be asked for."""
    g = gate()
    d = await g.decide(request("restart-service", {"unit": "sshd.service"}))
    assert (d.kind, d.reason) == ("denied", "invalid_params")
    with pytest.raises(ValueError, match="no action named 'reboot'"):
        request("reboot")
    monkeypatch.setattr(registry, "get", lambda name: None)  # declared, not implemented
    d = await g.decide(request("cordon"))
    assert (d.kind, d.reason) == ("denied", "unknown_action")
    monkeypatch.undo()
    fam = {f.name: f for f in g.families()}["nodemedic_actions_denied_total"]
    assert fam.get(action="restart-service", reason="invalid_params") == 1


async def test_cooldown_blocks_a_repeat_until_it_expires() -> None:
    """The same request within its cooldown is denied; after it, allowed again."""
    clock = Clock()
    g = gate(clock)
    req = request("restart-service", RESTART, cooldown_seconds=600)
    first = await g.decide(req)
    executed(g, first)
    clock.t += 300
    d = await g.decide(req)
    assert (d.kind, d.reason) == ("denied", "cooldown")
    assert "5m left" in d.detail
    clock.t += 301
    assert (await g.decide(req)).kind == "allowed"


async def test_rule_hourly_cap() -> None:
    """A rule with max_per_hour 2 gets its third action of the hour denied."""
    clock = Clock()
    g = gate(clock)
    for i in range(2):
        executed(g, await g.decide(request("restart-service", RESTART, step=i, max_per_hour=2)))
        clock.t += 60
    d = await g.decide(request("restart-service", RESTART, step=3, max_per_hour=2))
    assert (d.kind, d.reason) == ("denied", "rule_hourly_cap")
    clock.t += 3600
    assert (await g.decide(request("restart-service", RESTART, step=3, max_per_hour=2))).kind == (
        "allowed"
    )


async def test_global_hourly_cap_counts_disruptive_actions_only() -> None:
    """With a global cap of 1, a second restart is denied but webhooks still go out."""
    g = gate(safety_max_actions_per_hour=1, actions_webhook_allowlist=("http://h/",))
    executed(g, await g.decide(request("restart-service", RESTART, rule="a")))
    d = await g.decide(request("restart-service", RESTART, rule="b"))
    assert (d.kind, d.reason) == ("denied", "global_hourly_cap")
    assert (await g.decide(request("webhook", {"url": "http://h/x"}, rule="b"))).kind == "allowed"


async def test_undo_and_continuing_requests_skip_budgets() -> None:
    """Reversing or finishing an action is never blocked by a cooldown or cap."""
    g = gate(safety_max_actions_per_hour=0)
    d = await g.decide(request("restart-service", RESTART))
    assert d.reason == "global_hourly_cap"
    d = await g.decide(request("restart-service", RESTART), continuing=True)
    assert d.kind == "allowed"


async def test_actions_total_counts_decisions_and_outcomes() -> None:
    """nodemedic_actions_total is labelled by action, rule, decision and outcome."""
    g = gate(dry_run=True)
    d = await g.decide(request("restart-service", RESTART))
    g.count(d, None)
    fam = {f.name: f for f in g.families()}["nodemedic_actions_total"]
    assert fam.get(action="restart-service", rule="kubelet-down", decision="dry_run",
                   outcome="none") == 1


async def test_capped_requests_are_denied_while_the_hour_is_incomplete() -> None:
    """After executions of the last hour were dropped from the ledger, a request with an hourly
    cap (or a disruptive one) is denied as ledger_full and counted in the dropped metric; an
    uncapped webhook still goes out."""
    clock = Clock()
    g = gate(clock, actions_webhook_allowlist=("http://h/",))
    g.ledger.history_cut_at = clock.t - 60
    g.ledger.history_dropped = 1
    hook = {"url": "http://h/x"}
    capped = await g.decide(request("webhook", hook, max_per_hour=5))
    assert (capped.kind, capped.reason) == ("denied", "ledger_full")
    restart = request("restart-service", RESTART)
    assert (await g.decide(restart)).reason == "ledger_full"
    assert (await g.decide(request("webhook", hook))).kind == "allowed"
    dropped = next(f for f in g.families() if f.name == "nodemedic_safety_ledger_dropped_total")
    assert dict(dropped.samples)[("history",)] == 1
    clock.t += 3600
    assert (await g.decide(restart)).kind == "allowed"
