"""Remediation actions: one module per action type, looked up through agent.actions.registry.

Every action has a pure ``plan()`` and an idempotent ``execute()``; its parameters are declared
once, as its model in agent.structs.actionparams. Only agent.safety.gate (plan) and
agent.actions.executor (execute, for the remediation stage and the failover leader) call them.
"""
