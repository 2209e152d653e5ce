"""Test utilities shipped with nodemedic: the in-memory Kubernetes API server and its fixtures.

Used by the test suite (through agent.testing.pytest_plugin), by ``nodemedic apiserver`` and the
demo. Nothing in the agent's runtime imports this package.
"""
