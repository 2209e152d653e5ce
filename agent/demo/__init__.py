"""``nodemedic demo``: a simulated cluster with one agent per node, to watch failover work.

agent.cli imports this package and calls ``add_parser(subparsers)``; the heavy parts
(agent.demo.cluster, agent.demo.fleet) are imported only when the demo runs.
"""

from agent.demo.command import add_parser

__all__ = ["add_parser"]
