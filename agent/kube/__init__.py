"""The agent's Kubernetes API layer: the only package that imports kubernetes_asyncio.

agent.kube.client builds the shared ApiClient; the other modules (nodes, pods, events,
configmaps, ...) wrap the calls the collectors, actions and safety gate make. Importing this
package first installs agent.kube.lazy, so kubernetes_asyncio loads only the API classes and
helpers these modules touch, not its ~770 models.
"""

from agent.kube import lazy as _lazy

_lazy.install()
