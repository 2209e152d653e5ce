"""Shared pytest configuration: loads the in-memory API server fixtures (apiserver, kube_api)."""

pytest_plugins = ["agent.testing.pytest_plugin"]
