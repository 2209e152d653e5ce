"""``nodemedic demo``: a simulated cluster with one agent per node, to watch failover work."""
