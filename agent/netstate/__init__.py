"""Parsers and statistics for this node's Service load-balancing state.

Used by agent.collectors.lbskew: ``conntrack`` aggregates connection-tracking entries,
``ctstats`` reads the table's size and kernel counters and spaces the full walks,
``iptables`` parses and audits kube-proxy's nat chains, ``ipvs`` parses /proc/net/ip_vs, and
``skew`` computes skew indices and a chi-square test over per-endpoint counts.
"""
