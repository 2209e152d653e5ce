"""Parsers and statistics for this node's Service load-balancing state (no I/O of their own).

Used by agent.collectors.lbskew: ``conntrack`` aggregates connection-tracking entries,
``iptables`` parses and audits kube-proxy's nat chains, ``ipvs`` parses /proc/net/ip_vs, and
``skew`` computes skew indices and a chi-square test over per-endpoint counts.
"""
