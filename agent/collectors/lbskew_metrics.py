"""The metric families of the ``lbskew`` collector (agent.collectors.lbskew).

Declared once here; the collector exports ``METRICS`` in this order, and agent.collectors.lbskew
marks ``CONNTRACK_METRICS`` / ``SERVICE_METRICS`` unreadable when their source is refused to us.
"""

from __future__ import annotations

from agent.structs.metrics import MetricSpec

SVC = ("namespace", "service", "port")
EP = (*SVC, "endpoint", "pod")

ENDPOINT_CONNECTIONS = MetricSpec(
    "nodemedic_service_endpoint_connections",
    "Active connections (ESTABLISHED/SYN or UDP) kube-proxy sent to this endpoint "
    "(conntrack; IPVS ActiveConn)",
    "gauge",
    EP,
)
ENDPOINT_ENTRIES = MetricSpec(
    "nodemedic_service_endpoint_conntrack_entries",
    "All conntrack entries to this endpoint, including TIME_WAIT: recent endpoint choices",
    "gauge",
    EP,
)
ENDPOINT_BYTES = MetricSpec(
    "nodemedic_service_endpoint_bytes_total",
    "Bytes (both directions) through this endpoint, summed from growth of live conntrack "
    "entries; needs nf_conntrack_acct=1",
    "counter",
    EP,
)
EXPECTED_SHARE = MetricSpec(
    "nodemedic_service_endpoint_expected_share",
    "Share of new connections the rules give this endpoint (chain probabilities, IPVS weights)",
    "gauge",
    (*SVC, "endpoint"),
)
SERVICE_CONNECTIONS = MetricSpec(
    "nodemedic_service_connections",
    "Active connections to this Service port over all its endpoints",
    "gauge",
    SVC,
)
MAX_MEAN = MetricSpec(
    "nodemedic_service_skew_max_mean_ratio",
    "Most loaded endpoint's connections over its fair share (1 = even)",
    "gauge",
    SVC,
)
CV = MetricSpec(
    "nodemedic_service_skew_cv",
    "Coefficient of variation of the endpoints' load relative to their fair share (0 = even)",
    "gauge",
    SVC,
)
CHI2_P = MetricSpec(
    "nodemedic_service_skew_chi2_p_value",
    "Chi-square p-value of the observed connections against the rules' expected shares "
    "(small = traffic does not follow the rules; 1 when samples are too few)",
    "gauge",
    SVC,
)
FAIR_P = MetricSpec(
    "nodemedic_service_skew_fair_chi2_p_value",
    "Chi-square p-value of the observed connections against fair shares "
    "(small = uneven, whatever the cause; 1 when samples are too few)",
    "gauge",
    SVC,
)
SUFFICIENT = MetricSpec(
    "nodemedic_service_skew_samples_sufficient",
    "1 when the Service has enough connections for the skew test (--lbskew.min-samples and "
    ">= 5 expected per endpoint)",
    "gauge",
    SVC,
)
SKEWED = MetricSpec(
    "nodemedic_service_skewed",
    "1 when enough samples, max/mean ratio >= 1.5 and the fair-share test rejects at 0.001",
    "gauge",
    SVC,
)
CHAIN_PROBLEMS = MetricSpec(
    "nodemedic_service_chain_problems",
    "Endpoints affected by a problem of the kube-proxy chain (unequal_shares, "
    "unreachable_endpoint, fallthrough, missing_dnat, no_endpoints, stale_endpoint); "
    "absent when none",
    "gauge",
    (*SVC, "problem"),
)
SERVICE_INFO = MetricSpec(
    "nodemedic_service_lb_info",
    "Where a Service port's load balancing was read: VIP, protocol, mode (iptables/ipvs), "
    "chain and where its name came from",
    "info",
    (*SVC, "vip", "protocol", "mode", "chain", "name_source"),
)
SOURCE_INFO = MetricSpec(
    "nodemedic_lbskew_source_info",
    "Which kernel sources the lbskew collector read this tick (none = unavailable)",
    "info",
    ("rules", "conntrack", "ipvs", "names"),
)
CONNTRACK_ENTRIES = MetricSpec(
    "nodemedic_lbskew_conntrack_entries",
    "conntrack entries parsed in the last tick",
    "gauge",
)
SKIPPED_LINES = MetricSpec(
    "nodemedic_lbskew_skipped_lines",
    "Input lines skipped in the last tick, by source and reason",
    "gauge",
    ("source", "reason"),
)
DROPPED_ENTRIES = MetricSpec(
    "nodemedic_lbskew_conntrack_dropped_entries",
    "DNAT conntrack entries not aggregated in the last tick because the key bound was reached",
    "gauge",
)
ACCOUNTING = MetricSpec(
    "nodemedic_lbskew_conntrack_accounting",
    "1 when conntrack entries carry byte counters (net.netfilter.nf_conntrack_acct=1)",
    "gauge",
)
BYTE_SERIES_DROPPED = MetricSpec(
    "nodemedic_lbskew_byte_series_dropped",
    "Endpoint byte counters not exported in the last tick because MAX_BYTE_SERIES (65,536) "
    "endpoints already had one",
    "gauge",
)
TABLE_ENTRIES = MetricSpec(
    "nodemedic_conntrack_entries",
    "Entries in the conntrack table (nf_conntrack_count), read every tick",
    "gauge",
)
TABLE_LIMIT = MetricSpec(
    "nodemedic_conntrack_entries_limit",
    "Most entries the conntrack table holds (nf_conntrack_max); new connections are dropped "
    "beyond it",
    "gauge",
)
KERNEL_EVENTS = MetricSpec(
    "nodemedic_conntrack_kernel_events_total",
    "The kernel's conntrack counters of /proc/net/stat/nf_conntrack summed over CPUs (drop and "
    "early_drop: table full; insert_failed: races; invalid: untrackable packets)",
    "counter",
    ("event",),
)
WALK_AGE = MetricSpec(
    "nodemedic_lbskew_conntrack_walk_age_seconds",
    "Age of the conntrack table walk the per-endpoint counts come from (walks repeat as often "
    "as --lbskew.conntrack-cpu allows)",
    "gauge",
)
WALK_CPU = MetricSpec(
    "nodemedic_lbskew_conntrack_walk_cpu_seconds",
    "CPU time (user + system; wall time for the conntrack command) of the last table walk",
    "gauge",
)
RULES_AGE = MetricSpec(
    "nodemedic_lbskew_rules_age_seconds",
    "Seconds since the nat rules in use were read (iptables-save runs at most every "
    "--lbskew.rules-min-interval; the file source is re-read when its stat changes)",
    "gauge",
)
RULES_STALE = MetricSpec(
    "nodemedic_lbskew_rules_stale",
    "1 when refreshing the nat rules failed and older rules are in use",
    "gauge",
)
SLICES = MetricSpec(
    "nodemedic_lbskew_endpointslices",
    "EndpointSlices held in the lbskew name cache",
    "gauge",
)
SLICES_DROPPED = MetricSpec(
    "nodemedic_lbskew_endpointslices_dropped_total",
    "EndpointSlices not cached because the cache was full",
    "counter",
)

# The metrics conntrack feeds (connections, bytes, skew), and every per-Service metric (IPVS
# mode reads them all from /proc/net/ip_vs): missing data when that source is refused to us.
CONNTRACK_METRICS = (
    ENDPOINT_CONNECTIONS, ENDPOINT_ENTRIES, ENDPOINT_BYTES, SERVICE_CONNECTIONS, MAX_MEAN, CV,
    CHI2_P, FAIR_P, SUFFICIENT, SKEWED, CONNTRACK_ENTRIES, DROPPED_ENTRIES, ACCOUNTING,
    BYTE_SERIES_DROPPED,
)
SERVICE_METRICS = (*CONNTRACK_METRICS, EXPECTED_SHARE, CHAIN_PROBLEMS, SERVICE_INFO)

METRICS = (
    ENDPOINT_CONNECTIONS,
    ENDPOINT_ENTRIES,
    ENDPOINT_BYTES,
    EXPECTED_SHARE,
    SERVICE_CONNECTIONS,
    MAX_MEAN,
    CV,
    CHI2_P,
    FAIR_P,
    SUFFICIENT,
    SKEWED,
    CHAIN_PROBLEMS,
    SERVICE_INFO,
    SOURCE_INFO,
    CONNTRACK_ENTRIES,
    SKIPPED_LINES,
    DROPPED_ENTRIES,
    BYTE_SERIES_DROPPED,
    ACCOUNTING,
    TABLE_ENTRIES,
    TABLE_LIMIT,
    KERNEL_EVENTS,
    WALK_AGE,
    WALK_CPU,
    RULES_AGE,
    RULES_STALE,
    SLICES,
    SLICES_DROPPED,
)
