"""``nodemedic replay``: recorded Prometheus data through the real rules engine and safety gate.

Modules: promql (fetch the series per node), sim (the in-process fake cluster and the stage
that replays decisions without executing them), timeline (step through the window, build the
records), render (text and JSON), command (the subcommand, registered by agent.cli).
"""
