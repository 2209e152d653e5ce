"""Fault injection and request accounting for the in-memory API server.

Used by nodemedic_sim.apiserver.server's middleware on every request. Tests arm faults through
``ApiServer.faults`` (latency, the next N matching requests failing with a status code);
benchmarks read ``ApiServer.requests`` to report API load by verb, resource and client.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class _Failure:
    code: int
    remaining: int
    verb: str | None
    resource: str | None
    client: str | None = None

    def matches(self, verb: str, resource: str, client: str | None) -> bool:
        return (
            (self.verb is None or self.verb == verb)
            and (self.resource is None or self.resource == resource)
            and (self.client is None or self.client == client)
        )


@dataclass
class Faults:
    """Armed faults. ``latency`` (seconds) delays every request before it is served."""

    latency: float = 0.0
    latency_by_verb: dict[str, float] = field(default_factory=dict)
    _failures: list[_Failure] = field(default_factory=list)

    def fail(
        self,
        count: int,
        code: int = 500,
        *,
        verb: str | None = None,
        resource: str | None = None,
        client: str | None = None,
    ) -> None:
        """Make the next ``count`` requests matching ``verb``/``resource`` fail with ``code``.

        ``verb`` is a Kubernetes verb (get, list, watch, create, update, patch, delete) and
        ``resource`` the server's exact name for it: the plural, followed by its API group unless
        it is a core resource, and an optional subresource ("pods", "pods/eviction",
        "nodes/status", "events" (core/v1 only), "leases.coordination.k8s.io"). A bare "leases"
        matches nothing. ``client`` is the first word of the request's User-Agent, so a test can
        aim failures at one of several agents sharing the server (a straggling request from
        another agent would otherwise consume them).
        """
        self._failures.append(_Failure(code, count, verb, resource, client))

    def pending(self) -> int:
        """How many armed failures have not been served yet (0 once every one fired)."""
        return sum(f.remaining for f in self._failures)

    def take(self, verb: str, resource: str, client: str | None = None) -> int | None:
        """Consume one armed failure matching this request; returns its code or None."""
        for f in self._failures:
            if f.remaining > 0 and f.matches(verb, resource, client):
                f.remaining -= 1
                if f.remaining == 0:
                    self._failures.remove(f)
                return f.code
        return None

    def delay_for(self, verb: str) -> float:
        return self.latency_by_verb.get(verb, self.latency)

    def clear(self) -> None:
        """Disarm every fault."""
        self.latency = 0.0
        self.latency_by_verb.clear()
        self._failures.clear()


@dataclass
class RequestLog:
    """Counts of served requests by (verb, resource, client) and their summed service time."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    seconds: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def started(self, verb: str, resource: str, client: str) -> tuple[str, str, str]:
        """Count a request as soon as it arrives (a watch counts while it is still open)."""
        key = (verb, resource, client)
        self.counts[key] += 1
        return key

    def finished(self, key: tuple[str, str, str], elapsed: float) -> None:
        """Add the time the request took (for a watch: how long it stayed open)."""
        self.seconds[key] = self.seconds.get(key, 0.0) + elapsed

    def count(
        self, verb: str | None = None, resource: str | None = None, client: str | None = None
    ) -> int:
        """Number of requests matching every given filter (None = any)."""
        return sum(
            n
            for (v, r, c), n in self.counts.items()
            if (verb is None or v == verb)
            and (resource is None or r == resource)
            and (client is None or c == client)
        )

    def by_verb_resource(self) -> dict[str, int]:
        """``"verb resource" -> count`` over all clients (bench reports)."""
        out: Counter[str] = Counter()
        for (v, r, _c), n in self.counts.items():
            out[f"{v} {r}"] += n
        return dict(sorted(out.items()))

    def clear(self) -> None:
        self.counts.clear()
        self.seconds.clear()
