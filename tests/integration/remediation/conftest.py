"""Fixtures for the remediation scenarios: the in-memory API server and a real client for it."""

from agent.testing.pytest_plugin import apiserver, kube_api

__all__ = ["apiserver", "kube_api"]
