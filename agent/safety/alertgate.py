"""The alert gate: gated actions are held while named alerts fire in Prometheus or Alertmanager.

A small poller (owned by agent.safety.gate, started with the stage; one aiohttp session, its
own ``--safety.alert-gate-interval`` and ``--safety.alert-gate-timeout``) asks, off the request
path, ``GET <prometheus>/api/v1/alerts`` (alerts in state firing; pending ones do not count)
and/or ``GET <alertmanager>/api/v2/alerts?active=true&silenced=false&inhibited=false`` (a
silence releases the gate, on purpose: it is how on-call says "known, go ahead"), and keeps the
labels of what fires with the time of the answer. agent.safety.gate calls :meth:`AlertGate.check`
with the selectors of ``--safety.alert-gate-alerts`` plus the rule's ``gates.alerts``
(agent.structs.gatespec) for every pass of a gated action; it answers from the cache, never
waiting for the network.

Fail safe: a source that cannot be reached or answers with an error, a poll that has not
answered yet, a cached answer older than ``--safety.alert-gate-stale-intervals`` intervals
(plus the time one poll may take), and selectors without any configured source all mean
"cannot see the alerts" and hold, with the reason in the denial's detail
(``unreachable: <error>``, ``unknown: ...``), in /status and in
``nodemedic_alert_gate_state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import structlog

from agent.settings import Settings
from agent.structs.gatespec import AlertSelector, parse_selector
from agent.structs.metrics import Family, MetricSpec

log = structlog.get_logger("nodemedic.alertgate")

MAX_BODY = 16 << 20  # a bigger answer is an error (and holds), never a partial read
MAX_ALERTS = 20_000  # labels kept from one poll; more is an error too
SHOWN = 5  # firing alerts named in a denial's detail
MEMO = 64  # selector sets whose matches are kept per answer (global + each rule's own)
STATES = ("off", "clear", "firing", "unknown")
AM_QUERY = "/api/v2/alerts?active=true&silenced=false&inhibited=false"

GATE_STATE = MetricSpec(
    "nodemedic_alert_gate_state",
    "The alert gate for --safety.alert-gate-alerts: 1 for the current state (off: no source "
    "configured; clear; firing: a named alert fires, gated actions are held; unknown: the "
    "sources cannot be read or the answer is stale, gated actions are held).",
    "gauge",
    ("state",),
)
GATE_FIRING = MetricSpec(
    "nodemedic_alert_gate_firing_alerts",
    "Firing alerts matching --safety.alert-gate-alerts at the last poll.",
    "gauge",
)
GATE_AGE = MetricSpec(
    "nodemedic_alert_gate_age_seconds",
    "Age of the alert gate's last complete answer from every source.",
    "gauge",
)
GATE_POLLS = MetricSpec(
    "nodemedic_alert_gate_polls_total",
    "Polls of the alert gate's sources, by source (prometheus, alertmanager) and result.",
    "counter",
    ("source", "result"),
)
METRICS = (GATE_STATE, GATE_FIRING, GATE_AGE, GATE_POLLS)


class PollError(Exception):
    """One source could not be read; the message says why."""


def sources(settings: Settings) -> dict[str, str]:
    out = {}
    if settings.safety_alert_gate_prometheus_url:
        out["prometheus"] = settings.safety_alert_gate_prometheus_url
    if settings.safety_alert_gate_alertmanager_url:
        out["alertmanager"] = settings.safety_alert_gate_alertmanager_url
    return out


def _labels(alert: Any) -> dict[str, str]:
    labels = alert.get("labels") if isinstance(alert, dict) else None
    if not isinstance(labels, dict):
        raise PollError("an alert without a labels mapping")
    return {str(k): str(v) for k, v in labels.items()}


def parse_alerts(kind: str, data: Any) -> list[dict[str, str]]:
    """Labels of the firing alerts in one answer of Prometheus or Alertmanager."""
    if kind == "prometheus":
        if not isinstance(data, dict) or data.get("status") != "success":
            err = data.get("error", "") if isinstance(data, dict) else ""
            raise PollError(f"status is not success {err}".strip())
        alerts = (data.get("data") or {}).get("alerts")
        if not isinstance(alerts, list):
            raise PollError("no data.alerts list")
        return [_labels(a) for a in alerts if isinstance(a, dict) and a.get("state") == "firing"]
    if not isinstance(data, list):
        raise PollError("not a list of alerts")
    out = []
    for a in data:
        state = (a.get("status") or {}).get("state", "active") if isinstance(a, dict) else None
        if state == "active":
            out.append(_labels(a))
    return out


def describe(labels: Mapping[str, str]) -> str:
    name = labels.get("alertname", "?")
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())
                    if k in ("severity", "namespace", "instance", "node"))
    return f"{name}{{{rest}}}" if rest else name


def stale_after(settings: Settings) -> float:
    """Seconds after which the last answer no longer counts.

    Answers land every interval *plus* the poll's own time (the sources are asked one after the
    other, each for up to the timeout), so the limit allows for the poll in flight: with
    ``--safety.alert-gate-stale-intervals=1`` a limit of exactly one interval made the gate flap
    to unknown (and hold every gated action) at every poll that took longer than nothing.
    """
    s = settings
    return (s.safety_alert_gate_interval * s.safety_alert_gate_stale_intervals
            + s.safety_alert_gate_timeout * max(1, len(sources(s))))


class AlertGate:
    """The poller and its cache; one per gate. ``settings`` is replaced on reload."""

    def __init__(self, settings: Settings, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.monotonic = monotonic
        self._alerts: tuple[dict[str, str], ...] = ()
        self._answered: float | None = None  # monotonic time of the last complete answer
        self._error = ""
        self._polls: Counter[tuple[str, str]] = Counter()
        # Matches per selector set for the current answer: a decision costs a dict lookup, not
        # a regex over every firing alert (5000 alerts x 2 selectors took 50 ms per request).
        self._memo: dict[tuple[str, ...], list[dict[str, str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # --- configuration and lifecycle ---------------------------------------------------------

    def reconfigure(self, settings: Settings) -> None:
        """Apply reloaded settings; new sources forget the old answer (unknown until polled)."""
        if sources(settings) != sources(self.settings):
            self._alerts, self._answered, self._error = (), None, ""
            self._memo.clear()
        self.settings = settings
        self._wake.set()
        with contextlib.suppress(RuntimeError):  # no running loop: start() comes later
            self.start()

    def start(self) -> None:
        """Start the poller once a source is configured (idempotent; needs a running loop)."""
        if sources(self.settings) and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="alertgate")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                # Cleared before the poll: a reload during it wakes the next one at once (its
                # answer to the old sources is discarded), not a whole interval later.
                self._wake.clear()
                if sources(self.settings):
                    try:
                        await self.poll(session)
                    except Exception as exc:  # never let the poller die: hold and say why
                        self._error = f"poll crashed: {type(exc).__name__}: {exc}"
                        log.exception("alert_gate_poll_crashed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(),
                                           self.settings.safety_alert_gate_interval)

    # --- polling -----------------------------------------------------------------------------

    async def poll(self, session: aiohttp.ClientSession) -> None:
        """Ask every source once; the answer replaces the cache only if all of them answered."""
        settings = self.settings
        found: list[dict[str, str]] = []
        errors: list[str] = []
        for kind, url in sources(settings).items():
            try:
                found += await self._fetch(session, kind, url, settings.safety_alert_gate_timeout)
            except PollError as exc:
                self._polls[(kind, "error")] += 1
                errors.append(f"{kind} {url}: {exc}")
            else:
                self._polls[(kind, "ok")] += 1
        if settings is not self.settings and sources(settings) != sources(self.settings):
            return  # reconfigured while we waited: this answer is about the old sources
        if errors:
            if self._error != "; ".join(errors):
                log.warning("alert_gate_unreachable", error="; ".join(errors))
            self._error = "; ".join(errors)
            return
        if len(found) > MAX_ALERTS:
            self._error = f"{len(found)} firing alerts, more than {MAX_ALERTS}"
            return
        if self._error:
            log.info("alert_gate_reachable")
        self._alerts, self._answered, self._error = tuple(found), self.monotonic(), ""
        self._memo.clear()

    @staticmethod
    async def _fetch(session: aiohttp.ClientSession, kind: str, url: str,
                     limit: float) -> list[dict[str, str]]:
        full = url + ("/api/v1/alerts" if kind == "prometheus" else AM_QUERY)
        try:
            async with session.get(full, timeout=aiohttp.ClientTimeout(total=limit),
                                   headers={"Accept": "application/json"}) as resp:
                # read(n) returns what has arrived so far, not n bytes: a list sent in several
                # pieces was cut and judged "not JSON" (every gated action held). Read it all.
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise PollError(f"answer larger than {MAX_BODY} bytes")
                    chunks.append(chunk)
                body = b"".join(chunks)
                if resp.status != 200:
                    raise PollError(f"HTTP {resp.status}: {body[:200].decode(errors='replace')}")
        except (aiohttp.ClientError, OSError) as exc:
            raise PollError(f"{type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            raise PollError(f"no answer within {limit:g}s") from exc
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise PollError(f"not JSON: {exc}") from exc
        return parse_alerts(kind, data)

    # --- deciding ----------------------------------------------------------------------------

    def _unknown(self) -> str | None:
        """Why the cached answer cannot be trusted now, or None when it can."""
        if not sources(self.settings):
            return ("unknown: neither --safety.alert-gate-prometheus-url nor "
                    "--safety.alert-gate-alertmanager-url is set")
        if self._error:
            return f"unreachable: {self._error}"
        if self._answered is None:
            return "unknown: no answer from the alert sources yet"
        age = self.monotonic() - self._answered
        limit = stale_after(self.settings)
        if age > limit:
            return f"unknown: the last answer is {age:.0f}s old (stale after {limit:g}s)"
        return None

    def firing(self, selectors: Sequence[AlertSelector]) -> list[dict[str, str]]:
        """Alerts of the current answer that match any of ``selectors``."""
        key = tuple(s.text for s in selectors)
        hits = self._memo.get(key)
        if hits is None:
            if len(self._memo) >= MEMO:
                self._memo.clear()
            hits = self._memo[key] = [a for a in self._alerts
                                      if any(s.matches(a) for s in selectors)]
        return hits

    def check(self, selectors: Sequence[AlertSelector]) -> str | None:
        """None when no selected alert fires (or nothing is selected), else the hold's detail."""
        if not selectors:
            return None
        unknown = self._unknown()
        if unknown is not None:
            return f"alert gate {unknown}"
        hits = self.firing(selectors)
        if not hits:
            return None
        names = [describe(a) for a in hits[:SHOWN]]
        more = f" (+{len(hits) - SHOWN} more)" if len(hits) > SHOWN else ""
        return f"alerts firing: {', '.join(names)}{more}"

    def global_selectors(self) -> tuple[AlertSelector, ...]:
        return tuple(parse_selector(s) for s in self.settings.safety_alert_gate_alerts)

    def state(self) -> str:
        if not sources(self.settings):
            return "unknown" if self.settings.safety_alert_gate_alerts else "off"
        if self._unknown() is not None:
            return "unknown"
        return "firing" if self.firing(self.global_selectors()) else "clear"

    # --- exposing ----------------------------------------------------------------------------

    def families(self) -> list[Family]:
        state, now = GATE_STATE.family(), self.state()
        for s in STATES:
            state.add((s,), float(s == now))
        firing, age, polls = GATE_FIRING.family(), GATE_AGE.family(), GATE_POLLS.family()
        if now != "off":
            firing.add((), len(self.firing(self.global_selectors())))
        if self._answered is not None:
            age.add((), self.monotonic() - self._answered)
        for labels, n in sorted(self._polls.items()):
            polls.add(labels, n)
        return [state, firing, age, polls]

    def status(self) -> dict[str, Any]:
        selectors = self.global_selectors()
        return {
            "state": self.state(),
            "sources": sources(self.settings),
            "alerts": [s.text for s in selectors],
            "firing": [describe(a) for a in self.firing(selectors)][:20],
            "age_seconds": (round(self.monotonic() - self._answered, 1)
                            if self._answered is not None else None),
            "error": self._error,
            "detail": self.check(selectors) or "",
        }
