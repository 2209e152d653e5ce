"""Generate the reference in docs/ from the code itself, and refresh the sections README.md
includes from docs/*.md.

The generated tables: flags, collectors and metrics (docs/reference.md), rule actions
(docs/rules.md) and problem definitions (docs/problems.md), each between ``<!-- BEGIN GENERATED
name -->`` and ``<!-- END GENERATED name -->``. ``python -m agent.docs`` rewrites them;
tests/unit/test_readme.py fails while a page and the code disagree, so the tables cannot drift
from what the agent really accepts and exports.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent import docs_schema
from agent.collectors import registry
from agent.exporter.self_metrics import SelfMetrics
from agent.settings import FLAGS, flag_default, reload_mode
from agent.structs.metrics import MetricSpec

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
REFERENCE = REPO / "docs" / "reference.md"
# The pages with generated blocks or includes, each with the blocks it must hold.
PAGES: dict[Path, tuple[str, ...]] = {
    README: (),
    REFERENCE: ("flags", "collectors", "metrics"),
    REPO / "docs" / "rules.md": ("actions",),
    REPO / "docs" / "problems.md": ("problems",),
}
REGENERATE = "python -m agent.docs"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# What a SIGHUP does with a changed value (agent.settings.OnReload).
_RELOAD = {"live": "applied", "collectors": "rebuilds collectors", "restart": "needs restart"}


def flags_table() -> str:
    rows = ["| flag | default | environment | on reload | meaning |", "|---|---|---|---|---|"]
    for f in FLAGS:
        default = flag_default(f)
        rows.append(
            f"| `--{f.name}` | {f'`{default}`' if default else ''} | `{f.env}` | "
            f"{_RELOAD[reload_mode(f.field)]} | {_md(f.help)} |"
        )
    rows.append(
        "| `--collector.NAME` / `--no-collector.NAME` | see collectors | "
        f"`NODEMEDIC_COLLECTOR_NAME` | {_RELOAD[reload_mode('collectors')]} | "
        "enable or disable one collector |"
    )
    return "\n".join(rows)


def collectors_table() -> str:
    registry.load_builtin()
    rows = ["| collector | default | what it collects |", "|---|---|---|"]
    for name, cls in registry.collectors().items():
        doc = cls.help or (cls.__doc__ or "").strip().splitlines()[0]
        rows.append(f"| `{name}` | {'on' if cls.default_enabled else 'off'} | {_md(doc)} |")
    return "\n".join(rows)


def _self_specs() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(name, help, type, labels) of the agent's prometheus_client metrics, as exported: a
    counter named with ``_total``, a histogram by its base name (``_bucket``/``_sum``/``_count``
    series)."""
    reg = CollectorRegistry(auto_describe=False)
    SelfMetrics(reg)
    out = []
    for metric in reg.collect():
        typ = metric.type
        name = metric.name + ("_total" if typ == "counter" else "")
        labels: list[str] = []
        for s in metric.samples:
            labels = [k for k in s.labels if k != "le"]
            break
        out.append((name, metric.documentation, typ, tuple(labels)))
    return out


def component_specs() -> list[tuple[str, MetricSpec]]:
    """Module-level MetricSpecs of non-collector components (rules, safety, failover, ...)."""
    import agent

    collector_names = {s.name for cls in registry.collectors().values() for s in cls.metrics}
    out: list[tuple[str, MetricSpec]] = []
    seen: set[str] = set(collector_names)
    for info in pkgutil.walk_packages(agent.__path__, "agent."):
        if info.name.startswith(("agent.collectors", "agent.cli", "agent.__main__")):
            continue
        try:
            mod = importlib.import_module(info.name)
        except Exception:  # noqa: S112 - a module that cannot import has no table rows
            continue
        owner = info.name.split(".")[1]
        for value in vars(mod).values():
            if isinstance(value, MetricSpec) and value.name not in seen:
                seen.add(value.name)
                out.append((owner, value))
    return sorted(out, key=lambda e: (e[0], e[1].name))


def metrics_table() -> str:
    registry.load_builtin()
    rows = ["| metric | type | labels | source | meaning |", "|---|---|---|---|---|"]
    entries = [("agent", *s) for s in _self_specs()]
    for cname, cls in registry.collectors().items():
        entries.extend((cname, s.name, s.help, s.type, s.labelnames) for s in cls.metrics)
    entries.extend((owner, s.name, s.help, s.type, s.labelnames)
                   for owner, s in component_specs())
    for owner, name, help_, typ, labelnames in entries:
        labels = ", ".join(f"`{lbl}`" for lbl in labelnames)
        rows.append(f"| `{name}` | {typ} | {labels} | {owner} | {_md(help_)} |")
    return "\n".join(rows)


BLOCKS: dict[str, Callable[[], str]] = {
    "flags": flags_table,
    "collectors": collectors_table,
    "metrics": metrics_table,
    "actions": docs_schema.actions_table,
    "problems": docs_schema.problems_table,
}


def _block_re(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED {name} -->\n)(.*?)(<!-- END GENERATED {name} -->)", re.S
    )


_INCLUDE = re.compile(r"(<!-- BEGIN INCLUDE ([\w./-]+) -->\n)(.*?)(<!-- END INCLUDE \2 -->)", re.S)


def _include(m: re.Match[str]) -> str:
    path = REPO / m.group(2)
    body = path.read_text().strip("\n")
    return m.group(1) + body + "\n" + m.group(4)


def render(text: str, names: Iterable[str] = ()) -> str:
    """Refresh the included sections (paths from the repository root) and the generated tables
    of one page: every block present, and each of ``names``, which must be present once."""
    text = _INCLUDE.sub(_include, text)
    for name, make in BLOCKS.items():
        pattern = _block_re(name)
        found = len(pattern.findall(text))
        if found == 0 and name not in names:
            continue
        if found != 1:
            raise ValueError(f"block {name!r} found {found} times, expected once")
        table = make()

        def put(m: re.Match[str], t: str = table) -> str:
            return m.group(1) + t + "\n" + m.group(3)

        text = pattern.sub(put, text)
    return text


def main() -> int:
    for page, names in PAGES.items():
        text = page.read_text()
        new = render(text, names)
        if new != text:
            page.write_text(new)
            print(f"{page.relative_to(REPO)} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
