"""Every runbook the default rules and the Prometheus alerts link exists, with the on-call sections.

Rules name their runbook as ``runbook:`` (a path under the repository, or a URL); alerts as
``annotations.runbook_url`` (a GitHub URL). Both are resolved by their trailing
``docs/runbooks/<Name>.md`` part, so a link to a page nobody wrote fails here instead of in an
on-call engineer's browser.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RUNBOOKS = REPO / "docs" / "runbooks"
RULE_FILES = sorted((REPO / "rules").glob("*.yaml"))
ALERTS = REPO / "dashboards" / "alerts.yaml"
SECTIONS = ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation", "## Escalation")
RUNBOOK_PATH = re.compile(r"(?:^|/)docs/runbooks/([^/]+\.md)$")


def _rule_links() -> list[tuple[str, str]]:
    links = []
    for path in RULE_FILES:
        for rule in (yaml.safe_load(path.read_text()) or {}).get("rules") or []:
            if "runbook" in rule:
                links.append((f"{path.name}:{rule['name']}", str(rule["runbook"])))
    return links


def _alert_links() -> list[tuple[str, str]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [
        (f"alerts.yaml:{rule['alert']}", str(rule["annotations"]["runbook_url"]))
        for group in doc["groups"]
        for rule in group["rules"]
        if "alert" in rule and "runbook_url" in rule.get("annotations", {})
    ]


def _page(link: str) -> Path:
    match = RUNBOOK_PATH.search(link.split("#", 1)[0].split("?", 1)[0])
    assert match, f"{link!r} does not point to docs/runbooks/<Name>.md"
    return RUNBOOKS / match.group(1)


RULE_LINKS = _rule_links()
ALERT_LINKS = _alert_links()


def test_the_links_were_found() -> None:
    """Guards against a parser change silently yielding nothing to check."""
    assert RULE_FILES, "no rules/*.yaml"
    assert len(RULE_LINKS) >= 5, RULE_LINKS
    assert len(ALERT_LINKS) >= 5, ALERT_LINKS


@pytest.mark.parametrize(("where", "link"), RULE_LINKS + ALERT_LINKS,
                         ids=[w for w, _ in RULE_LINKS + ALERT_LINKS])
def test_runbook_link_points_to_an_existing_page(where: str, link: str) -> None:
    page = _page(link)
    assert page.is_file(), f"{where}: runbook {link!r} -> {page.relative_to(REPO)} does not exist"


@pytest.mark.parametrize("page", sorted(RUNBOOKS.glob("*.md")), ids=lambda p: p.name)
def test_runbook_has_title_and_the_five_sections(page: Path) -> None:
    text = page.read_text()
    assert text.startswith(f"# {page.stem}\n"), f"{page.name}: first line should be '# {page.stem}'"
    assert "**Severity:**" in text and "**Fires when**" in text, f"{page.name}: no Severity line"
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    missing = [s for s in SECTIONS if s not in headings]
    assert not missing, f"{page.name} lacks {', '.join(missing)}"
    positions = [headings.index(s) for s in SECTIONS]
    assert positions == sorted(positions), f"{page.name}: sections out of order {headings}"
