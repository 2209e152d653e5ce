"""nodemedic's simulation: the in-memory Kubernetes API server, the fake kubelet, the demo, replay.

A separate distribution (``nodemedic-sim``, installed by the ``nodemedic[sim]`` extra or
``pip install -e ./sim`` from a checkout) so that a node's install of nodemedic ships none of it.
Subpackages: apiserver (the in-memory API server and ``nodemedic apiserver``), demo
(``nodemedic demo``), replay (``nodemedic replay``: recorded Prometheus data through the real rules
engine and safety gate against an in-process fake cluster), fake_kubelet, kueue (Kueue's view of a
failed node, for the failover tests) and pytest_plugin (the ``apiserver`` and ``kube_api``
fixtures). It imports agent; agent never imports it (.importlinter): agent.cli finds its
subcommands by module name and says "install nodemedic[sim]" when it is absent.
"""
