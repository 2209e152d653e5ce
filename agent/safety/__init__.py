"""The safety gate and what it decides with: budgets, the pause switch and the action ledger.

agent.runtime.remediation sends every request through agent.safety.gate.SafetyGate.
"""
