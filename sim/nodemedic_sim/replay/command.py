"""``nodemedic replay``: what would the agents have done over a recorded window of Prometheus data?

Registered by agent.cli through :func:`add_parser`. Takes every flag of ``nodemedic run`` (the
same ``--config`` file, ``NODEMEDIC_*`` environment, ``--rules.dir``, ``--dry-run`` and
``--safety.*`` budgets, so the replay decides as the fleet was configured) plus the replay's own:
``--prometheus.url``, ``--start``/``--end`` (RFC 3339, Unix seconds, ``now`` or ``now-2h``),
``--step`` (default ``--collect.interval``), ``--output text|json``, ``--replay.node-label``
(default ``instance``) and ``--replay.max-sample-age``. Loads the rules (a file:line error and
exit 1 when any is invalid), fetches the series they read (nodemedic_sim.replay.promql), replays
(nodemedic_sim.replay.timeline) and prints the timeline (nodemedic_sim.replay.render). Exit codes: 0
replayed, 1 rules or Prometheus failed, 2 invalid arguments (or a node label whose values are not
node names). Executes nothing and writes to no API.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from agent.settings import Settings, SettingsError, build_parser, check_paths, load_settings
from agent.structs.durations import parse_duration

MAX_STEPS = 1_000_000  # a week at 1s; beyond that the user almost certainly mistyped a unit


def add_parser(subparsers: Any) -> None:
    """Add ``replay`` to the ``nodemedic`` subcommands."""
    from agent.collectors import registry

    registry.load_builtin()
    p = subparsers.add_parser(
        "replay", help="replay recorded Prometheus data through the rules and the safety gate",
        description="Fetch the series the rules read from Prometheus, run the rules engine and "
        "the safety gate over them step by step and print what would have happened: fired, "
        "escalated, undone, resolved, blocked (with the gate's reason) and gaps in the data. "
        "Takes every 'nodemedic run' flag (budgets, --dry-run, --rules.dir, --config); executes "
        "nothing.",
    )
    build_parser(p, list(registry.collectors()))
    p.add_argument("--prometheus.url", dest="prometheus_url", required=True, metavar="URL",
                   help="Prometheus base URL, e.g. http://prometheus:9090")
    p.add_argument("--start", required=True, metavar="TIME",
                   help="start of the window: RFC 3339, Unix seconds, now or now-DURATION")
    p.add_argument("--end", required=True, metavar="TIME", help="end of the window (as --start)")
    p.add_argument("--step", default=None, metavar="DURATION",
                   help="time between replayed ticks (default: --collect.interval)")
    p.add_argument("--output", choices=("text", "json"), default="text",
                   help="text (a timeline for a post-mortem) or json (default %(default)s)")
    p.add_argument("--replay.node-label", dest="replay_node_label", default="instance",
                   metavar="LABEL", help="the label naming the node (default %(default)s, as the "
                   "shipped scrape configs set it)")
    p.add_argument("--replay.match", dest="replay_match", default="", metavar="MATCHERS",
                   help="label matchers added to every query, e.g. 'job=\"nodemedic\"' "
                   "(default: none)")
    p.add_argument("--replay.max-sample-age", dest="replay_max_sample_age", default="1m",
                   metavar="DURATION", help="a step without a sample this recent is a gap "
                   "(default %(default)s; at least the step)")
    p.set_defaults(func=run_replay)


def parse_time(text: str, now: float) -> float:
    """RFC 3339, Unix seconds, ``now`` or ``now-DURATION`` as Unix seconds (ValueError)."""
    s = text.strip()
    if s == "now":
        return now
    if s.startswith("now-"):
        return now - parse_duration(s[4:])
    try:
        return float(s)
    except ValueError:
        pass
    d = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    if d.tzinfo is None:
        raise ValueError(f"{text!r}: an RFC 3339 time needs a zone (Z or +01:00)")
    return d.timestamp()


def _node_name_ok(name: str) -> bool:
    """Whether ``name`` is a valid node name, by the same check as --node-name."""
    from pydantic import ValidationError

    try:
        Settings(node_name=name)
    except ValidationError:
        return False
    return True


def run_replay(args: argparse.Namespace) -> int:
    from agent.collectors import registry

    try:
        settings = load_settings(args, collector_names=list(registry.collectors()),
                                 base_dir=Path.cwd())
        check_paths(settings)
        now = time.time()
        start, end = parse_time(args.start, now), parse_time(args.end, now)
        step = (parse_duration(args.step) if args.step is not None
                else settings.collect_interval)
        max_age = max(parse_duration(args.replay_max_sample_age), step)
    except (SettingsError, ValueError) as exc:
        print(f"nodemedic replay: {exc}", file=sys.stderr)
        return 2
    if step <= 0 or end < start or (end - start) / step > MAX_STEPS:
        print(f"nodemedic replay: need --start <= --end and a positive --step with at most "
              f"{MAX_STEPS} steps between them", file=sys.stderr)
        return 2
    # Deferred: registering the subcommand must not load aiohttp, the engine or the fake API.
    from agent.rules.loader import RulesError, load_rules_dir
    from nodemedic_sim.replay.promql import PrometheusError

    try:
        ruleset = load_rules_dir(settings.rules_dir)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"nodemedic replay: {len(exc.problems)} problem(s) in the rules; nothing replayed",
              file=sys.stderr)
        return 1
    from agent.runtime.logging import configure_logging

    # The stages log every decision; the timeline is the report, so only --log.level=debug
    # shows them (on stderr, never mixed into --output json).
    configure_logging("debug" if settings.log_level == "debug" else "error", settings.log_format)
    try:
        return asyncio.run(replay(settings, ruleset, args.prometheus_url, start=start, end=end,
                                  step=step, max_age=max_age, node_label=args.replay_node_label,
                                  match=args.replay_match,
                                  output=args.output, out=sys.stdout))
    except PrometheusError as exc:
        print(f"nodemedic replay: {exc}", file=sys.stderr)
        return 1


async def replay(settings: Settings, ruleset: Any, url: str, *, start: float, end: float,
                 step: float, max_age: float, node_label: str, output: str, match: str = "",
                 out: TextIO) -> int:
    """Fetch, replay and print; returns the exit code (PrometheusError propagates)."""
    from agent.collectors import registry
    from nodemedic_sim.replay.promql import PrometheusSource, Recorded, nodes_of, steps
    from nodemedic_sim.replay.render import Window, render_json, render_text
    from nodemedic_sim.replay.timeline import SUCCESS_METRIC, UNSCHEDULABLE_METRIC, Replay

    times = steps(start, end, step)
    catalogue = registry.metric_catalogue()
    probe = Replay(settings, ruleset, {}, times=times, nodes=[], catalogue=catalogue)
    wanted: dict[str, tuple[str, ...]] = {
        m: tuple(catalogue[m][1].labelnames) for m in probe.metrics if m in catalogue}
    wanted[SUCCESS_METRIC] = ("collector",)
    wanted[UNSCHEDULABLE_METRIC] = ()
    recorded: dict[str, Recorded] = {}
    async with PrometheusSource(url) as prom:
        for metric, labelnames in wanted.items():
            recorded[metric] = await prom.fetch(metric, labelnames, times, step,
                                                max_age=max_age, node_label=node_label,
                                                match=match)
    unknown = sorted(m for m in probe.metrics if m not in catalogue)
    if unknown:  # no collector declares them: the agent never had data for them either
        print(f"nodemedic replay: no collector owns {', '.join(unknown)}; rules reading them "
              "never fire (gaps)", file=sys.stderr)
    for rec in recorded.values():
        if rec.duplicates:
            print(f"nodemedic replay: {rec.duplicates} series of {rec.metric} repeat another of "
                  "the same node and labels (several jobs scraping the agent?); the first is "
                  "used, narrow the query with --replay.match", file=sys.stderr)
    nodes = nodes_of(recorded)
    if not nodes:
        print(f"nodemedic replay: no series with a {node_label!r} label in the window; nothing "
              "to replay (wrong --replay.node-label or --replay.match?)", file=sys.stderr)
    bad = [n for n in nodes if not _node_name_ok(n)]
    if bad:
        print(f"nodemedic replay: label {node_label!r} does not name Kubernetes nodes (e.g. "
              f"{bad[0]!r}); give the label that holds the node name with "
              "--replay.node-label", file=sys.stderr)
        return 2
    result = Replay(settings, ruleset, recorded, times=times, nodes=nodes, catalogue=catalogue)
    records = await result.run()
    window = Window(start, end, step, tuple(nodes), len(result.metrics_of),
                    str(settings.rules_dir), settings.dry_run)
    if output == "json":
        render_json(window, records, out)
    else:
        render_text(window, records, out)
    return 0
