"""nodemedic: node-local Kubernetes health agent and autoremediation daemon.

The import package is ``agent``; the console script ``nodemedic`` (agent.cli) is the entry point.
"""

__version__ = "0.1.0"
