"""Prometheus exposition: self-metrics, per-tick rendering of snapshot families, the HTTP server."""
