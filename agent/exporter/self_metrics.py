"""The agent's own metrics (collector success and duration, tick timing, build info, reloads).

Created once per agent by agent.runtime.daemon, each agent with its own CollectorRegistry so that
several agents can share one process (the demo does). Updated by the pipeline after every tick.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from agent import __version__

# *_created series double the exposition for no use in Prometheus' text format (process-wide).
disable_created_metrics()  # type: ignore[no-untyped-call]


class SelfMetrics:
    """prometheus_client metrics about the agent itself, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.collector_success = Gauge(
            "nodemedic_collector_success",
            "1 if the collector succeeded in the last tick, 0 if it failed or timed out.",
            ["collector"], registry=registry,
        )
        self.collector_duration = Gauge(
            "nodemedic_collector_duration_seconds",
            "Wall time the collector took in the last tick.",
            ["collector"], registry=registry,
        )
        self.collector_failures = Counter(
            "nodemedic_collector_failures_total",
            "Ticks in which the collector failed, by reason: error, timeout, or the agent's own "
            "access (unauthorized, forbidden, tls, permission).",
            ["collector", "reason"], registry=registry,
        )
        self.collector_degraded = Gauge(
            "nodemedic_collector_degraded",
            "1 while the collector runs but every source it reads fails (e.g. no kubelet "
            "endpoint answers): its metrics say what it observed (nodemedic_kubelet_up 0), but it "
            "is not ok. /status names each source's error.",
            ["collector"], registry=registry,
        )
        self.collector_cannot_read = Gauge(
            "nodemedic_collector_cannot_read",
            "1 while the collector cannot read all or part of its data because of the agent's own "
            "access: reason unauthorized (HTTP 401), forbidden (403), tls (certificate "
            "verification) or permission (EACCES/EPERM). That data is missing, rules reading it "
            "are frozen and nothing is remediated on it.",
            ["collector", "reason"], registry=registry,
        )
        self.tick_duration = Histogram(
            "nodemedic_tick_duration_seconds",
            "Wall time of a whole collection tick (all collectors, rules, rendering).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.last_tick = Gauge(
            "nodemedic_last_tick_timestamp_seconds",
            "Unix time at which the last collection tick finished.",
            registry=registry,
        )
        self.ticks_skipped = Counter(
            "nodemedic_ticks_skipped_total",
            "Ticks skipped because the previous tick overran the interval.",
            registry=registry,
        )
        self.render_duration = Gauge(
            "nodemedic_exposition_render_seconds",
            "CPU-bound time spent rendering the last /metrics exposition.",
            registry=registry,
        )
        self.build_info = Gauge(
            "nodemedic_build_info",
            "Always 1; labels carry the nodemedic and Python versions.",
            ["version", "python_version"], registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.dry_run = Gauge(
            "nodemedic_dry_run",
            "1 when the agent runs with --dry-run (decides but executes no action).",
            registry=registry,
        )
        self.config_reloads = Counter(
            "nodemedic_config_reloads_total",
            "SIGHUP reloads of settings and rules, by result (success or failure).",
            ["result"], registry=registry,
        )
        self.config_last_reload_success = Gauge(
            "nodemedic_config_last_reload_success",
            "1 if the last reload succeeded (or none happened), 0 if the old config was kept.",
            registry=registry,
        )
        self.config_last_reload_success.set(1)
        self.config_restart_required = Gauge(
            "nodemedic_config_restart_required",
            "1 per setting whose changed value was read by a reload but only applies after a "
            "restart (the agent runs on the old value until then).",
            ["setting"], registry=registry,
        )
        self.task_restarts = Counter(
            "nodemedic_task_restarts_total",
            "Supervised background tasks restarted after crashing.",
            ["task"], registry=registry,
        )
        self.http_requests = Counter(
            "nodemedic_http_requests_total",
            "HTTP requests served, by handler and status code.",
            ["handler", "code"], registry=registry,
        )
        self.http_rejected = Counter(
            "nodemedic_http_rejected_total",
            "HTTP requests and connections refused with 429 (overload): too many requests in "
            "flight, or every connection busy.",
            registry=registry,
        )
