"""Rule parsing: valid files load; every kind of mistake is reported at its file:line:column."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from rules_testkit import CATALOGUE

from agent.rules.loader import (
    AGREED_METRICS,
    RulesError,
    RulesReloader,
    check_files,
    load_rules_dir,
    parse_rules_text,
)
from agent.rules.schema import ACTION_MODELS, json_schema, render_json_schema
from agent.structs.remediation import ACTION_TYPES

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "rules"

OK_RULE = """rules:
  - name: r
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    actions: [{type: cordon}]
"""


def problems(text: str) -> list[str]:
    _, found = parse_rules_text(text, "f.yaml", CATALOGUE)
    return [str(p) for p in found]


def test_valid_fixture_loads_every_feature() -> None:
    """The everything fixture loads, with runbooks resolved against the file's base URL."""
    ruleset, found = check_files([FIXTURES / "valid"], CATALOGUE)
    assert found == []
    assert ruleset.names() == ["kubelet-unhealthy", "oom-storm"]
    kubelet = ruleset.rules[0]
    assert kubelet.runbook_url == "https://runbooks.example.com/nodemedic/KubeletUnhealthy.md"
    assert kubelet.rule.for_ == 120 and kubelet.rule.escalate[1].after == 600
    assert ruleset.rules[1].rule.dry_run


def test_default_rule_set_is_valid_against_agreed_and_registered_metrics() -> None:
    """rules/ (what we ship) passes check-rules with the real catalogue."""
    ruleset = load_rules_dir(ROOT / "rules")
    assert len(ruleset) >= 8
    # The rules engine's own files also pass against the agreed names alone.
    own = [ROOT / "rules" / f for f in ("kubelet.yaml", "node-pressure.yaml", "containers.yaml",
                                        "clock.yaml")]
    ruleset, found = check_files(own, AGREED_METRICS)
    assert found == [] and len(ruleset) == 8


def test_default_rules_restart_kubelet_then_cordon_and_never_drain() -> None:
    """The shipped ladder is restart kubelet.service, then cordon; no default rule drains."""
    ruleset = load_rules_dir(ROOT / "rules")
    kubelet = next(r.rule for r in ruleset.rules if r.rule.name == "kubelet-unhealthy")
    assert [a.type for a in kubelet.actions] == ["event", "restart-service"]
    assert kubelet.actions[1].model_dump()["unit"] == "kubelet.service"
    assert kubelet.for_ == 120 and kubelet.escalate[0].after == 180
    assert "cordon" in [a.type for a in kubelet.escalate[0].actions]
    every = [a.type for lr in ruleset.rules for a in lr.rule.actions]
    every += [a.type for lr in ruleset.rules for step in lr.rule.escalate for a in step.actions]
    assert "drain" not in every and "evict-pod" not in every
    assert all(lr.runbook_url.startswith("https://") for lr in ruleset.rules)


def test_schema_json_is_current_and_validates_shipped_rules() -> None:
    """rules/schema.json equals what the models generate and accepts the shipped rules."""
    path = ROOT / "rules" / "schema.json"
    assert path.read_text() == render_json_schema(), "run: python -m agent.rules.schema"
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for f in [*sorted((ROOT / "rules").glob("*.yaml")), FIXTURES / "valid" / "everything.yaml"]:
        jsonschema.validate(yaml.safe_load(f.read_text()), schema)


def test_schema_action_types_match_the_contract() -> None:
    """The schema knows exactly the action types of agent.structs.remediation."""
    assert tuple(ACTION_MODELS) == ACTION_TYPES
    assert "oneOf" in json.dumps(json_schema()["$defs"]["Rule"]["properties"]["actions"])


INVALID = [
    # unknown key, with its position (the key)
    (OK_RULE + "    fro: 2m\n", ["f.yaml:5:5: rules[0].fro: unknown key 'fro'"]),
    # a shell command is refused with an explanation
    (OK_RULE + "    command: reboot\n",
     ["f.yaml:5:5: rules[0].command: unknown key 'command': rules never run commands; use "
      "restart-service with a unit from the agent's allow-list"]),
    # wrong type
    (OK_RULE.replace('value: 0}', 'value: "zero"}'),
     ["f.yaml:3:59: rules[0].when.value: must be a valid number, got 'zero'"]),
    # unknown metric, with a suggestion
    (OK_RULE.replace("nodemedic_kubelet_up", "nodemedic_kubelet_upp"),
     ["f.yaml:3:20: rules[0].when.metric: unknown metric 'nodemedic_kubelet_upp'; did you mean "
      "nodemedic_kubelet_up?"]),
    # an unknown metric is reported even when the rule has other errors
    (OK_RULE.replace("nodemedic_kubelet_up", "nodemedic_kubelet_upp") + "    for: soon\n",
     ["f.yaml:3:20: rules[0].when.metric: unknown metric 'nodemedic_kubelet_upp'; did you mean "
      "nodemedic_kubelet_up?",
      "f.yaml:5:10: rules[0].for: expected a duration like 10s, 2m or 1h30m, got 'soon'"]),
    # unknown action type
    (OK_RULE.replace("{type: cordon}", "{type: reboot}"),
     ["f.yaml:4:15: rules[0].actions[0]: unknown action type 'reboot'; known: "
      + ", ".join(ACTION_TYPES)]),
    # bad duration
    (OK_RULE + "    for: 2 minutes\n",
     ["f.yaml:5:10: rules[0].for: expected a duration like 10s, 2m or 1h30m, got '2 minutes'"]),
    # missing required field
    (OK_RULE.replace('op: "==", ', ""), ["f.yaml:3:11: rules[0].when.op: required"]),
    # unsafe: cooldown below the floor, unbounded hourly cap
    (OK_RULE + "    cooldown: 5s\n    max_per_hour: 0\n",
     ["f.yaml:5:15: rules[0].cooldown: cooldown must be at least 1m (an action loop is worse "
      "than none)",
      "f.yaml:6:19: rules[0].max_per_hour: must be greater than or equal to 1"]),
    # unsafe: drain without a grace cap, or with an unbounded one
    (OK_RULE.replace("{type: cordon}", "{type: drain, timeout: 10m}"),
     ["f.yaml:4:15: rules[0].actions[0].grace_period_cap: required"]),
    (OK_RULE.replace("{type: cordon}", "{type: drain, timeout: 10m, grace_period_cap: 2h}"),
     ["f.yaml:4:15: rules[0].actions[0]: grace_period_cap must be at most 1h"]),
    # NoExecute taints evict around PodDisruptionBudgets
    (OK_RULE.replace("{type: cordon}",
                     "{type: taint, key: nodemedic.io/x, effect: NoExecute}"),
     ["f.yaml:4:58: rules[0].actions[0].effect: NoExecute evicts pods without consulting "
      "PodDisruptionBudgets; use NoSchedule with a drain"]),
    # a shell string as unit
    (OK_RULE.replace("{type: cordon}", '{type: restart-service, unit: "kubelet; rm -rf /"}'),
     ["f.yaml:4:45: rules[0].actions[0].unit: must be a systemd .service unit name like "
      "kubelet.service, never a command line"]),
    # template with attribute access (code execution attempt)
    (OK_RULE.replace("{type: cordon}", '{type: event, reason: X, message: "{rule.__class__}"}'),
     ["f.yaml:4:49: rules[0].actions[0].message: unknown template field {rule.__class__}; "
      "allowed: container, description, metric, namespace, node, pod, rule, runbook, severity, "
      "step, target, value"]),
    # taint key outside nodemedic.io/, bad effect
    (OK_RULE.replace("{type: cordon}", "{type: taint, key: example.com/x, effect: Evict}"),
     ["f.yaml:4:34: rules[0].actions[0].key: must be nodemedic.io/<name> (letters, digits, -, "
      "_, .; max 63)",
      "f.yaml:4:57: rules[0].actions[0].effect: must be 'NoSchedule', 'PreferNoSchedule' or "
      "'NoExecute', got 'Evict'"]),
    # webhook must be http(s)
    (OK_RULE.replace("{type: cordon}", "{type: webhook, url: file:///etc/passwd}"),
     ["f.yaml:4:36: rules[0].actions[0].url: must be an http:// or https:// URL"]),
    # label the metric does not have; rate on a gauge
    (OK_RULE.replace("op:", "labels: {pod: x}, function: rate, window: 1m, op:"),
     ["f.yaml:3:56: rules[0].when.labels.pod: nodemedic_kubelet_up has no label 'pod' (it has "
      "no labels)",
      "f.yaml:3:70: rules[0].when.function: rate needs a counter, nodemedic_kubelet_up is a "
      "gauge"]),
    # a pod rule may not cordon; its metric needs pod labels
    (OK_RULE.replace("    actions", "    target: pod\n    actions"),
     ["f.yaml:3:20: rules[0].when.metric: target pod needs namespace and pod labels; "
      "nodemedic_kubelet_up has none",
      "f.yaml:5:22: rules[0].actions[0].type: cordon is not allowed in a pod-target rule: one "
      "pod must never disrupt the whole node"]),
    # hysteresis on the wrong side
    (OK_RULE.replace('op: "==", value: 0', 'op: "<", value: 1, clear: 0'),
     ["f.yaml:3:11: rules[0].when: clear must be >= value for op <"]),
    # bad regex in a matcher
    (OK_RULE.replace("nodemedic_kubelet_up,",
                     'nodemedic_node_condition, labels: {condition: {"=~": "("}},'),
     ["f.yaml:3:66: rules[0].when.labels.condition: bad regular expression: missing ), "
      "unterminated subpattern at position 0"]),
    # undo may not disrupt
    (OK_RULE + "    undo: [{type: cordon}]\n",
     ["f.yaml:5:19: rules[0].undo[0].type: undo may only use annotate, event, uncordon, "
      "untaint, webhook"]),
    # duplicate key within a mapping (YAML would silently keep the last)
    (OK_RULE + "    name: again\n", ["f.yaml:5:5: rules[0].name: duplicate key"]),
    # invalid YAML
    ("rules:\n  - name: [unclosed\n", [
        "f.yaml:3:1: (yaml): invalid YAML: expected ',' or ']', but got '<stream end>'"]),
    # not a mapping
    ("- just\n- a list\n",
     ["f.yaml:1:1: (document): a rule file is a mapping with a `rules:` list"]),
    # unsafe YAML tags
    ("rules: !!python/object/apply:os.system [reboot]\n",
     ["f.yaml:1:8: rules: unsupported tag 'tag:yaml.org,2002:python/object/apply:os.system'"]),
]


@pytest.mark.parametrize(("text", "expected"), INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_rules_are_reported_at_their_location(text: str, expected: list[str]) -> None:
    """Each mistake yields exactly the located messages a user sees from check-rules."""
    assert problems(text) == expected


def test_alias_bomb_is_cut_off_with_a_located_error() -> None:
    """Exponential alias expansion is refused instead of eating memory."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, "
              f"*a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 9)]
    found = problems("\n".join(lines) + "\nrules: *a8\n")
    assert len(found) == 1 and "more than 50000 nodes" in found[0]


def test_duplicate_rule_names_across_files() -> None:
    """The second definition of a name is an error pointing at both places."""
    _ruleset, found = check_files([FIXTURES / "duplicate"], CATALOGUE)
    assert [str(p).replace(str(FIXTURES) + "/", "") for p in found] == [
        "duplicate/b.yaml:5:11: rules[1].name: duplicate rule name 'same-name' (first defined "
        "at duplicate/a.yaml:2)"]
    with pytest.raises(RulesError) as err:
        load_rules_dir(FIXTURES / "duplicate", CATALOGUE)
    assert len(err.value.problems) == 1


def test_missing_path_is_a_problem_not_a_crash() -> None:
    """A rules path that does not exist is reported like any other problem."""
    _, found = check_files(["/nonexistent/rules"], CATALOGUE)
    assert [str(p) for p in found] == ["/nonexistent/rules:1:1: (file): no such file or directory"]


def test_reloader_keeps_last_good_set_and_counts_failures(tmp_path: Path) -> None:
    """On a bad reload the previous rules stay active and the failure is visible as metrics."""
    (tmp_path / "a.yaml").write_text(OK_RULE)
    reloader = RulesReloader(tmp_path, CATALOGUE)
    assert reloader.reload().names() == ["r"]
    (tmp_path / "a.yaml").write_text(OK_RULE + "    bogus: 1\n")
    with pytest.raises(RulesError):
        reloader.reload()
    assert reloader.current.names() == ["r"]
    fam = {f.name: f for f in reloader.families()}
    assert fam["nodemedic_rules_reload_failures_total"].get() == 1
    assert fam["nodemedic_rules_last_reload_success"].get() == 0
    assert fam["nodemedic_rules_loaded"].get() == 1
