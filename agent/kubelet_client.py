"""HTTP client for the node's kubelet: /healthz, /pods, /stats/summary and /metrics.

Created once by agent.runtime.components (``KubeletClient.from_settings``) and shared through
``ctx.kubelet``; used by the ``kubelet`` collector (health, stats, PLEG) and the
``cgroup`` collector (``pods()`` for UID -> namespace/name attribution). Collectors built alone
(tests, benchmarks) call :func:`get_or_create`.

Why it looks like this:
- one aiohttp session with a total timeout shorter than the collector timeout, so a hung kubelet
  is reported by the collector as "down" instead of the whole collector timing out;
- responses are read in chunks and refused past ``max_body_bytes`` (a misbehaving endpoint must not
  exhaust the agent's memory); refusals are counted;
- errors that mean *our* access failed (401, 403, TLS verification, unreadable token or CA file)
  carry ``cannot_see`` (an agent.collectors.base.CANNOT_SEE_REASONS word): the collector turns them
  into missing data, never into "kubelet down"; refused connections and timeouts stay errors;
- the bearer token is re-read whenever its file changes (projected service-account tokens rotate
  by an atomic symlink swap, so the inode changes);
- JSON and pod-list parsing of big bodies runs in a worker thread (/stats/summary is MBs);
- ``pods()`` fetches /pods at most once per ``pods_max_age`` however many collectors ask at once;
  ``pods_generation`` changes whenever the body does (the ``cgroup`` collector re-reads the
  limit files of its cgroups then: pod resizes show in /pods).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import aiohttp

from agent.structs.durations import format_duration
from agent.structs.metrics import Family, MetricSpec
from agent.structs.pods import PodRef

if TYPE_CHECKING:
    from agent.collectors.base import CollectorContext
    from agent.settings import Settings

DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024 * 1024
# Bodies smaller than this are parsed inline: a thread hop costs more than parsing a few KiB.
_INLINE_PARSE_BYTES: Final = 64 * 1024
_CHUNK: Final = 256 * 1024

T = TypeVar("T")

# Endpoint label values are a fixed set so the request counter cannot grow without bound.
_ENDPOINTS: Final = {
    "/healthz": "healthz",
    "/pods": "pods",
    "/stats/summary": "stats_summary",
    "/metrics": "metrics",
    "/metrics/cadvisor": "metrics_cadvisor",
    "/metrics/resource": "metrics_resource",
}

CLIENT_REQUESTS = MetricSpec(
    "nodemedic_kubelet_client_requests_total",
    "Requests this agent made to the kubelet, by endpoint and outcome (ok, http_error, "
    "unauthorized, forbidden, tls, timeout, connection_error, too_large, bad_body, token_error, "
    "config_error).",
    "counter",
    ("endpoint", "outcome"),
)
CLIENT_POD_CACHE_HITS = MetricSpec(
    "nodemedic_kubelet_client_pods_cache_hits_total",
    "pods() calls answered from the per-tick cache instead of a new /pods request.",
    "counter",
)
CLIENT_METRICS: Final = (CLIENT_REQUESTS, CLIENT_POD_CACHE_HITS)


class KubeletError(Exception):
    """The kubelet could not be asked or answered badly; the message says which and why.

    ``cannot_see`` is set (unauthorized, forbidden, tls, permission) when the failure is the
    agent's own access, which says nothing about the kubelet's health."""

    outcome = "connection_error"
    cannot_see: str | None = None


class KubeletHTTPError(KubeletError):
    """The kubelet answered with a non-2xx status."""

    outcome = "http_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class KubeletUnauthorized(KubeletHTTPError):
    """401: the bearer token is missing, wrong or expired."""

    outcome = "unauthorized"
    cannot_see = "unauthorized"


class KubeletForbidden(KubeletUnauthorized):
    """403: the token is valid but lacks the RBAC rights (nodes/proxy, nodes/stats, ...)."""

    outcome = "forbidden"
    cannot_see = "forbidden"


class KubeletTLSError(KubeletError):
    """The kubelet's certificate did not verify against our CA (wrong --kubelet.ca-file,
    hostname mismatch, expired certificate): we cannot trust what it would say."""

    outcome = "tls"
    cannot_see = "tls"


class KubeletTimeout(KubeletError):
    outcome = "timeout"


class KubeletResponseTooLarge(KubeletError):
    outcome = "too_large"


class KubeletBadBody(KubeletError):
    """The body is not what the endpoint should return (invalid JSON, wrong shape)."""

    outcome = "bad_body"


class KubeletTokenError(KubeletError):
    """The token file cannot be read: we cannot authenticate."""

    outcome = "token_error"

    def __init__(self, message: str, *, permission: bool = False) -> None:
        super().__init__(message)
        self.cannot_see = "permission" if permission else "unauthorized"


class KubeletConfigError(KubeletError):
    """The client's own TLS configuration (CA file) cannot be loaded."""

    outcome = "config_error"
    cannot_see = "tls"


@dataclass(frozen=True, slots=True)
class PodDetail:
    """A pod from /pods with what the ``kubelet`` collector reports beyond :class:`PodRef`."""

    ref: PodRef
    # container name -> restartCount (init and ephemeral containers included)
    restarts: Mapping[str, int] = field(default_factory=dict)
    # container name -> waiting reason (CrashLoopBackOff, ImagePullBackOff, ...)
    waiting: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PodList:
    """Parsed /pods: the pods plus how many items were skipped as malformed."""

    pods: tuple[PodDetail, ...]
    skipped: int = 0


def _endpoint(path: str) -> str:
    return _ENDPOINTS.get(path.split("?", 1)[0], "other")


def _strip_scheme(container_id: str) -> str:
    """``containerd://abc`` -> ``abc`` (cgroup paths carry the bare ID)."""
    return container_id.split("://", 1)[-1]


def parse_pod_list(doc: Any) -> PodList:
    """Turn a decoded /pods PodList into :class:`PodDetail` objects, skipping malformed items.
    ``"items": null`` is an empty list: a real kubelet with no pods sends exactly that."""
    items = doc.get("items", ()) if isinstance(doc, dict) else ()
    if not isinstance(doc, dict) or not (items is None or isinstance(items, list)):
        raise KubeletBadBody("/pods: expected a PodList object with an items array")
    out: list[PodDetail] = []
    skipped = 0
    for item in items or []:
        try:
            meta = item["metadata"]
            uid, ns, name = str(meta["uid"]), str(meta["namespace"]), str(meta["name"])
            status = item.get("status") or {}
            containers: dict[str, str] = {}
            restarts: dict[str, int] = {}
            waiting: dict[str, str] = {}
            for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
                for cs in status.get(key) or ():
                    cname = str(cs["name"])
                    if cs.get("containerID"):
                        containers[_strip_scheme(str(cs["containerID"]))] = cname
                    restarts[cname] = int(cs.get("restartCount") or 0)
                    reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
                    if reason:
                        waiting[cname] = str(reason)
            ref = PodRef(
                uid=uid, namespace=ns, name=name,
                qos_class=str(status.get("qosClass") or ""),
                phase=str(status.get("phase") or ""),
                containers=containers,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            # OverflowError: int() of an infinite restartCount (JSON 1e999 decodes to inf).
            skipped += 1
            continue
        out.append(PodDetail(ref, restarts, waiting))
    return PodList(tuple(out), skipped)


class KubeletClient:
    """Async client for one kubelet; safe to share between concurrently running collectors."""

    def __init__(
        self,
        base_url: str,
        *,
        token_file: Path | None = None,
        ca_file: Path | None = None,
        insecure_skip_verify: bool = False,
        timeout: float = 4.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        pods_max_age: float = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file
        self.insecure_skip_verify = insecure_skip_verify
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self.pods_max_age = pods_max_age
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_key: tuple[int, int, int] | None = None
        self._pods_lock = asyncio.Lock()
        self._pods_at = -1e18
        self._pods: PodList | None = None
        self._pods_parsed: tuple[bytes, PodList] | None = None  # (body digest, its decode)
        self._pods_error: KubeletError | None = None
        # Bumped whenever a /pods body differs from the one before (any pod created, deleted,
        # resized or with a new status): lets a caller skip work while nothing changed.
        self.pods_generation = 0
        self.requests: Counter[tuple[str, str]] = Counter()
        self.pods_cache_hits = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> KubeletClient:
        """Build from the agent's settings (no I/O: the session is opened on first use)."""
        return cls(
            settings.kubelet_url,
            token_file=settings.kubelet_token_file,
            ca_file=settings.kubelet_ca_file,
            insecure_skip_verify=settings.kubelet_insecure_skip_verify,
            # Leave the collector a margin to report "kubelet down" before its own timeout.
            timeout=max(0.2, settings.collector_timeout * 0.8),
            # Fresh for every collector of one tick, stale by the next tick.
            pods_max_age=min(settings.collect_interval / 2, 5.0),
        )

    # -- plumbing -------------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        """Only a CA file needs a context of its own (each holds a CA store: the system one is
        ~0.8 MiB, ~25 ms); aiohttp shares one with the system store (True) and one that
        verifies nothing (False) between all sessions."""
        if self.insecure_skip_verify:
            return False
        if not self.base_url.startswith("https://") or not self.ca_file:
            return True
        try:
            return ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise KubeletConfigError(f"cannot load kubelet CA file {self.ca_file}: {exc}") from exc

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=8)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                raise_for_status=False,
            )
        return self._session

    def _bearer(self) -> str | None:
        """The token, re-read when the file's inode, size or mtime changed (tokens rotate).

        A stat per request is a microsecond syscall on a local file, cheap enough for the loop.
        """
        if self.token_file is None:
            return None
        try:
            st = os.stat(self.token_file)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key != self._token_key or self._token is None:
                self._token = self.token_file.read_text().strip()
                self._token_key = key
        except OSError as exc:
            raise KubeletTokenError(
                f"cannot read kubelet token file {self.token_file}: {exc.strerror or exc}",
                permission=isinstance(exc, PermissionError),
            ) from exc
        return self._token

    async def _get(
        self, path: str, accept: str, decode: Callable[[bytes], T], *, threaded: bool = False
    ) -> T:
        """GET ``path`` and decode the body; count the outcome once; raise a KubeletError.

        ``decode`` runs in a worker thread when ``threaded`` or the body is big.
        """
        endpoint = _endpoint(path)
        try:
            body = await self._fetch(path, accept)
            try:
                if threaded or len(body) > _INLINE_PARSE_BYTES:
                    result = await asyncio.to_thread(decode, body)
                else:
                    result = decode(body)
            except (KubeletBadBody, ValueError, TypeError) as exc:
                msg = str(exc)
                raise KubeletBadBody(msg if msg.startswith(path) else f"{path}: {msg}") from exc
        except KubeletError as exc:
            self.requests[(endpoint, exc.outcome)] += 1
            raise
        self.requests[(endpoint, "ok")] += 1
        return result

    async def _fetch(self, path: str, accept: str) -> bytes:
        url = self.base_url + path
        headers = {"Accept": accept}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._get_session().get(url, headers=headers) as resp:
                if resp.content_length is not None and resp.content_length > self.max_body_bytes:
                    raise KubeletResponseTooLarge(
                        f"{path}: response of {resp.content_length} bytes refused "
                        f"(limit {self.max_body_bytes})"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise KubeletResponseTooLarge(
                            f"{path}: response over {self.max_body_bytes} bytes refused"
                        )
                    chunks.append(chunk)
                body = b"".join(chunks)
                if resp.status == 401:
                    hint = "no token configured" if token is None else "token rejected"
                    raise KubeletUnauthorized(
                        f"{path}: HTTP 401 from the kubelet ({hint}; check "
                        f"--kubelet.token-file and the agent's nodes/proxy RBAC)", 401,
                    )
                if resp.status == 403:
                    raise KubeletForbidden(
                        f"{path}: HTTP 403 from the kubelet (token accepted but not allowed; "
                        f"check the agent's RBAC: nodes/proxy, nodes/stats, nodes/metrics)", 403,
                    )
                if not 200 <= resp.status < 300:
                    text = body[:200].decode("utf-8", "replace").strip()
                    raise KubeletHTTPError(f"{path}: HTTP {resp.status}: {text}", resp.status)
                return body
        except TimeoutError as exc:
            raise KubeletTimeout(
                f"{path}: no answer within {format_duration(self.timeout)}") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise KubeletTLSError(
                f"{path}: TLS error talking to {self.base_url}: the kubelet's certificate does not "
                f"verify ({exc.certificate_error}); check --kubelet.ca-file and the URL's host "
                f"name, or --kubelet.insecure-skip-verify"
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise KubeletError(f"{path}: TLS error talking to {self.base_url}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise KubeletError(f"{path}: cannot reach {self.base_url}: {exc}") from exc

    # -- public API -----------------------------------------------------------------------------

    async def healthz(self) -> tuple[bool, float, str]:
        """Probe /healthz: (healthy, seconds taken, detail). Never raises.

        Healthy means HTTP 200 with the kubelet's ``ok`` body; ``detail`` is the body when
        healthy and the reason (status and body, timeout, refused connection, 401) otherwise.
        """
        seconds, error, text = await self.probe_healthz()
        return error is None, seconds, text if error is None else str(error)

    async def probe_healthz(self) -> tuple[float, KubeletError | None, str]:
        """Probe /healthz: (seconds taken, the error or None, body). Never raises a
        KubeletError: the caller tells "kubelet down" from "we cannot see" by the error."""
        start = time.perf_counter()
        try:
            text = await self._get("/healthz", "text/plain", _check_healthz)
        except KubeletError as exc:
            return time.perf_counter() - start, exc, ""
        return time.perf_counter() - start, None, text

    async def get_text(self, path: str) -> str:
        """GET ``path`` as text (Prometheus exposition etc.)."""
        return await self._get(path, "text/plain;version=0.0.4;q=0.9,*/*;q=0.1", _decode_text)

    async def get_json(self, path: str, decode: Callable[[bytes], Any] | None = None) -> Any:
        """GET ``path`` and decode JSON (off the event loop for big bodies); ``decode`` replaces
        the plain JSON decode (e.g. one that keeps only the fields its caller reads)."""
        return await self._get(path, "application/json", decode or decode_json)

    async def pod_list(self) -> PodList:
        """/pods parsed, fetched at most once per ``pods_max_age`` for all concurrent callers.

        A failure is cached for the same time, so two collectors asking a dead kubelet in one
        tick cost one timeout, not two.
        """
        async with self._pods_lock:
            if time.monotonic() - self._pods_at < self.pods_max_age:
                self.pods_cache_hits += 1
                if self._pods_error is not None:
                    raise self._pods_error
                assert self._pods is not None
                return self._pods
            try:
                pods = await self._get("/pods", "application/json", self._decode_pods,
                                       threaded=True)
            except KubeletError as exc:
                self._pods, self._pods_error = None, exc
                self._pods_at = time.monotonic()
                raise
            self._pods, self._pods_error = pods, None
            self._pods_at = time.monotonic()
            return pods

    def _decode_pods(self, body: bytes) -> PodList:
        """/pods decoded, or the last result again for the same bytes (BLAKE2b: ~1 ms at 1 MB,
        not ~10 ms of JSON). In a worker thread, one at a time (under the pods lock)."""
        digest = hashlib.blake2b(body, digest_size=16).digest()
        last = self._pods_parsed
        if last is not None and last[0] == digest:
            return last[1]
        pods = _decode_pods(body)
        self._pods_parsed = (digest, pods)
        self.pods_generation += 1
        return pods

    async def pods(self) -> list[PodRef]:
        """The pods on this node (see :meth:`pod_list` for caching)."""
        return [p.ref for p in (await self.pod_list()).pods]

    def families(self) -> list[Family]:
        """The client's own counters (exported by the ``kubelet`` collector)."""
        req = CLIENT_REQUESTS.family()
        for (endpoint, outcome), n in sorted(self.requests.items()):
            req.add((endpoint, outcome), n)
        hits = CLIENT_POD_CACHE_HITS.family()
        hits.add((), self.pods_cache_hits)
        return [req, hits]

    async def close(self) -> None:
        """Close the HTTP session (idempotent; a later request opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def decode_json(body: bytes) -> Any:
    """``body`` as JSON; a KubeletBadBody (a ValueError) when it is not."""
    try:
        return json.loads(body)
    except ValueError as exc:
        raise KubeletBadBody(f"invalid JSON: {exc}") from exc


def _decode_text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def _decode_pods(body: bytes) -> PodList:
    return parse_pod_list(decode_json(body))


def _check_healthz(body: bytes) -> str:
    """The kubelet answers ``ok`` (or ends ``?verbose`` with ``healthz check passed``); a 200
    with anything else is not a kubelet we can trust."""
    text = body[:200].decode("utf-8", "replace").strip()
    if text == "ok" or text.endswith("healthz check passed"):
        return text
    raise KubeletBadBody(f"HTTP 200 with unexpected body {text[:60]!r}")


def get_or_create(ctx: CollectorContext) -> KubeletClient:
    """The shared client ``ctx.kubelet``, created there from settings if absent."""
    client = ctx.kubelet
    if not isinstance(client, KubeletClient):
        client = ctx.kubelet = KubeletClient.from_settings(ctx.settings)
    return client
