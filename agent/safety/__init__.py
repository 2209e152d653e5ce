"""The safety gate and what it decides with: budgets, the pause switch, the action ledger and
workload attribution (agent.safety.attribution: is it the node, or a workload on it?).

agent.runtime.remediation sends every request through agent.safety.gate.SafetyGate.
"""
