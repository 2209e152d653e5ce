"""The README's flag, collector and metric tables match what the code really accepts and exports."""

from __future__ import annotations

from agent import docs


def test_reference_tables_and_readme_sections_are_current() -> None:
    """Regenerating the tables and included sections changes nothing (run `python -m agent.docs`
    after a change); the reference holds every generated table."""
    for page in docs.PAGES:
        text = page.read_text()
        names = docs.BLOCKS if page == docs.REFERENCE else ()
        assert docs.render(text, names) == text, f"{page.name} is stale: run `python -m agent.docs`"


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
