"""The README's flag, collector and metric tables match what the code really accepts and exports."""

from __future__ import annotations

from agent import docs


def test_reference_tables_and_readme_sections_are_current() -> None:
    """Regenerating the tables and included sections changes nothing (run `python -m agent.docs`
    after a change); every generated table is on its page."""
    assert {n for names in docs.PAGES.values() for n in names} == set(docs.BLOCKS)
    for page, names in docs.PAGES.items():
        text = page.read_text()
        assert docs.render(text, names) == text, (
            f"{page.relative_to(docs.REPO)} is stale: run `{docs.REGENERATE}` and commit it")


def test_a_stale_table_is_caught() -> None:
    """A table row the code no longer has (or lacks) makes the page differ from its rendering."""
    for page, names in docs.PAGES.items():
        for name in names:
            text = page.read_text()
            end = f"<!-- END GENERATED {name} -->"
            stale = text.replace(end, f"| `made-up` | row |\n{end}")
            assert docs.render(stale, names) == text, (page, name)


def test_generated_tables_say_what_is_exported() -> None:
    """Spot checks against the code: tick_duration is a histogram, drain's timeout is required
    in a rule (1m to 4h) and evict-pod's defaults to 10m, problem durations are durations."""
    reference = docs.REFERENCE.read_text()
    assert "| `nodemedic_tick_duration_seconds` | histogram |" in reference
    rules = (docs.REPO / "docs" / "rules.md").read_text()
    drain = next(line for line in rules.splitlines() if line.startswith("| `drain` |"))
    assert "`timeout` (duration, required): give up (and report) after this long (1m to 4h)" \
        in drain
    evict = next(line for line in rules.splitlines() if line.startswith("| `evict-pod` |"))
    assert "`timeout` (duration, `10m`)" in evict
    problems = (docs.REPO / "docs" / "problems.md").read_text()
    assert "| `checks[].interval` | duration | `30s` |" in problems


def test_readme_is_a_front_door() -> None:
    """The README stays short (the reference lives in docs/) and links every guide page."""
    text = docs.README.read_text()
    assert len(text.encode()) <= 30 * 1024
    for page in ("rules", "actions", "failover", "problems", "lbskew", "operations", "install",
                 "security", "reference", "development"):
        assert f"(docs/{page}.md)" in text


def test_readme_starts_with_the_two_commands() -> None:
    """A fresh clone needs only `make run` and `make test`, and the README says so first."""
    head = docs.README.read_text().split("\n## ", 1)[0]
    assert "make run" in head and "make test" in head


def test_every_safety_guarantee_points_to_a_test_that_exists() -> None:
    """The README's guarantees table names, for each guarantee, test files (and test functions)
    that really exist: a renamed or deleted test cannot leave a guarantee unproved silently."""
    import re

    root = docs.README.parent
    text = (root / "docs" / "safety.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| **")]
    assert len(rows) >= 10
    for row in rows:
        refs = re.findall(r"`(tests/[\w/.-]+)(?:::(\w+))?`", row)
        assert refs, f"a guarantee without a test: {row[:80]}"
        for path, func in refs:
            target = root / path
            assert target.exists(), f"{path} does not exist"
            if func:
                assert re.search(rf"def {func}\b", target.read_text()), f"{path}::{func} missing"


# nodemedic_* words in the docs that are not metrics: Ansible variables in docs/install.md, the
# misspelt metric docs/rules.md shows `check-rules` catching, and the simulation's package name.
_NOT_METRICS = {"nodemedic_version", "nodemedic_kubeconfig", "nodemedic_kubelet_token",
                "nodemedic_kubelet_upp", "nodemedic_sim"}


def test_every_metric_the_docs_name_is_exported() -> None:
    """A metric named in README.md or docs/ (guides, runbooks, collector pages) is one the agent
    exports, by its exported name (a histogram by its _bucket/_sum/_count series): a renamed
    metric cannot leave a runbook querying nothing."""
    import re

    table = docs.metrics_table()
    exported = dict(re.findall(r"^\| `(nodemedic_\w+)` \| (\w+) \|", table, re.M))
    names = set(exported)
    for name, typ in exported.items():
        if typ == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    pages = [docs.README, *sorted((docs.REPO / "docs").rglob("*.md"))]
    for page in pages:
        for word in re.findall(r"\bnodemedic_[a-z][a-z0-9_]*[a-z]\b", page.read_text()):
            assert word in names or word in _NOT_METRICS, (
                f"{page.relative_to(docs.REPO)} names {word}, which the agent does not export")
