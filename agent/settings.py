"""Typed settings for the agent, from flags > environment > config file > defaults.

Called by agent.cli (``nodemedic run``) and by the SIGHUP reload in agent.runtime.daemon. Every
setting is declared once in ``FLAGS``; argparse options, environment variables
(``NODEMEDIC_`` + flag name upper-cased with ``.``/``-`` as ``_``), config-file keys (the flag
name without dashes) and the README flag table are all derived from that list, so they cannot
drift apart. ``load_settings`` raises :class:`SettingsError` with one line naming the setting and
what is allowed, also for combinations that contradict each other. Next to each field,
:class:`OnReload` says how a SIGHUP applies a change (live, by rebuilding the collectors, or only
after a restart); agent.runtime.reloadplan derives what a reload does from it.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.settings_text import (
    ENV_PREFIX,
    as_written,
    bounds_message,
    did_you_mean,
    unknown_env_name,
)
from agent.structs.durations import format_duration, parse_duration
from agent.structs.gatespec import check_selectors, check_windows
from agent.structs.remediation import ACTION_TYPES


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming it and what is allowed."""


class _Combination(ValueError):
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
    def _check_combinations(self) -> Settings:
        """Settings that are each valid but contradict each other (each message names both)."""
        if self.collector_timeout >= self.collect_interval:
            raise _Combination(
                "collector_timeout",
                f"must be shorter than --collect.interval "
                f"({format_duration(self.collect_interval)}): a collector may not run into the "
                "next tick",
            )
        if self.failover_retry_period > self.failover_lease_duration / 3:
            raise _Combination(
                "failover_retry_period",
                f"must be at most a third of --failover.lease-duration "
                f"({format_duration(self.failover_lease_duration)}, so at most "
                f"{format_duration(self.failover_lease_duration / 3)}): the leader must get "
                "several renewal "
                "attempts before its renew deadline (2/3 of the lease)",
            )
        if self.safety_alert_gate_timeout >= self.safety_alert_gate_interval:
            raise _Combination(
                "safety_alert_gate_timeout",
                f"must be shorter than --safety.alert-gate-interval "
                f"({format_duration(self.safety_alert_gate_interval)}): one poll may not run "
                "into the next",
            )
        if self.safety_alert_gate_alerts and not (self.safety_alert_gate_prometheus_url
                                                  or self.safety_alert_gate_alertmanager_url):
            raise _Combination(
                "safety_alert_gate_alerts",
                "names alerts but neither --safety.alert-gate-prometheus-url nor "
                "--safety.alert-gate-alertmanager-url is set: nothing could say they are clear",
            )
        if self.kubelet_insecure_skip_verify and self.kubelet_ca_file is not None:
            raise _Combination(
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


@dataclass(frozen=True)
class Flag:
    """One setting as exposed on the command line, in the environment and in the config file."""

    name: str  # e.g. "web.listen-address"
    kind: Literal["str", "path", "optpath", "duration", "bool", "int", "list", "items"]
    help: str

    @property
    def field(self) -> str:
        return self.name.replace(".", "_").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


FLAGS: tuple[Flag, ...] = (
    Flag("config", "optpath", "YAML config file; keys are flag names without dashes"),
    Flag("web.listen-address", "str", "address for /metrics, /healthz, /readyz, /status"),
    Flag("web.max-connections", "int", "concurrent HTTP connections served before refusing"),
    Flag("web.config.file", "optpath",
         "exporter-toolkit web config: TLS, client certificates, basic auth, headers "
         "(docs/security.md)"),
    Flag("web.kubernetes-auth", "bool",
         "require a Kubernetes bearer token (TokenReview + SubjectAccessReview) for /metrics, "
         "/status"),
    Flag("web.probe-address", "str",
         "HOST:PORT of a plain-HTTP listener serving only /healthz and /readyz, no auth"),
    Flag("path.cgroupfs", "path", "cgroup filesystem root (v1 controllers and/or v2)"),
    Flag("path.procfs", "path", "procfs root"),
    Flag("kubelet.url", "str", "kubelet base URL (https://...:10250 or http://...:10255)"),
    Flag("kubelet.token-file", "optpath", "bearer token file for the kubelet's HTTPS port"),
    Flag("kubelet.ca-file", "optpath", "CA bundle that signed the kubelet's serving certificate"),
    Flag("kubelet.insecure-skip-verify", "bool", "do not verify the kubelet's certificate"),
    Flag("kubeconfig", "optpath", "kubeconfig for the API server; unset = in-cluster or none"),
    Flag("node-name", "str", "this node's Kubernetes name"),
    Flag("rules.dir", "path", "directory of YAML remediation rules"),
    Flag("state.dir", "path",
         "directory for the local copy of the safety ledger (cooldowns, caps, actions in "
         "progress) kept for when the API is down; default $STATE_DIRECTORY, else "
         "/var/lib/nodemedic"),
    Flag("collect.interval", "duration", "time between collection ticks (1s to 1h)"),
    Flag("collector.timeout", "duration",
         "per-collector time limit within a tick; shorter than the interval (unset: 5s, or half "
         "an interval shorter than 10s)"),
    Flag("cgroup.min-interval", "duration",
         "least time between two reads of the cgroup tree; ticks in between re-serve the last "
         "read (default 30s: a third of the cgroup collector's CPU; 0 = every tick)"),
    Flag("cgroup.psi", "str",
         "PSI read per pod (default), also per container (a third more cgroup files and "
         "6,000 more series on a 250-pod node: which container of a pod stalls), or off"),
    Flag("dry-run", "bool", "evaluate rules and gate actions, but execute none"),
    Flag("actions.restart-allowlist", "list", "systemd units restart-service may restart"),
    Flag("actions.webhook-allowlist", "list", "webhook URLs; an entry ending in / allows below it"),
    Flag("safety.max-cordoned", "str", "cluster cap on unschedulable nodes: N or N%"),
    Flag("safety.max-actions-per-hour", "int", "disruptive actions allowed per hour (0 = none)"),
    Flag("safety.drain-grace-cap", "duration", "cap on a pod's grace period during drain"),
    Flag("safety.pause-configmap", "str", "NAMESPACE/NAME of the cluster-wide pause ConfigMap"),
    Flag("safety.cordon-lock", "str",
         "NAMESPACE/NAME of the Lease serialising cluster-cap checks and cordons"),
    Flag("safety.workload-other-nodes", "int",
         "other nodes whose pods of the same owner must show a rule's workload_reasons for a "
         "cordon, drain or taint to be denied as workload_not_node (0 = never)"),
    Flag("safety.workload-window", "duration",
         "how recent those pods' Events must be to count"),
    Flag("safety.gated-actions", "list",
         "actions held by alert gates and maintenance windows (per rule: gates.actions); a "
         "freeze holds these and every disruptive action (docs/gates.md)"),
    Flag("safety.alert-gate-prometheus-url", "str",
         "Prometheus base URL whose firing alerts (GET /api/v1/alerts) hold gated actions"),
    Flag("safety.alert-gate-alertmanager-url", "str",
         "Alertmanager base URL whose active, unsilenced alerts (GET /api/v2/alerts) hold them"),
    Flag("safety.alert-gate-alerts", "items",
         "alerts that hold gated actions while they fire, ';'-separated on the command line: "
         "NAME or {label=\"v\", severity=~\"critical|page\"}"),
    Flag("safety.alert-gate-interval", "duration", "time between two polls of the alert sources"),
    Flag("safety.alert-gate-timeout", "duration", "time limit of one poll (shorter than the "
         "interval)"),
    Flag("safety.alert-gate-stale-intervals", "int",
         "intervals without a successful poll after which alerts are unknown (= hold)"),
    Flag("safety.allow-windows", "items",
         "windows outside which gated actions are held, ';'-separated on the command line: "
         "'Mon-Fri 09:00-17:00 Europe/Berlin' (none = always allowed)"),
    Flag("safety.deny-windows", "items",
         "windows inside which gated actions are held, e.g. 'Sat,Sun 00:00-24:00 UTC'"),
    Flag("host.disk-paths", "list", "comma-separated paths whose filesystems are watched"),
    Flag("log.level", "str", "debug, info, warning or error"),
    Flag("log.format", "str", "auto (console on a TTY, else JSON), json or console"),
    Flag("lbskew.iptables-save-command", "str", "iptables-save binary the lbskew collector runs"),
    Flag("lbskew.iptables-save-file", "optpath", "read nat rules from this file instead"),
    Flag("lbskew.rules-min-interval", "duration",
         "least time between two iptables-save runs; ticks in between reuse the parsed nat "
         "rules (0 = every tick; conntrack is still read every tick)"),
    Flag("lbskew.conntrack-command", "str", "conntrack binary, if no /proc/net/nf_conntrack"),
    Flag("lbskew.conntrack-cpu", "str",
         "average share of one core the full conntrack table walk may use, e.g. 0.1%: the walk "
         "repeats every (its CPU time / share) seconds, ticks in between reuse its counts "
         "(100% = every tick)"),
    Flag("lbskew.min-samples", "int", "connections a Service needs before its skew is tested"),
    Flag("peerclock.peers", "int", "peer agents whose clocks this agent measures (0 = none)"),
    Flag("peerclock.interval", "duration", "time between two clock exchanges with each peer"),
    Flag("peerclock.window", "int", "exchanges per peer of which the least-delay one is used"),
    Flag("peerclock.max-offset", "duration",
         "offset from the peer majority beyond which nodemedic_clock_majority_drifted is 1"),
    Flag("failover.enabled", "bool", "take part in failed-node detection and leader election"),
    Flag("failover.lease-namespace", "str", "namespace of the leader, heartbeat and cap Leases"),
    Flag("failover.node-grace", "duration", "node lease age before a node is suspect (k8s 40-50s)"),
    Flag("failover.probers", "int", "peers probing a suspect node besides the leader"),
    Flag("failover.probe-timeout", "duration", "time limit of one /healthz probe of a peer"),
    Flag("failover.max-unhealthy", "str", "unhealthy nodes (N or N%) above which nothing is done"),
    Flag("failover.max-unhealthy-zone", "str", "the same per topology zone of 3 or more nodes"),
    Flag("failover.fencing-time", "duration", "silence from all peers before out-of-service"),
    Flag("failover.fence-command", "list", "argv run with the node name; exit 0 = fenced"),
    Flag("failover.healthy-delay", "duration", "healthy time before nodemedic's taints are undone"),
    Flag("failover.max-concurrent", "int", "failed nodes remediated at once, cluster-wide"),
    Flag("failover.lease-duration", "duration", "leader Lease duration (renew deadline = 2/3)"),
    Flag("failover.retry-period", "duration", "leader renew / follower poll and probe period"),
    Flag("problems.dir", "path",
         "node problem definitions: NPD monitor JSON (unchanged) and nodemedic YAML; "
         "missing = problem detection off"),
    Flag("problems.plugin-dir", "optpath",
         "the only directory custom plugin checks may run from (unset = no plugins)"),
    Flag("problems.max-lines-per-second", "int",
         "log lines matched per second per source; above it lines are dropped and counted"),
    Flag("problems.heartbeat-interval", "duration",
         "how often unchanged problem conditions are re-published (lastHeartbeatTime)"),
)

_FLAG_BY_FIELD = {f.field: f for f in FLAGS}


def flag_default(flag: Flag) -> str:
    """Printable default of a flag (README table, --help)."""
    field = Settings.model_fields[flag.field]
    if field.default_factory is not None:
        return "hostname" if flag.field == "node_name" else ""
    value = field.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ("; " if flag.kind == "items" else ",").join(value)
    if flag.kind == "duration":
        return format_duration(value)
    return str(value)


def _convert(flag: Flag, raw: Any) -> Any:
    """Convert a string (flag/env) or YAML value to the field's type; ValueError on bad input."""
    if flag.kind == "duration":
        return parse_duration(raw)
    if flag.kind == "bool":
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be true or false")
    if flag.kind in ("list", "items"):
        if isinstance(raw, (list, tuple)):
            return tuple(str(x) for x in raw)
        sep = "," if flag.kind == "list" else ";"  # items may contain commas themselves
        return tuple(p.strip() for p in str(raw).split(sep) if p.strip())
    if flag.kind == "int":
        if isinstance(raw, bool):
            raise ValueError("must be an integer")
        return int(raw)
    if flag.kind == "optpath" and (raw is None or str(raw) == ""):
        return None
    if isinstance(raw, (dict, list)):
        raise ValueError("must be a single value")
    return str(raw)


def _kind_help(flag: Flag, exc: Exception) -> str:
    """Message for a value of the wrong type (ValueErrors already carry a good one)."""
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    expected = {"int": "an integer", "duration": "a duration like 10s", "bool": "true or false",
                "list": "a list", "items": "a list", "path": "a path", "optpath": "a path",
                "str": "a single value"}[flag.kind]
    return f"must be {expected}"


def build_parser(parser: argparse.ArgumentParser, collector_names: Sequence[str]) -> None:
    """Add every setting flag (and --collector.NAME / --no-collector.NAME) to ``parser``."""
    for flag in FLAGS:
        dest = f"s_{flag.field}"
        if flag.kind == "bool":
            parser.add_argument(
                f"--{flag.name}", dest=dest, action="store_const", const="true", default=None,
                help=f"{flag.help} (env {flag.env})".replace("%", "%%"),
            )
            parser.add_argument(
                f"--no-{flag.name}", dest=dest, action="store_const", const="false",
                help=argparse.SUPPRESS,
            )
        else:
            parser.add_argument(
                f"--{flag.name}", dest=dest, default=None, metavar=flag.kind.upper(),
                help=f"{flag.help} (default {flag_default(flag) or 'unset'}; env {flag.env})"
                .replace("%", "%%"),
            )
    for name in collector_names:
        parser.add_argument(
            f"--collector.{name}", dest=f"c_{name}", action="store_const", const=True,
            default=None, help=f"enable the {name} collector",
        )
        parser.add_argument(
            f"--no-collector.{name}", dest=f"c_{name}", action="store_const", const=False,
            help=f"disable the {name} collector",
        )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"--config={path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SettingsError(f"{path}{where}: invalid YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: must be a mapping of flag names to values")
    return data


def load_settings(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    collector_names: Sequence[str] = (),
    base_dir: Path | None = None,
) -> Settings:
    """Merge defaults < config file < environment < flags and validate the result."""
    env = os.environ if environ is None else environ
    flag_values: dict[str, Any] = {}
    collectors: Annotated[dict[str, bool], COLLECTORS] = {}
    if args is not None:
        for flag in FLAGS:
            v = getattr(args, f"s_{flag.field}", None)
            if v is not None:
                flag_values[flag.field] = v
        for name in collector_names:
            v = getattr(args, f"c_{name}", None)
            if v is not None:
                collectors[name] = bool(v)

    config_path_raw = flag_values.get("config") or env.get(_FLAG_BY_FIELD["config"].env)
    merged: dict[str, tuple[str, Any]] = {}  # field -> (source description, raw value)
    if config_path_raw:
        cfg_path = Path(config_path_raw)
        if base_dir is not None and not cfg_path.is_absolute():
            cfg_path = base_dir / cfg_path
        cfg = _read_config(cfg_path)
        for key, value in cfg.items():
            if not isinstance(key, str):
                raise SettingsError(f"{cfg_path}: {key!r}: keys must be setting names (strings)")
            known_flag = str(key).replace(".", "_").replace("-", "_") in _FLAG_BY_FIELD
            if key.startswith("collector.") and key.count(".") == 1 and not known_flag:
                name = key.split(".", 1)[1]
                if collector_names and name not in collector_names:
                    raise SettingsError(
                        f"{cfg_path}: {key}: unknown collector"
                        f"{did_you_mean(key, [f'collector.{n}' for n in collector_names])}; "
                        f"known: {', '.join(collector_names)}"
                    )
                if not isinstance(value, bool):
                    raise SettingsError(f"{cfg_path}: {key}: must be true or false")
                collectors.setdefault(name, value)
                continue
            field = str(key).replace(".", "_").replace("-", "_")
            if field not in _FLAG_BY_FIELD or field == "config":
                keys = [f.name for f in FLAGS if f.field != "config"]
                keys += [f"collector.{n}" for n in collector_names]
                raise SettingsError(
                    f"{cfg_path}: {key}: unknown setting{did_you_mean(key, keys)}; "
                    "see `nodemedic run --help`"
                )
            merged[field] = (f"{cfg_path}: {key}", value)
        merged["config"] = ("--config", str(cfg_path))
    _check_env_names(env, collector_names)
    for flag in FLAGS:
        if flag.env in env:
            merged[flag.field] = (f"${flag.env}", env[flag.env])
    for name in collector_names:
        key = f"{ENV_PREFIX}COLLECTOR_{name.upper()}"
        if key in env and name not in collectors:
            try:
                collectors[name] = _convert(Flag("x", "bool", ""), env[key])
            except ValueError as exc:
                raise SettingsError(f"${key}={env[key]!r}: {exc}") from exc
    for fld, raw in flag_values.items():
        merged[fld] = (f"--{_FLAG_BY_FIELD[fld].name}", raw)

    values: dict[str, Any] = {}
    for fld, (source, raw) in merged.items():
        flag = _FLAG_BY_FIELD[fld]
        try:
            values[fld] = _convert(flag, raw)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SettingsError(f"{source}={raw!r}: {_kind_help(flag, exc)}") from exc
    values["collectors"] = collectors
    try:
        return Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        fld = (cause.field if isinstance(cause, _Combination)
               else str(err["loc"][0]) if err["loc"] else "?")
        known = _FLAG_BY_FIELD.get(fld)
        source, raw = merged.get(fld, (f"--{known.name}" if known else fld, values.get(fld)))
        msg = _bounds_message(fld, str(err["type"])) or str(err["msg"]).removeprefix(
            "Value error, ")
        raise SettingsError(f"{source}={raw!r}: {msg}") from exc


def _check_env_names(env: Mapping[str, str], collector_names: Sequence[str]) -> None:
    """Refuse a NODEMEDIC_* variable that names no setting (a typo would be silently ignored)."""
    known = {f.env for f in FLAGS} | {f"{ENV_PREFIX}COLLECTOR_{n.upper()}" for n in collector_names}
    error = unknown_env_name(env, known, check_collectors=bool(collector_names))
    if error is not None:
        raise SettingsError(error)


def _bounds_message(field: str, error_type: str) -> str:
    """The range of a field whose value is out of bounds, in the field's units; else ""."""
    flag, info = _FLAG_BY_FIELD.get(field), Settings.model_fields.get(field)
    if not error_type.startswith(("greater_than", "less_than")) or flag is None or info is None:
        return ""
    return bounds_message(info.metadata, flag.kind == "duration")


def reload_mode(field: str, model: type[Settings] | None = None) -> ReloadMode:
    """How a change of Settings field ``field`` is applied on reload (``restart`` if undeclared)."""
    for meta in (model or Settings).model_fields[field].metadata:
        if isinstance(meta, OnReload):
            return meta.mode
    return "restart"


def display_value(field: str, value: Any) -> str:
    """A setting's value as a user writes it: a duration in its units (2m, not 120.0)."""
    flag = _FLAG_BY_FIELD.get(field)
    return as_written(value, flag is not None and flag.kind == "duration")


def flag_name(field: str) -> str:
    """The user-facing name of a Settings field (its flag name, or the field for ``collectors``)."""
    flag = _FLAG_BY_FIELD.get(field)
    return flag.name if flag is not None else field


def check_paths(settings: Settings) -> None:
    """Refuse settings naming paths that must exist (at start and on every reload)."""
    if not settings.rules_dir.is_dir():
        what = "is not a directory" if settings.rules_dir.exists() else "does not exist"
        raise SettingsError(
            f"--rules.dir={str(settings.rules_dir)!r}: {what}; the agent needs its rules "
            "directory (an empty directory means no rules, which is alerted on)"
        )


def settings_for_tests(**overrides: Any) -> Settings:
    """Defaults with field overrides, for unit tests and benchmarks.

    A test that only raises ``collector_timeout`` gets a collect interval long enough for it."""
    timeout = overrides.get("collector_timeout")
    if isinstance(timeout, (int, float)) and "collect_interval" not in overrides:
        overrides = {**overrides, "collect_interval": max(10.0, 2.0 * timeout)}
    return Settings(**overrides)

