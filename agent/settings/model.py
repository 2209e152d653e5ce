"""The agent's settings model: every option, its type, bounds, default and reload mode.

Read by agent.settings (which loads and re-exports it) and by everything holding a ``Settings``.
Each field is one option (the flag name with ``.``/``-`` as ``_``), annotated with its
:class:`OnReload` (how a SIGHUP applies a change); field validators check single values and
``_check_combinations`` the settings that contradict each other. How options are spelled on the
command line, in the environment and the config file is agent.settings.flags.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.structs.durations import format_duration
from agent.structs.gatespec import check_selectors, check_windows
from agent.structs.remediation import ACTION_TYPES


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming it and what is allowed."""


class Combination(ValueError):
    """Raised by Settings' cross-field check; ``field`` is the setting the message is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


ReloadMode = Literal["live", "collectors", "restart"]


@dataclass(frozen=True)
class OnReload:
    """How a changed setting reaches the running agent on SIGHUP; declared next to each field.

    ``live``: the daemon and its components read it from the current settings at each use, so
    committing the new settings applies it. ``collectors``: read by collectors or the clients they
    share when they are built, so a change rebuilds them. ``restart``: read once at start; a change
    keeps the running value and is reported (log, /status, metric) as needing a restart. A field
    without a declaration is treated as ``restart``: never silently "reloaded" on old values.
    """

    mode: ReloadMode


LIVE = OnReload("live")
COLLECTORS = OnReload("collectors")
RESTART = OnReload("restart")

_SHARE = r"^[0-9]{1,6}%?$"  # a node count N or a share N%
_URL = r"^$|^https?://[^\s/?#]+[^\s?#]*$"  # empty (off) or an http(s) base URL
# How often a kubelet renews its node Lease in kube-node-lease: renewInterval = 0.25 x
# nodeLeaseDurationSeconds, whose default is 40 s (KubeletConfiguration; pkg/kubelet/nodelease's
# renewIntervalFraction 0.25), so every 10 s. The agent cannot read the kubelets' setting; the
# failover node grace is checked against this (see Settings._check_combinations).
KUBELET_LEASE_RENEW_INTERVAL = 10.0
# The validation-context key by which a test harness whose fake kubelets renew faster says how
# often they do, e.g. ``Settings.model_validate(values, context={LEASE_RENEW_CONTEXT: 0.5})``
# (nodemedic_sim.demo.fleet). Never set on the load path (load_settings, reload): a real agent
# always assumes the kubelet's 10 s.
LEASE_RENEW_CONTEXT = "kubelet_lease_renew_interval"
# RFC 1123 DNS subdomain, as Kubernetes requires of node names.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _hostname() -> str:
    """The default node name: the kubelet's own default, the lower-cased hostname."""
    return socket.gethostname().lower()


class Settings(BaseModel):
    """Validated settings. Field names are the flag names with ``.``/``-`` as ``_``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: Annotated[Path | None, LIVE] = None
    web_listen_address: Annotated[str, RESTART] = ":9678"
    web_max_connections: Annotated[int, RESTART] = Field(default=64, ge=1, le=10000)
    web_config_file: Annotated[Path | None, LIVE] = None
    web_kubernetes_auth: Annotated[bool, RESTART] = False
    web_probe_address: Annotated[str, RESTART] = Field(default="", pattern=r"^$|^.*:[0-9]{1,5}$")
    path_cgroupfs: Annotated[Path, COLLECTORS] = Path("/sys/fs/cgroup")
    path_procfs: Annotated[Path, COLLECTORS] = Path("/proc")
    kubelet_url: Annotated[str, COLLECTORS] = "https://127.0.0.1:10250"
    kubelet_token_file: Annotated[Path | None, COLLECTORS] = None
    kubelet_ca_file: Annotated[Path | None, COLLECTORS] = None
    kubelet_insecure_skip_verify: Annotated[bool, COLLECTORS] = False
    kubelet_summary_min_interval: Annotated[float, COLLECTORS] = Field(
        default=30.0, ge=0.0, le=3600.0)
    kubeconfig: Annotated[Path | None, RESTART] = None
    node_name: Annotated[str, RESTART] = Field(default_factory=_hostname, min_length=1)
    rules_dir: Annotated[Path, LIVE] = Path("/etc/nodemedic/rules")
    # systemd sets $STATE_DIRECTORY from the unit's StateDirectory= (the first entry wins).
    state_dir: Annotated[Path, RESTART] = Field(
        default_factory=lambda: Path(
            (os.environ.get("STATE_DIRECTORY") or "/var/lib/nodemedic").split(":")[0]
        )
    )
    collect_interval: Annotated[float, COLLECTORS] = Field(default=10.0, ge=1.0, le=3600.0)
    collector_timeout: Annotated[float, COLLECTORS] = Field(default=5.0, gt=0.0, le=600.0)
    cgroup_min_interval: Annotated[float, COLLECTORS] = Field(default=30.0, ge=0.0, le=3600.0)
    cgroup_psi: Annotated[Literal["container", "pod", "off"], COLLECTORS] = "pod"
    dry_run: Annotated[bool, LIVE] = False
    actions_restart_allowlist: Annotated[tuple[str, ...], LIVE] = (
        "kubelet.service", "containerd.service")
    actions_webhook_allowlist: Annotated[tuple[str, ...], LIVE] = ()
    safety_max_cordoned: Annotated[str, LIVE] = Field(default="10%", pattern=_SHARE)
    safety_max_actions_per_hour: Annotated[int, LIVE] = Field(default=20, ge=0, le=100000)
    safety_drain_grace_cap: Annotated[float, LIVE] = Field(default=120.0, ge=0.0, le=86400.0)
    safety_pause_configmap: Annotated[str, LIVE] = Field(
        default="kube-system/nodemedic", pattern=r"^[a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*$"
    )
    safety_cordon_lock: Annotated[str, LIVE] = Field(
        default="kube-system/nodemedic-cordon",
        pattern=r"^[a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*$",
    )
    safety_workload_other_nodes: Annotated[int, LIVE] = Field(default=1, ge=0, le=1000)
    safety_workload_window: Annotated[float, LIVE] = Field(default=3600.0, ge=60.0, le=604800.0)
    safety_gated_actions: Annotated[tuple[str, ...], LIVE] = (
        "cordon", "drain", "evict-pod", "taint", "restart-service")
    safety_alert_gate_prometheus_url: Annotated[str, LIVE] = Field(default="", pattern=_URL)
    safety_alert_gate_alertmanager_url: Annotated[str, LIVE] = Field(default="", pattern=_URL)
    safety_alert_gate_alerts: Annotated[tuple[str, ...], LIVE] = ()
    safety_alert_gate_interval: Annotated[float, LIVE] = Field(default=15.0, ge=1.0, le=3600.0)
    safety_alert_gate_timeout: Annotated[float, LIVE] = Field(default=5.0, gt=0.0, le=600.0)
    safety_alert_gate_stale_intervals: Annotated[int, LIVE] = Field(default=3, ge=1, le=1000)
    safety_allow_windows: Annotated[tuple[str, ...], LIVE] = ()
    safety_deny_windows: Annotated[tuple[str, ...], LIVE] = ()
    host_disk_paths: Annotated[tuple[str, ...], COLLECTORS] = (
        "/", "/var/lib/kubelet", "/var/lib/containerd")
    log_level: Annotated[Literal["debug", "info", "warning", "error"], LIVE] = "info"
    log_format: Annotated[Literal["auto", "json", "console"], LIVE] = "auto"
    lbskew_iptables_save_command: Annotated[str, COLLECTORS] = Field(
        default="iptables-save", min_length=1)
    lbskew_iptables_save_file: Annotated[Path | None, COLLECTORS] = None
    lbskew_rules_min_interval: Annotated[float, COLLECTORS] = Field(default=30.0, ge=0.0, le=3600.0)
    lbskew_conntrack_command: Annotated[str, COLLECTORS] = Field(default="conntrack", min_length=1)
    lbskew_conntrack_cpu: Annotated[str, COLLECTORS] = Field(
        default="0.1%", pattern=r"^(0*[1-9][0-9]*(\.[0-9]+)?|0*\.[0-9]*[1-9][0-9]*)%$")
    lbskew_min_samples: Annotated[int, COLLECTORS] = Field(default=30, ge=1, le=1_000_000)
    peerclock_peers: Annotated[int, COLLECTORS] = Field(default=5, ge=0, le=50)
    peerclock_interval: Annotated[float, COLLECTORS] = Field(default=30.0, ge=1.0, le=3600.0)
    peerclock_window: Annotated[int, COLLECTORS] = Field(default=8, ge=1, le=64)
    peerclock_max_offset: Annotated[float, COLLECTORS] = Field(default=0.5, gt=0.0, le=3600.0)
    failover_enabled: Annotated[bool, RESTART] = False
    failover_lease_namespace: Annotated[str, RESTART] = Field(
        default="kube-system", pattern=r"^[a-z0-9][-a-z0-9]*$")
    failover_node_grace: Annotated[float, LIVE] = Field(default=40.0, ge=1.0, le=86400.0)
    failover_probers: Annotated[int, LIVE] = Field(default=2, ge=0, le=10)
    failover_probe_timeout: Annotated[float, LIVE] = Field(default=1.0, gt=0.0, le=60.0)
    failover_max_unhealthy: Annotated[str, LIVE] = Field(default="40%", pattern=_SHARE)
    failover_max_unhealthy_zone: Annotated[str, LIVE] = Field(default="50%",
                                                              pattern=_SHARE)
    failover_fencing_time: Annotated[float, LIVE] = Field(default=180.0, ge=0.0, le=86400.0)
    failover_fence_command: Annotated[tuple[str, ...], LIVE] = ()
    failover_healthy_delay: Annotated[float, LIVE] = Field(default=120.0, ge=0.0, le=86400.0)
    failover_max_concurrent: Annotated[int, LIVE] = Field(default=1, ge=0, le=1000)
    failover_lease_duration: Annotated[float, RESTART] = Field(default=15.0, ge=0.3, le=600.0)
    failover_retry_period: Annotated[float, RESTART] = Field(default=2.0, ge=0.05, le=60.0)
    # Read when the problems collector starts: a change rebuilds it (and re-reads the dir).
    problems_dir: Annotated[Path, COLLECTORS] = Path("/etc/nodemedic/problems")
    problems_plugin_dir: Annotated[Path | None, COLLECTORS] = None
    problems_max_lines_per_second: Annotated[int, COLLECTORS] = Field(
        default=20000, ge=100, le=1_000_000)
    problems_heartbeat_interval: Annotated[float, COLLECTORS] = Field(
        default=60.0, ge=5.0, le=3600.0)
    collectors: Annotated[Mapping[str, bool], COLLECTORS] = Field(default_factory=dict)

    @field_validator("web_listen_address")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        _, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT or :PORT with a port from 0 to 65535")
        return v

    @field_validator("kubelet_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("node_name")
    @classmethod
    def _check_node_name(cls, v: str) -> str:
        if len(v) > 253 or not _DNS_SUBDOMAIN.match(v):
            raise ValueError(
                "must be a Kubernetes node name: an RFC 1123 DNS subdomain (lower-case a-z, 0-9, "
                "'-' and '.', starting and ending with a letter or digit, at most 253 characters)"
            )
        return v

    @field_validator("safety_gated_actions")
    @classmethod
    def _check_actions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [a for a in v if a not in ACTION_TYPES]
        if unknown:
            raise ValueError(f"unknown action {unknown[0]!r}; known: {', '.join(ACTION_TYPES)}")
        return v

    @field_validator("safety_alert_gate_alerts")
    @classmethod
    def _check_selectors(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_selectors(v)

    @field_validator("safety_allow_windows", "safety_deny_windows")
    @classmethod
    def _check_windows(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_windows(v)

    @field_validator("safety_alert_gate_prometheus_url", "safety_alert_gate_alertmanager_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @field_validator("safety_max_cordoned", "failover_max_unhealthy",
                     "failover_max_unhealthy_zone")
    @classmethod
    def _check_share(cls, v: str) -> str:
        if v.endswith("%") and int(v[:-1]) > 100:
            raise ValueError(
                "must be a node count N or a share from 0% to 100%: more than 100% of the nodes "
                "is no limit at all"
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: Any) -> Any:
        """Unset --collector.timeout is 5s, or half of a collect interval shorter than 10s."""
        if isinstance(data, dict) and "collector_timeout" not in data:
            try:
                interval = float(data.get("collect_interval", 10.0))
            except (TypeError, ValueError):
                return data  # the field's own validation reports it
            return {**data, "collector_timeout": min(5.0, interval / 2)}
        return data

    @model_validator(mode="after")
    def _check_combinations(self, info: ValidationInfo) -> Settings:
        """Settings that are each valid but contradict each other (each message names both)."""
        renew = float((info.context or {}).get(LEASE_RENEW_CONTEXT, KUBELET_LEASE_RENEW_INTERVAL))
        if self.failover_enabled and self.failover_node_grace < 2 * renew:
            # A peer counts as a prober only while its lease is younger than half the grace:
            # under two renewals the probers change at every renewal and healthy nodes look down.
            raise Combination(
                "failover_node_grace",
                f"must be at least {format_duration(2 * renew)} with --failover.enabled, twice "
                f"the kubelet's node-Lease renewal interval ({format_duration(renew)}): peers "
                "probe only while their lease is younger than half the grace, so a shorter "
                "grace changes the probers at every renewal and healthy nodes look down",
            )
        if self.collector_timeout >= self.collect_interval:
            raise Combination(
                "collector_timeout",
                f"must be shorter than --collect.interval "
                f"({format_duration(self.collect_interval)}): a collector may not run into the "
                "next tick",
            )
        if self.failover_retry_period > self.failover_lease_duration / 3:
            raise Combination(
                "failover_retry_period",
                f"must be at most a third of --failover.lease-duration "
                f"({format_duration(self.failover_lease_duration)}, so at most "
                f"{format_duration(self.failover_lease_duration / 3)}): the leader must get "
                "several renewal "
                "attempts before its renew deadline (2/3 of the lease)",
            )
        if self.safety_alert_gate_timeout >= self.safety_alert_gate_interval:
            raise Combination(
                "safety_alert_gate_timeout",
                f"must be shorter than --safety.alert-gate-interval "
                f"({format_duration(self.safety_alert_gate_interval)}): one poll may not run "
                "into the next",
            )
        if self.safety_alert_gate_alerts and not (self.safety_alert_gate_prometheus_url
                                                  or self.safety_alert_gate_alertmanager_url):
            raise Combination(
                "safety_alert_gate_alerts",
                "names alerts but neither --safety.alert-gate-prometheus-url nor "
                "--safety.alert-gate-alertmanager-url is set: nothing could say they are clear",
            )
        if self.kubelet_insecure_skip_verify and self.kubelet_ca_file is not None:
            raise Combination(
                "kubelet_insecure_skip_verify",
                "contradicts --kubelet.ca-file: verify against the CA, or skip verification, "
                "not both",
            )
        return self

    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.web_listen_address.rpartition(":")
        return (host.strip("[]") or "0.0.0.0"), int(port)

    def collector_enabled(self, name: str, default: bool) -> bool:
        return self.collectors.get(name, default)


def settings_for_tests(**overrides: Any) -> Settings:
    """Defaults with field overrides, for unit tests and benchmarks.

    A test that only raises ``collector_timeout`` gets a collect interval long enough for it."""
    timeout = overrides.get("collector_timeout")
    if isinstance(timeout, (int, float)) and "collect_interval" not in overrides:
        overrides = {**overrides, "collect_interval": max(10.0, 2.0 * timeout)}
    return Settings(**overrides)
