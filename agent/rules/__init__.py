"""Remediation rules: the YAML schema, the loader that locates every error, the engine that
turns snapshots into action requests, and ``nodemedic check-rules``."""
