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
