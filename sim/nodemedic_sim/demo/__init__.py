"""``nodemedic demo``: a simulated cluster with one agent per node, to watch failover work.

agent.cli imports this package and calls ``add_parser(subparsers)``; the heavy parts
(nodemedic_sim.demo.cluster, nodemedic_sim.demo.fleet) are imported only when the demo runs.
"""

from nodemedic_sim.demo.command import add_parser

__all__ = ["add_parser"]
