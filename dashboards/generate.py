"""Generate nodemedic's Grafana dashboards (dashboards/*.json) from plain Python dicts.

Run ``python dashboards/generate.py`` after editing this file and commit the JSON it writes;
``--check`` exits 1 when a committed file differs (tests/unit/test_dashboards.py does the same).
The Prometheus integration test (tests/integration/test_prometheus_assets.py) imports
``dashboards()`` to evaluate every panel's PromQL against a real Prometheus.

Why plain dicts rather than a library: grafanalib has been unmaintained since 2024 and lags the
current panel schema; grafana-foundation-sdk is a large generated SDK, versioned per Grafana
release, that would become a dependency just to emit four files. The dashboard JSON model is
stable and documented, the helpers below are a few lines each, and the committed JSON stays a
readable, reviewable diff.

Conventions every panel follows (the integration and structure tests rely on them):
- the data source is the ``$datasource`` variable, so the JSON imports into any Grafana;
- every query selects ``job="nodemedic"`` and ``cluster=~"$cluster"``; node-level panels add
  ``instance=~"$node"`` (the scrape config sets ``instance`` to the node name, docs/install.md:
  a ``node`` target label would collide with the drain metrics' own ``node`` label);
- Grafana variables used in PromQL: $cluster, $node, $namespace, $service, $__rate_interval and
  $__range; nothing else.
"""

# PromQL stays on one line per query so it can be pasted into Grafana's editor as it is.
# ruff: noqa: E501

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Json = dict[str, Any]

OUT_DIR = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job="nodemedic",cluster=~"$cluster"'
NODE = SEL + ',instance=~"$node"'
RI = "$__rate_interval"


def target(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> Json:
    """One Prometheus query of a panel."""
    t: Json = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    options: Json | None = None,
    defaults: Json | None = None,
) -> Json:
    """A panel without id/position; ``Layout`` assigns both."""
    field_defaults: Json = {"unit": unit}
    field_defaults.update(defaults or {})
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": field_defaults, "overrides": []},
        "options": options or {},
        "gridPos": {"w": w, "h": h},
    }


def timeseries(title: str, description: str, *targets: Json, unit: str = "short",
               w: int = 12, stack: bool = False) -> Json:
    custom: Json = {"fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return panel(
        "timeseries", title, description, list(targets), unit=unit, w=w,
        options={"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                 "tooltip": {"mode": "multi", "sort": "desc"}},
        defaults={"custom": custom},
    )


def stat(title: str, description: str, *targets: Json, unit: str = "short", w: int = 4,
         thresholds: list[tuple[float | None, str]] | None = None,
         mappings: list[Json] | None = None) -> Json:
    steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
    return panel(
        "stat", title, description, list(targets), unit=unit, w=w, h=4,
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "colorMode": "background", "graphMode": "none", "textMode": "auto"},
        defaults={"thresholds": {"mode": "absolute", "steps": steps}, "mappings": mappings or []},
    )


def table(title: str, description: str, *targets: Json, unit: str = "short", w: int = 12,
          h: int = 8) -> Json:
    p = panel(
        "table", title, description, list(targets), unit=unit, w=w, h=h,
        options={"showHeader": True, "cellHeight": "sm",
                 "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
    )
    p["transformations"] = [
        {"id": "organize", "options": {"excludeByName": {"Time": True, "job": True}}}
    ]
    return p


def yes_no(zero: str, one: str) -> list[Json]:
    """Value mappings that show a 0/1 gauge as words."""
    return [{"type": "value", "options": {"0": {"text": zero, "index": 0},
                                          "1": {"text": one, "index": 1}}}]


class Layout:
    """Assigns panel ids and packs panels left to right, top to bottom on Grafana's 24 columns."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def add(self, *panels: Json) -> None:
        for p in panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if self.x + w > 24:
                self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
            p["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
            p["id"] = len(self.panels) + 1
            self.panels.append(p)
            self.x += w
            self.row_h = max(self.row_h, h)


def query_var(name: str, label: str, query: str, *, multi: bool = True) -> Json:
    """A Prometheus label_values() variable with an "All" option matching absent labels too."""
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": query, "definition": query, "refresh": 2, "sort": 1, "hide": 0,
        "includeAll": True, "allValue": ".*", "multi": multi,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "regex": "",
    }


def variables(*extra: Json) -> Json:
    base = [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "refresh": 1, "hide": 0, "regex": "", "current": {},
         "options": []},
        query_var("cluster", "Cluster", 'label_values(nodemedic_build_info{job="nodemedic"}, cluster)'),
        query_var("node", "Node",
                  'label_values(nodemedic_build_info{job="nodemedic",cluster=~"$cluster"}, instance)'),
    ]
    return {"list": base + list(extra)}


def dashboard(uid: str, title: str, description: str, layout: Layout,
              templating: Json | None = None) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["nodemedic"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "links": [{"type": "dashboards", "title": "nodemedic", "tags": ["nodemedic"],
                   "asDropdown": True, "includeVars": True, "keepTime": True}],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "templating": templating or variables(),
        "panels": layout.panels,
    }


def fleet() -> Json:
    lay = Layout()
    lay.add(
        stat("Agents up", "Agents Prometheus scraped successfully.",
             target(f'sum(up{{{SEL}}})')),
        stat("Agents down", "Agents whose last scrape failed (NodemedicAgentDown).",
             target(f'count(up{{{SEL}}} == 0) or vector(0)'),
             thresholds=[(None, "green"), (1, "red")]),
        stat("Nodes in dry-run", "Agents that gate actions but execute none (--dry-run).",
             target(f'sum(nodemedic_dry_run{{{SEL}}})'),
             thresholds=[(None, "green"), (1, "blue")]),
        stat("Cluster pause", "ConfigMap kube-system/nodemedic paused: \"true\".",
             target(f'max(nodemedic_paused{{{SEL},scope="cluster"}})'),
             thresholds=[(None, "green"), (1, "orange")], mappings=yes_no("running", "PAUSED")),
        stat("Nodes paused", "Nodes annotated nodemedic.io/paused=true.",
             target(f'sum(nodemedic_paused{{{SEL},scope="node"}})'),
             thresholds=[(None, "green"), (1, "orange")]),
        stat("Mass-failure protection", "The leader stopped node remediation: too many nodes failed.",
             target(f'max(nodemedic_mass_failure_protection_active{{{SEL}}})'),
             thresholds=[(None, "green"), (1, "red")], mappings=yes_no("off", "ENGAGED")),
    )
    lay.add(
        timeseries("Nodes by health (leader's view)",
                   "Peer nodes by state as classified by the elected leader.",
                   target(f'max by (state) (nodemedic_peer_nodes{{{SEL}}})', "{{state}}"),
                   stack=True),
        timeseries("Node Ready condition", "Nodes by the status of their Ready condition.",
                   target(f'count by (status) (nodemedic_node_condition{{{SEL},condition="Ready"}} == 1)',
                          "Ready={{status}}"),
                   stack=True),
        timeseries("Remediations over time", "Gated actions per interval by action and decision.",
                   target(f'sum by (action, decision) (increase(nodemedic_actions_total{{{SEL}}}[{RI}]))',
                          "{{action}} {{decision}}"),
                   stack=True),
        timeseries("Firing rules per node", "Rules in state firing (2) on each node.",
                   target(f'sum by (instance) (nodemedic_rule_state{{{SEL}}} == bool 2)', "{{instance}}")),
        timeseries("Cordoned nodes vs budget", "Nodes cordoned by nodemedic and the cluster budget.",
                   target(f'max(nodemedic_cordoned_nodes{{{SEL}}})', "cordoned"),
                   target(f'max(nodemedic_cordon_budget_limit{{{SEL}}})', "budget")),
        timeseries("Failing collectors", "Agents on which each collector failed its last tick.",
                   target(f'sum by (collector) (1 - nodemedic_collector_success{{{SEL}}})', "{{collector}}")),
        timeseries("Tick duration p99", "99th percentile of a whole collection tick, fleet-wide.",
                   target(f'histogram_quantile(0.99, sum by (le) (rate(nodemedic_tick_duration_seconds_bucket{{{SEL}}}[{RI}])))',
                          "p99"),
                   unit="s"),
        table("Agent versions", "Agents per nodemedic and Python version.",
              target(f'count by (version, python_version) (nodemedic_build_info{{{SEL}}})', instant=True)),
    )
    return dashboard("nodemedic-fleet", "nodemedic / Fleet overview",
                     "Agents, node health, remediation and safety state across the fleet.", lay)


def node() -> Json:
    lay = Layout()
    lay.add(
        stat("Kubelet", "Kubelet /healthz answered ok.", target(f'min(nodemedic_kubelet_up{{{NODE}}})'),
             thresholds=[(None, "red"), (1, "green")], mappings=yes_no("DOWN", "up")),
        stat("API server", "The agent can reach the API server.", target(f'min(nodemedic_api_up{{{NODE}}})'),
             thresholds=[(None, "red"), (1, "green")], mappings=yes_no("DOWN", "up")),
        stat("Clock", "NTP reports the host clock synchronized.",
             target(f'min(nodemedic_host_clock_synchronized{{{NODE}}})'),
             thresholds=[(None, "red"), (1, "green")], mappings=yes_no("UNSYNCED", "synced")),
        stat("Dry-run", "The agent executes no actions.", target(f'max(nodemedic_dry_run{{{NODE}}})'),
             thresholds=[(None, "green"), (1, "blue")], mappings=yes_no("acting", "dry-run")),
        stat("Node paused", "Annotation nodemedic.io/paused=true on this node.",
             target(f'max(nodemedic_paused{{{NODE},scope="node"}})'),
             thresholds=[(None, "green"), (1, "orange")], mappings=yes_no("no", "PAUSED")),
        stat("Lease age", "Seconds since this node's kubelet renewed its Lease.",
             target(f'max(nodemedic_node_lease_age_seconds{{{NODE}}})'), unit="s",
             thresholds=[(None, "green"), (40, "red")]),
    )
    lay.add(
        table("Node conditions", "Conditions currently true for each status.",
              target(f'nodemedic_node_condition{{{NODE}}} == 1', instant=True)),
        timeseries("Node problems", "Problem conditions nodemedic owns: 1 while true (docs/problems.md).",
                   target(f'max by (condition, reason) (nodemedic_problem_active{{{NODE}}})', "{{condition}} {{reason}}"),
                   w=6),
        timeseries("Problem log lines", "Lines read and matched per source, and drops by reason.",
                   target(f'sum by (source, outcome) (rate(nodemedic_problem_log_lines_total{{{NODE}}}[{RI}]))',
                          "{{source}} {{outcome}}"),
                   target(f'sum by (source, reason) (rate(nodemedic_problem_log_lines_dropped_total{{{NODE}}}[{RI}]))',
                          "{{source}} dropped {{reason}}", ref="B"),
                   w=6),
        timeseries("Kubelet health", "Kubelet /healthz latency and PLEG relist interval.",
                   target(f'nodemedic_kubelet_healthz_duration_seconds{{{NODE}}}', "healthz {{instance}}"),
                   target(f'nodemedic_kubelet_pleg_relist_interval_seconds{{{NODE}}}', "PLEG relist {{instance}}"),
                   unit="s"),
        timeseries("Pods by phase", "Pods the kubelet runs, by phase.",
                   target(f'sum by (phase) (nodemedic_kubelet_pods{{{NODE}}})', "{{phase}}"), stack=True),
        timeseries("Host memory available", "Memory available for new allocations without swapping.",
                   target(f'nodemedic_host_memory_available_bytes{{{NODE}}}', "{{instance}}"),
                   unit="bytes", w=6),
        timeseries("Host load", "1-minute load average.",
                   target(f'nodemedic_host_load1{{{NODE}}}', "{{instance}}"), w=6),
        timeseries("Filesystem space available", "Free share of each watched filesystem.",
                   target(f'nodemedic_host_filesystem_avail_bytes{{{NODE}}} '
                          f'/ nodemedic_host_filesystem_size_bytes{{{NODE}}}', "{{path}}"),
                   unit="percentunit", w=6),
        timeseries("Filesystem inodes free", "Free inodes of each watched filesystem.",
                   target(f'nodemedic_host_filesystem_files_free{{{NODE}}}', "{{path}}"), w=6),
        timeseries("Host pressure (PSI avg10)", "Share of time tasks stalled on each resource.",
                   target(f'nodemedic_host_pressure_avg10_ratio{{{NODE}}}', "{{resource}} {{kind}}"),
                   unit="percentunit"),
        timeseries("Clock offset", "Host clock offset reported by the time daemon.",
                   target(f'nodemedic_host_clock_offset_seconds{{{NODE}}}', "{{instance}}"), unit="s"),
        timeseries("Clock against peers",
                   "Peer agents' clocks minus this node's (NTP method over /healthz), and this "
                   "node's offset from the peer majority (positive: this node is ahead).",
                   target(f'nodemedic_peer_clock_offset_seconds{{{NODE}}}', "peer {{peer}}"),
                   target(f'nodemedic_clock_majority_offset_seconds{{{NODE}}}', "vs majority",
                          ref="B"),
                   unit="s"),
        timeseries("Memory working set / limit", "Containers' working set as a share of their limit.",
                   target(f'topk(20, nodemedic_container_memory_working_set_bytes{{{NODE},container!=""}} '
                          f'/ nodemedic_container_memory_limit_bytes{{{NODE},container!=""}})',
                          "{{namespace}}/{{pod}} {{container}}"),
                   unit="percentunit"),
        timeseries("Memory working set by pod", "Pods' memory working set.",
                   target(f'topk(20, sum by (namespace, pod) (nodemedic_container_memory_working_set_bytes{{{NODE},container!=""}}))',
                          "{{namespace}}/{{pod}}"),
                   unit="bytes"),
        timeseries("OOM kills", "Container OOM kills per interval.",
                   target(f'sum by (namespace, pod, container) (increase(nodemedic_container_oom_kills_total{{{NODE},container!=""}}[{RI}]))',
                          "{{namespace}}/{{pod}} {{container}}"),
                   stack=True),
        timeseries("CPU usage by pod", "CPU cores used by each pod.",
                   target(f'topk(20, sum by (namespace, pod) (rate(nodemedic_container_cpu_usage_seconds_total{{{NODE},container!=""}}[{RI}])))',
                          "{{namespace}}/{{pod}}")),
        timeseries("CPU throttled periods", "Share of CFS periods in which each container was throttled.",
                   target(f'sum by (namespace, pod, container) (rate(nodemedic_container_cpu_cfs_throttled_periods_total{{{NODE},container!=""}}[{RI}])) '
                          f'/ sum by (namespace, pod, container) (rate(nodemedic_container_cpu_cfs_periods_total{{{NODE},container!=""}}[{RI}]))',
                          "{{namespace}}/{{pod}} {{container}}"),
                   unit="percentunit"),
        timeseries("CPU usage / quota", "Containers' CPU use as a share of their CFS quota.",
                   target(f'sum by (namespace, pod, container) (rate(nodemedic_container_cpu_usage_seconds_total{{{NODE},container!=""}}[{RI}])) '
                          f'/ sum by (namespace, pod, container) (nodemedic_container_cpu_quota_cores{{{NODE},container!=""}})',
                          "{{namespace}}/{{pod}} {{container}}"),
                   unit="percentunit"),
        timeseries("Pod pressure (PSI some avg10)", "Pods whose tasks stall most, by resource.",
                   target(f'topk(10, nodemedic_container_pressure_avg10_ratio{{{NODE},container="",kind="some"}})',
                          "{{namespace}}/{{pod}} {{resource}}"),
                   unit="percentunit"),
        timeseries("Rule states", "0 inactive, 1 pending, 2 firing, per rule on this node.",
                   target(f'max by (rule) (nodemedic_rule_state{{{NODE}}})', "{{rule}}")),
        timeseries("Collector duration", "Wall time of each collector in the last tick.",
                   target(f'max by (collector) (nodemedic_collector_duration_seconds{{{NODE}}})', "{{collector}}"),
                   unit="s"),
    )
    return dashboard("nodemedic-node", "nodemedic / Node detail",
                     "One node: kubelet, host, per-pod memory, OOM kills, throttling and pressure.", lay)


def remediation() -> Json:
    lay = Layout()
    lay.add(
        timeseries("Actions by rule, decision and outcome", "Every gated action per interval.",
                   target(f'sum by (rule, action, decision, outcome) (increase(nodemedic_actions_total{{{SEL}}}[{RI}]))',
                          "{{rule}} {{action}} {{decision}}/{{outcome}}"),
                   w=24, stack=True),
        table("Actions in the time range", "Totals over the dashboard's time range, per node.",
              target(f'sum by (instance, rule, action, decision, outcome) (increase(nodemedic_actions_total{{{SEL}}}[$__range])) > 0',
                     instant=True),
              w=24),
        timeseries("Denied actions by rule and reason", "Requests the safety gate refused, and why.",
                   target(f'sum by (rule, action, reason) (increase(nodemedic_actions_denied_total{{{SEL}}}[{RI}]))',
                          "{{rule}} {{action}}: {{reason}}")),
        timeseries("Cordon budget usage", "Nodes cordoned by nodemedic against the budget.",
                   target(f'max(nodemedic_cordoned_nodes{{{SEL}}})', "cordoned"),
                   target(f'max(nodemedic_cordon_budget_limit{{{SEL}}})', "budget"),
                   target(f'max by (instance) (nodemedic_disruptive_actions_last_hour{{{SEL}}})',
                          "disruptive last hour {{instance}}")),
        table("Leader", "The agent holding the leader lease (runs cluster-scoped actions).",
              target(f'nodemedic_leader{{{SEL}}} == 1', instant=True), w=8),
        timeseries("Pause switches", "Cluster-wide and per-node pause.",
                   target(f'nodemedic_paused{{{SEL}}} > 0', "{{scope}} {{instance}}"), w=8),
        timeseries("Mass-failure protection", "1 while the leader refuses node remediation.",
                   target(f'max(nodemedic_mass_failure_protection_active{{{SEL}}})', "active"), w=8),
        timeseries("Alert gate, windows, freeze",
                   "What holds gated actions (docs/gates.md): the alert gate's state per node "
                   "(firing or unknown hold), whether the global windows are open, a freeze.",
                   target(f'max by (instance, state) (nodemedic_alert_gate_state{{{SEL}}} == 1)',
                          "alert gate {{state}} {{instance}}"),
                   target(f'min by (instance) (nodemedic_maintenance_window_open{{{SEL}}})',
                          "window open {{instance}}"),
                   target(f'max(nodemedic_freeze_active{{{SEL}}})', "freeze"), w=8),
        timeseries("Drains in progress", "Pods left on nodes being drained.",
                   target(f'max by (node) (nodemedic_drain_pods_remaining{{{SEL}}})', "{{node}}")),
        timeseries("Drain age", "Time since each running drain started.",
                   target(f'max by (node) (time() - nodemedic_drain_started_timestamp_seconds{{{SEL}}})', "{{node}}"),
                   unit="s"),
        timeseries("Rule evaluations", "Rule evaluations per second, by rule.",
                   target(f'sum by (rule) (rate(nodemedic_rule_evaluations_total{{{SEL}}}[{RI}]))', "{{rule}}"),
                   unit="ops"),
        timeseries("Rules loaded and reloads", "Rules loaded per node; reload failures per interval.",
                   target(f'nodemedic_rules_loaded{{{SEL}}}', "loaded {{instance}}"),
                   target(f'increase(nodemedic_rules_reload_failures_total{{{SEL}}}[{RI}])', "reload failures {{instance}}")),
    )
    return dashboard("nodemedic-remediation", "nodemedic / Remediation audit",
                     "What nodemedic decided and did, why, and the safety budgets around it.", lay)


def skew() -> Json:
    svc = SEL + ',instance=~"$node",namespace=~"$namespace",service=~"$service"'
    lay = Layout()
    lay.add(
        table("Worst Services", "Services with the highest busiest-endpoint / mean ratio.",
              target(f'topk(20, max by (namespace, service, port) (nodemedic_service_skew_max_mean_ratio{{{SEL}}}))',
                     instant=True),
              w=24),
        timeseries("Max / mean connections", "Busiest endpoint's connections over the mean (1 = even).",
                   target(f'nodemedic_service_skew_max_mean_ratio{{{svc}}}', "{{namespace}}/{{service}}:{{port}} {{instance}}")),
        timeseries("Coefficient of variation", "Spread of connections across endpoints.",
                   target(f'nodemedic_service_skew_cv{{{svc}}}', "{{namespace}}/{{service}}:{{port}} {{instance}}")),
        timeseries("Chi-squared p-value", "Chance of this spread under the expected shares (low = real skew).",
                   target(f'nodemedic_service_skew_chi2_p_value{{{svc}}}', "{{namespace}}/{{service}}:{{port}} {{instance}}")),
        timeseries("Connections", "Tracked connections to each Service.",
                   target(f'nodemedic_service_connections{{{svc}}}', "{{namespace}}/{{service}}:{{port}} {{instance}}")),
        timeseries("Connections per endpoint", "Per-endpoint spread of each selected Service.",
                   target(f'sum by (namespace, service, port, endpoint, pod) (nodemedic_service_endpoint_connections{{{svc}}})',
                          "{{service}} {{endpoint}} ({{pod}})"),
                   stack=True),
        timeseries("Observed vs expected share", "Endpoint's share of connections minus its expected share.",
                   target(f'sum by (namespace, service, port, endpoint) (nodemedic_service_endpoint_connections{{{svc}}}) '
                          f'/ on (namespace, service, port) group_left sum by (namespace, service, port) (nodemedic_service_endpoint_connections{{{svc}}}) '
                          f'- on (namespace, service, port, endpoint) max by (namespace, service, port, endpoint) (nodemedic_service_endpoint_expected_share{{{svc}}})',
                          "{{service}} {{endpoint}}"),
                   unit="percentunit"),
        timeseries("Bytes per endpoint", "Bytes per second through each endpoint.",
                   target(f'sum by (namespace, service, port, endpoint) (rate(nodemedic_service_endpoint_bytes_total{{{svc}}}[{RI}]))',
                          "{{service}} {{endpoint}}"),
                   unit="Bps"),
        table("kube-proxy chain problems", "Problems found in the Service's iptables/IPVS chains.",
              target(f'nodemedic_service_chain_problems{{{svc}}} > 0', instant=True)),
    )
    extra = [
        query_var("namespace", "Namespace",
                  'label_values(nodemedic_service_connections{job="nodemedic",cluster=~"$cluster"}, namespace)'),
        query_var("service", "Service",
                  'label_values(nodemedic_service_connections{job="nodemedic",cluster=~"$cluster",namespace=~"$namespace"}, service)'),
    ]
    return dashboard("nodemedic-service-skew", "nodemedic / Service skew",
                     "Services whose connections are unevenly spread over their endpoints.", lay,
                     variables(*extra))


def dashboards() -> dict[str, Json]:
    """File name -> dashboard, for writing and for the tests."""
    return {
        "fleet-overview.json": fleet(),
        "node-detail.json": node(),
        "remediation-audit.json": remediation(),
        "service-skew.json": skew(),
    }


def queries() -> list[tuple[str, str, str]]:
    """(file name, panel title, PromQL) of every panel target, for the tests."""
    return [
        (name, p["title"], t["expr"])
        for name, board in dashboards().items()
        for p in board["panels"]
        for t in p["targets"]
    ]


def render(board: Json) -> str:
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args(argv)
    stale = []
    for name, board in dashboards().items():
        path = args.out / name
        text = render(board)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
