"""The agent's Kubernetes API layer: the only package that imports kubernetes_asyncio.

agent.kube.client builds the shared ApiClient; the other modules (nodes, pods, events,
configmaps, ...) wrap the calls the collectors, actions and safety gate make.
"""
