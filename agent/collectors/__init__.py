"""Collectors: one module per collector, registered by name (see agent.collectors.registry)."""
