"""A rule's ``gates:`` (alert selectors, windows, gated actions): check-rules reports each bad
entry at its own file:line:column and loads good ones as written (issue 19 items 2, 3)."""

from __future__ import annotations

from rules_testkit import CATALOGUE

from agent.rules.loader import parse_rules_text

OK_RULE = """rules:
  - name: r
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    actions: [{type: cordon}]
"""


def problems(text: str) -> list[str]:
    _, found = parse_rules_text(text, "f.yaml", CATALOGUE)
    return [str(p) for p in found]


def test_good_gates_load_as_written() -> None:
    text = OK_RULE + """\
    gates:
      actions: [cordon, drain]
      alerts: [KubeAPIDown, '{alertname="NodeDown", severity=~"critical|page"}']
      allow_windows: ["Mon-Fri 09:00-17:00 Europe/Berlin"]
      deny_windows: ["Fri 22:00-06:00 UTC"]
"""
    (loaded,), found = parse_rules_text(text, "f.yaml", CATALOGUE)
    assert found == []
    gates = loaded.rule.gates
    assert gates is not None
    assert gates.actions == ["cordon", "drain"]
    assert gates.alerts[1] == '{alertname="NodeDown", severity=~"critical|page"}'
    assert gates.deny_windows == ["Fri 22:00-06:00 UTC"]


def test_each_bad_entry_is_reported_at_its_line() -> None:
    text = OK_RULE + """\
    gates:
      alerts:
        - KubeAPIDown
        - "severity critical"
      allow_windows: ["Mon 09:00-17:00 Nowhere/City"]
      deny_windows:
        - Sat,Sun 00:00-24:00 UTC
        - Mon 9-17 UTC
      actions: [reboot]
      deny: []
"""
    assert problems(text) == [
        "f.yaml:8:11: rules[0].gates.alerts[1]: alert selector 'severity critical': expected an "
        'alert name or matchers like alertname="X", severity=~"critical|page" '
        "(at 'severity critical')",
        "f.yaml:9:23: rules[0].gates.allow_windows[0]: window 'Mon 09:00-17:00 Nowhere/City': "
        "unknown time zone 'Nowhere/City'",
        "f.yaml:12:11: rules[0].gates.deny_windows[1]: window 'Mon 9-17 UTC': expected [DAYS] "
        "HH:MM-HH:MM ZONE, e.g. 'Mon-Fri 09:00-17:00 Europe/Berlin'",
        "f.yaml:13:17: rules[0].gates.actions[0]: must be 'cordon', 'uncordon', 'taint', "
        "'untaint', 'drain', 'evict-pod', 'restart-service', 'annotate', 'event' or 'webhook', "
        "got 'reboot'",
        "f.yaml:14:7: rules[0].gates.deny: unknown key 'deny'",
    ]
