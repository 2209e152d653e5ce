"""An action is declared once (issue 16): its parameter model in agent.structs.actionparams gives
its name, the rule schema fragment, the docs row and where rules may use it; the action class
names that model, and a rule's validated model reaches plan() typed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.actions import registry
from agent.actions.base import Action, ActionContext, Plan
from agent.docs_schema import actions_table
from agent.rules.schema import json_schema
from agent.structs import actionparams
from agent.structs.remediation import ActionSpec, Decision, Outcome
from tests.unit.actions.helpers_actions import request, settings


def test_every_declared_action_has_exactly_one_executor_bound_to_its_model() -> None:
    assert registry.names() == sorted(actionparams.ACTION_MODELS)
    for name, model in actionparams.ACTION_MODELS.items():
        act = registry.get(name)
        assert act is not None and act.params_model is model and act.name == name


def test_an_action_whose_model_is_not_declared_cannot_register() -> None:
    class Stray(actionparams.Cordon):
        """Not in the Action union, so not an action type."""

    with pytest.raises(ValueError, match="not declared"):
        @registry.action(Stray)
        class StrayAction(Action):
            def explain(self, req: object, settings: object) -> Plan:  # type: ignore[override]
                raise AssertionError

            async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
                raise AssertionError


def test_schema_and_docs_are_read_from_the_models() -> None:
    defs = json_schema()["$defs"]
    table = actions_table()
    for name, model in actionparams.ACTION_MODELS.items():
        fragment = defs[model.__name__]
        assert fragment["properties"]["type"]["const"] == name
        assert set(fragment["properties"]) == {
            f.alias or key for key, f in model.model_fields.items()}
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.split(" | ")[1] == " and ".join(model.rule_targets) + " rules"
        assert row.split(" | ")[2] == ("yes" if model.in_undo else "no")


def test_a_code_built_spec_is_the_rules_model() -> None:
    """A request built in code carries the same validated model as a rule's, and plans the
    same; a parameter the model refuses fails where the request is built."""
    model = actionparams.Drain.model_validate(
        {"type": "drain", "timeout": "10m", "grace_period_cap": "30s"})
    built = request("drain", {"timeout": "10m", "grace_period_cap": "30s"}, rule="node-broken")
    typed = replace(built, action=ActionSpec(model))
    assert built.action == typed.action
    assert isinstance(built.action.params, actionparams.Drain)
    act = registry.get("drain")
    assert act is not None
    assert act.plan(typed, settings()) == act.plan(built, settings())
    assert "timeout 10m" in act.plan(built, settings()).summary
    with pytest.raises(ValueError, match="grace_period_cap"):
        ActionSpec.of("drain", {"timeout": "1h"})  # there is no unbounded drain, not in code either
    with pytest.raises(ValueError, match="no action named 'reboot'"):
        ActionSpec.of("reboot")
