"""How each setting is spelled outside: flags, environment variables, config keys, defaults.

Read by agent.settings (loading; it re-exports what the docs and the reload code use). Every
setting is declared once in ``FLAGS`` (name, kind, help); the Settings field, the environment
variable (``NODEMEDIC_`` + the field upper-cased) and the config-file key are derived from it.
``convert`` turns a string (flag, environment) or YAML value into the field's type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from agent.settings.model import OnReload, ReloadMode, Settings
from agent.settings_text import ENV_PREFIX, as_written, bounds_message
from agent.structs.durations import format_duration, parse_duration


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
    Flag("kubelet.summary-min-interval", "duration",
         "least time between two reads of the kubelet's /stats/summary (~3.5 KB per pod to "
         "decode, and the kubelet's own stats work); ticks in between re-serve its families "
         "(default 30s, as --cgroup.min-interval; 0 = every tick)"),
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
    Flag("failover.node-grace", "duration",
         "node lease age before a node is suspect (k8s 40-50s; at least twice the kubelet's "
         "10s Lease renewal)"),
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

FLAG_BY_FIELD = {f.field: f for f in FLAGS}


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


def convert(flag: Flag, raw: Any) -> Any:
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


def kind_help(flag: Flag, exc: Exception) -> str:
    """Message for a value of the wrong type (ValueErrors already carry a good one)."""
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    expected = {"int": "an integer", "duration": "a duration like 10s", "bool": "true or false",
                "list": "a list", "items": "a list", "path": "a path", "optpath": "a path",
                "str": "a single value"}[flag.kind]
    return f"must be {expected}"


def bounds_message_of(field: str, error_type: str) -> str:
    """The range of a field whose value is out of bounds, in the field's units; else ""."""
    flag, info = FLAG_BY_FIELD.get(field), Settings.model_fields.get(field)
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
    flag = FLAG_BY_FIELD.get(field)
    return as_written(value, flag is not None and flag.kind == "duration")


def flag_name(field: str) -> str:
    """The user-facing name of a Settings field (its flag name, or the field for ``collectors``)."""
    flag = FLAG_BY_FIELD.get(field)
    return flag.name if flag is not None else field
