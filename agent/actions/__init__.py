"""Remediation actions: one module per action type, looked up through agent.actions.registry.

Every action has a pure ``plan()`` and an idempotent ``execute()``; only agent.safety.gate and
agent.runtime.remediation call them.
"""
