"""The agent daemon: tick loop, HTTP server, signals, reload, systemd notify, clean shutdown.

Called by agent.cli (``nodemedic run``) and by the demo (several agents in one process: nothing
here is a process-wide global; signal handling is opt-in). One tick = collect (agent.runtime
.pipeline) -> snapshot -> components (rules and remediation, agent.runtime.components) -> the
exposition marked stale (agent.exporter.render renders it on the first scrape after the tick)
-> freed heap back to the kernel (agent.runtime.heap) -> WATCHDOG=1 when healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from agent import __version__
from agent.collectors import registry as collector_registry
from agent.collectors.base import CANNOT_SEE_REASONS, Collector, CollectorContext
from agent.exporter.render import Exposition, Renderer
from agent.exporter.self_metrics import SelfMetrics
from agent.exporter.webfront import WebFront
from agent.runtime import heap
from agent.runtime.components import Component, build_components, build_shared, close_shared
from agent.runtime.logging import configure_logging
from agent.runtime.pipeline import Collection
from agent.runtime.reloadplan import ReloadPlan, plan_reload
from agent.runtime.sdnotify import Notifier
from agent.runtime.statusview import with_rfc3339_times
from agent.runtime.tasks import Supervisor
from agent.settings import Settings, check_paths, display_value, flag_name
from agent.structs.durations import format_duration
from agent.structs.metrics import Family
from agent.structs.snapshot import Snapshot

log = structlog.get_logger("nodemedic.daemon")

MAX_REPORTED_PROBLEMS = 100  # problems of a failed reload kept for the log line and /status


def run_mode(settings: Settings) -> tuple[str, str]:
    """("dry-run" or "live", why): the first log line and /status say it."""
    if settings.dry_run:
        return "dry-run", ("dry-run is on (--dry-run, $NODEMEDIC_DRY_RUN or dry-run: true in the "
                           "config file): rules are evaluated and every action is gated and "
                           "logged, none is executed")
    if "dry_run" in settings.model_fields_set:
        return "live", ("dry-run was turned off explicitly (--no-dry-run, $NODEMEDIC_DRY_RUN or "
                        "dry-run: false in the config file): actions the safety gate allows "
                        "are executed")
    return "live", ("dry-run is off by default (nothing set it): actions the safety gate allows "
                    "are executed; start with --dry-run to only log them")


def enabled_collectors(settings: Settings, ctx: CollectorContext) -> list[Collector]:
    """Instantiate every registered collector that the settings enable."""
    collector_registry.load_builtin()
    out: list[Collector] = []
    for name, cls in collector_registry.collectors().items():
        if settings.collector_enabled(name, cls.default_enabled):
            out.append(cls(ctx))
    return out


class Agent:
    """One nodemedic agent. ``start()``/``stop()`` for embedding; ``run()`` for the CLI."""

    def __init__(
        self,
        settings: Settings,
        reload_settings: Callable[[], Settings] | None = None,
        notifier: Notifier | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings
        self._notifier = notifier or Notifier()
        self._handle_signals = handle_signals
        self.registry = CollectorRegistry(auto_describe=False)
        self.metrics = SelfMetrics(self.registry)
        self.metrics.dry_run.set(1 if settings.dry_run else 0)
        self._renderer = Renderer(self.registry, self._families, self._rendered)
        self._supervisor = Supervisor(on_restart=self._task_restarted)
        self._stop = asyncio.Event()
        self._snapshot: Snapshot | None = None
        self._exported: Snapshot | None = None  # the last finished tick's: what /metrics shows
        self._last_tick_mono: float | None = None
        self._last_tick_seconds = 0.0
        self._started_mono = time.monotonic()
        self._collection: Collection | None = None
        self._ctx: CollectorContext | None = None
        self._components: list[Component] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._wake = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._last_reload_error: str | None = None
        self._last_reload_problems: list[str] = []
        self._restart_required: dict[str, tuple[Any, Any]] = {}
        self._tick_lock = asyncio.Lock()  # a reload's commit never lands in the middle of a tick
        self._executor: ThreadPoolExecutor | None = None
        self._configured_listen = settings.web_listen_address
        self._web: WebFront | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Build collectors and components, start serving HTTP and the tick loop."""
        loop = asyncio.get_running_loop()
        mode, why = run_mode(self.settings)
        log.info("starting", mode=mode, mode_reason=why, version=__version__,
                 node=self.settings.node_name, listen=self.settings.web_listen_address)
        if self._handle_signals:
            # Bounded worker pool for file parsing: a hung read cannot spawn threads forever.
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="nodemedic-io")
            loop.set_default_executor(self._executor)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        # Serve first (/healthz answers, /readyz says not ready yet) so that components see the
        # bound port: with --web.listen-address :0 peers must be told the real one.
        host, port = self.settings.listen_host_port()
        self._web = await WebFront.create(
            self.settings, lambda: self._ctx.api if self._ctx else None)
        self._runner, self.port = await self._web.serve(
            self, self.metrics, host, port, self.settings.web_max_connections)
        self.settings = self._with_bound_port(self.settings)
        self._ctx = CollectorContext(self.settings)
        await build_shared(self._ctx)
        self._web.check_api(self._ctx.api)
        self._components = await build_components(self.settings, self._ctx)
        self._collection = Collection(enabled_collectors(self.settings, self._ctx))
        for c in self._collection.collectors:
            await c.start()
        for comp in self._components:
            await comp.start()
        log.info(
            "started", version=__version__, node=self.settings.node_name,
            listen=f"{host}:{self.port}", dry_run=self.settings.dry_run,
            mode=run_mode(self.settings)[0],
            collectors=[c.name for c in self._collection.collectors],
            components=[type(c).__name__ for c in self._components],
        )
        # Everything allocated so far (modules, clients) lives as long as the process: move it out
        # of the collector's generations so each tick's GC passes only scan per-tick garbage.
        gc.freeze()
        self._supervisor.spawn("tick", self._tick_loop)
        self._notifier.ready(f"serving on {host}:{self.port}")
        wd = self._notifier.watchdog_seconds
        if wd is not None and wd < 2 * self.settings.collect_interval:
            log.warning("watchdog_shorter_than_interval", watchdog_seconds=wd,
                        interval=self.settings.collect_interval)

    def _with_bound_port(self, settings: Settings) -> Settings:
        """``settings`` with the port actually bound when the configured one was 0."""
        if self.port is None or settings.web_listen_address != self._configured_listen:
            return settings
        head, _, port = settings.web_listen_address.rpartition(":")
        if port != "0":
            return settings
        return settings.model_copy(update={"web_listen_address": f"{head}:{self.port}"})

    async def stop(self) -> None:
        """Stop ticking, close collectors, components and the server (bounded in time)."""
        self._notifier.stopping()
        await self._supervisor.stop(grace=2.0)
        for comp in reversed(self._components):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(comp.close(), timeout=2.0)
        if self._collection is not None:
            await self._collection.close()
        if self._ctx is not None:
            await close_shared(self._ctx)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._web is not None:
            await self._web.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    async def run(self) -> int:
        """Start, wait for SIGTERM/SIGINT (or request_stop), shut down. Returns an exit code."""
        await self.start()
        await self._stop.wait()
        log.info("stopping")
        try:
            await asyncio.wait_for(self.stop(), timeout=4.5)
        except TimeoutError:
            log.error("shutdown_timed_out")
            return 1
        return 0

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._supervisor.spawn(f"reload-{time.monotonic_ns()}", self.reload, restart=False)

    # ---- the tick --------------------------------------------------------------------------
    async def tick_once(self) -> Snapshot:
        """Collect, hand the snapshot to every component, mark the exposition stale."""
        async with self._tick_lock:
            return await self._tick()

    async def _tick(self) -> Snapshot:
        assert self._collection is not None, "start() first"
        start = time.perf_counter()
        snapshot = await self._collection.collect()
        self._snapshot = snapshot
        for name, st in snapshot.collectors.items():
            self.metrics.collector_success.labels(name).set(1 if st.ok else 0)
            self.metrics.collector_degraded.labels(name).set(st.degraded is not None)
            self.metrics.collector_duration.labels(name).set(st.duration_seconds)
            if not st.ok:
                self.metrics.collector_failures.labels(name, st.reason or "error").inc()
            blind = st.cannot_see
            for reason in CANNOT_SEE_REASONS:
                self.metrics.collector_cannot_read.labels(name, reason).set(reason in blind)
        for comp in self._components:
            try:
                await comp.on_snapshot(snapshot)
            except Exception:  # a component bug must not stop collection and export
                log.exception("component_failed", component=type(comp).__name__)
        self._last_tick_seconds = time.perf_counter() - start
        self.metrics.tick_duration.observe(self._last_tick_seconds)
        self.metrics.last_tick.set(time.time())
        self._exported = snapshot
        # Rendered by the first scrape after this tick, if any (self-metrics frozen now); then
        # the tick's freed heap goes back to the kernel (glibc; no-op on musl). One hand-off.
        await asyncio.to_thread(self._end_of_tick)
        self._last_tick_mono = time.monotonic()
        if self.healthy()[0]:
            self._notifier.watchdog()
        return snapshot

    def _end_of_tick(self) -> None:
        """In a worker thread: freeze the self-metrics for the next render, trim the heap."""
        self._renderer.invalidate()
        heap.trim()

    async def _tick_loop(self) -> None:
        interval = self.settings.collect_interval
        next_at = time.monotonic()
        while not self._stop.is_set():
            await self.tick_once()
            interval = self.settings.collect_interval
            next_at += interval
            now = time.monotonic()
            if now > next_at:  # overran: skip the missed ticks instead of bursting
                missed = int((now - next_at) // interval) + 1
                self.metrics.ticks_skipped.inc(missed)
                next_at += missed * interval
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, next_at - now))
            if self._wake.is_set():
                next_at = time.monotonic()  # reloaded: tick now with the new settings

    # ---- reload ----------------------------------------------------------------------------
    async def reload(self) -> None:
        """SIGHUP: re-read settings and rules, all or nothing.

        Phase one builds and validates everything new without touching what runs: the settings,
        the plan derived from each setting's :class:`agent.settings.OnReload` declaration, every
        component's new configuration (rules included) and, when a collector option changed, a
        started set of new collectors. Any error there discards all of it and keeps the last good
        configuration everywhere. Phase two commits every part (commits cannot fail) between two
        ticks. Restart-only settings keep their running value and are reported per setting."""
        async with self._reload_lock:
            built: tuple[CollectorContext, Collection] | None = None
            try:
                configured = self._reload_settings() if self._reload_settings else self.settings
                configured = self._with_bound_port(configured)
                check_paths(configured)
                plan = plan_reload(self.settings, configured)
                web = await self._web.prepare(plan.effective) if self._web is not None else None
                commits = []
                legacy = []
                for comp in self._components:
                    prepare = getattr(comp, "prepare_reload", None)
                    if callable(prepare):
                        commits.append(await prepare(plan.effective))
                    else:
                        legacy.append(comp)
                edited = [c.name for c in (self._collection.collectors if self._collection
                                            else ()) if await c.files_changed()]
                if edited:
                    log.info("collector_files_changed", collectors=edited)
                if plan.rebuild_collectors or edited:
                    built = await self._build_collection(plan.effective)
                # Components without the two-phase hook validate-and-apply in one call: last, so
                # a failure anywhere else has not let them apply anything.
                for comp in legacy:
                    await comp.reload(plan.effective)
            except Exception as exc:  # SettingsError, RulesError, anything: keep the last good
                if built is not None:
                    await built[1].close()
                    await close_shared(built[0], keep_api=True)
                self._reload_failed(exc)
                return
            async with self._tick_lock:
                old_ctx, old_collection = self._ctx, self._collection
                for commit in commits:
                    commit()
                if self._web is not None and web is not None:
                    self._web.commit(plan.effective, web)
                if built is not None:
                    self._ctx, self._collection = built
                self.settings = plan.effective
            if built is not None:
                if old_collection is not None:
                    await old_collection.close()
                if old_ctx is not None:
                    await close_shared(old_ctx, keep_api=True)
            self._reloaded(plan)

    def _reload_failed(self, exc: Exception) -> None:
        problems = [str(p) for p in getattr(exc, "problems", ())] or [str(exc)]
        self._last_reload_error = str(exc)
        self._last_reload_problems = problems[:MAX_REPORTED_PROBLEMS]
        self.metrics.config_reloads.labels("failure").inc()
        self.metrics.config_last_reload_success.set(0)
        log.error("reload_failed_keeping_last_good_config", error=str(exc),
                  problems=self._last_reload_problems, problems_total=len(problems),
                  problems_shown=len(self._last_reload_problems))

    def _reloaded(self, plan: ReloadPlan) -> None:
        new = plan.effective
        if {"log_level", "log_format"} & set(plan.applied):
            configure_logging(new.log_level, new.log_format)
        self._restart_required = dict(plan.restart_required)
        self.metrics.config_restart_required.clear()
        for field, (running, configured) in sorted(self._restart_required.items()):
            self.metrics.config_restart_required.labels(flag_name(field)).set(1)
            log.warning("setting_change_needs_restart", setting=flag_name(field),
                        running=display_value(field, running),
                        configured=display_value(field, configured))
        self.metrics.dry_run.set(1 if new.dry_run else 0)
        self._last_reload_error = None
        self._last_reload_problems = []
        self.metrics.config_reloads.labels("success").inc()
        self.metrics.config_last_reload_success.set(1)
        applied = [flag_name(f) for f in plan.applied]
        restart = [flag_name(f) for f in sorted(self._restart_required)]
        if restart:  # never a plain "reloaded" while some setting still runs on its old value
            log.warning("reloaded_restart_required", applied=applied, restart_required=restart,
                        dry_run=new.dry_run, interval=new.collect_interval)
        else:
            log.info("reloaded", applied=applied, dry_run=new.dry_run,
                     interval=new.collect_interval)
        self._wake.set()

    async def _build_collection(self, settings: Settings) -> tuple[CollectorContext, Collection]:
        """New collectors for ``settings``, started, sharing the running API client; nothing of
        the running collectors is touched (they are closed only once the reload commits)."""
        api = self._ctx.api if self._ctx is not None else None
        ctx = CollectorContext(settings)
        try:
            await build_shared(ctx, api=api)
            coll = Collection(enabled_collectors(settings, ctx))
        except BaseException:
            await close_shared(ctx, keep_api=True)
            raise
        try:
            for c in coll.collectors:
                await c.start()
        except BaseException:
            await coll.close()
            await close_shared(ctx, keep_api=True)
            raise
        return ctx, coll

    # ---- views for the HTTP server ---------------------------------------------------------
    def _families(self) -> list[Family]:
        fams: list[Family] = []
        if self._exported is not None:
            fams.extend(self._exported.families.values())
        for comp in self._components:
            try:
                fams.extend(comp.families())
            except Exception:
                log.exception("component_families_failed", component=type(comp).__name__)
        return fams

    async def exposition(self) -> Exposition | None:
        """The last finished tick's exposition, rendered now if no scrape has rendered it yet."""
        return await self._renderer.current()

    def _rendered(self, exp: Exposition) -> None:
        """After each render, in its worker thread: record its time, return its freed heap."""
        self.metrics.render_duration.set(exp.render_seconds)
        heap.trim()

    def healthy(self) -> tuple[bool, str]:
        s = self.settings
        limit = max(3 * s.collect_interval, s.collect_interval + s.collector_timeout + 5)
        ref = self._last_tick_mono or self._started_mono
        age = time.monotonic() - ref
        if age > limit:
            return False, (f"no tick finished for {format_duration(age)} "
                           f"(limit {format_duration(limit)})")
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self._last_tick_mono is None:
            return False, "first collection not finished"
        return True, "ok"

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def status(self) -> dict[str, Any]:
        snap = self._snapshot
        mode, mode_reason = run_mode(self.settings)
        out: dict[str, Any] = {
            "node": self.settings.node_name,
            "version": __version__,
            "dry_run": self.settings.dry_run,
            "mode": mode,
            "mode_reason": mode_reason,
            "ready": self._last_tick_mono is not None,
            "interval_seconds": self.settings.collect_interval,
            "last_reload_error": self._last_reload_error,
            "last_reload_problems": self._last_reload_problems,
            "config": {
                "rules_dir": str(self.settings.rules_dir),
                "restart_required": [
                    {"setting": flag_name(f), "running": display_value(f, old),
                     "configured": display_value(f, new)}
                    for f, (old, new) in sorted(self._restart_required.items())
                ],
            },
            "tasks": self._supervisor.names(),
            # Footprint context for operators and bench/footprint.py (the client is ~38 MiB).
            "kubernetes_client_loaded": "kubernetes_asyncio" in sys.modules,
        }
        if snap is not None:
            out["last_tick"] = {
                "at": snap.taken_at,
                "age_seconds": round(time.monotonic() - snap.monotonic, 3),
                "duration_seconds": round(self._last_tick_seconds, 4),
            }
            details: dict[str, dict[str, Any]] = {}
            for c in self._collection.collectors if self._collection else []:
                try:
                    details[c.name] = c.status()
                except Exception as exc:
                    details[c.name] = {"status_error": str(exc)}
            out["collectors"] = {
                name: {
                    "ok": st.ok and st.degraded is None,
                    "error": st.error or st.degraded,
                    "degraded": st.degraded is not None,
                    "reason": st.reason or None,
                    "cannot_read": dict(st.unreadable),
                    "duration_seconds": round(st.duration_seconds, 4),
                    "series": sum(len(snap.families[f].samples) for f in st.families
                                  if f in snap.families),
                    **({"detail": details[name]} if details.get(name) else {}),
                }
                for name, st in snap.collectors.items()
            }
        for comp in self._components:
            try:
                out.update(comp.status())
            except Exception as exc:
                out.setdefault("errors", []).append(f"{type(comp).__name__}: {exc}")
        return with_rfc3339_times(out)

    def _task_restarted(self, name: str) -> None:
        self.metrics.task_restarts.labels(name).inc()
