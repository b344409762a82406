"""The docs say what the code does: the CLI reference is the commands' own --help, links resolve."""

from __future__ import annotations

import importlib.util
import re

from paths import ROOT


def _cli_help_tool():
    spec = importlib.util.spec_from_file_location("cli_help", ROOT / "docs" / "tools" / "cli_help.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_the_commands_own_help():
    tool = _cli_help_tool()
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks = tool.BLOCK.findall(text)
    assert len(blocks) >= 7  # deadrelu and each command
    assert tool.regenerate(text) == text, "docs/cli.md is stale: run python docs/tools/cli_help.py"


def test_relative_links_of_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken, broken


def _project_texts():
    """README, docs, and the package's and tests' sources: what a user or contributor reads."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    paths += sorted((ROOT / "deadrelu").rglob("*.py")) + sorted((ROOT / "samples").rglob("*.py"))
    paths += [path for path in sorted((ROOT / "tests").rglob("*.py")) if path.name != "test_docs.py"]
    return [(path, path.read_text(encoding="utf-8")) for path in paths]


def test_nothing_cites_the_internal_design_notes():
    """Users have docs/, not the team's internal DESIGN.md: the project cites docs/ only."""
    citing = [str(path.relative_to(ROOT)) for path, text in _project_texts() if "DESIGN.md" in text]
    assert not citing, citing


def test_docs_state_no_test_counts_or_suite_timings():
    """A count of tests or a suite's duration goes stale with the next commit: the docs leave them to CI."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    stale = []
    for page in pages:
        for match in re.finditer(
            r"\b\d[\d,]* tests\b|\btests?,? (?:in )?about [\d½¼¾.]+ ?min", page.read_text("utf-8")
        ):
            stale.append(f"{page.relative_to(ROOT)}: {match.group(0)}")
    assert not stale, stale


def test_module_paths_named_in_the_docs_exist():
    """`deadrelu/x/y.py` and `deadrelu.x.y` in the docs name modules that exist (they moved before)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    missing = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for path in re.findall(r"\bdeadrelu/[\w/]+(?:\.py|\.cc|/)", text):
            if not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
        for dotted in re.findall(r"`(deadrelu(?:\.[a-z_]+)+)", text):
            parts = dotted.split(".")
            # `deadrelu.a.b.name`: some prefix must be a module or package, the rest attributes.
            if (
                not any(
                    (ROOT.joinpath(*parts[:n]).with_suffix(".py")).exists() or (ROOT.joinpath(*parts[:n])).is_dir()
                    for n in range(2, len(parts) + 1)
                )
                and len(parts) > 2
            ):
                missing.append(f"{page.relative_to(ROOT)}: {dotted}")
    assert not missing, missing


def test_the_license_the_package_declares_is_shipped():
    declared = re.search(r'^license = \{ text = "([^"]+)" \}$', (ROOT / "pyproject.toml").read_text("utf-8"), re.M)[1]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert declared == "MIT" and text.startswith("MIT License") and "Permission is hereby granted" in text
