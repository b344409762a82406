"""Regenerates the `--help` blocks of docs/cli.md from the command line itself.

Each block follows a marker `<!-- help:COMMAND -->` (empty COMMAND: `deadrelu --help`) and is the
fenced output of `deadrelu COMMAND --help` at a fixed width, so the reference never drifts from the
code; `tests/test_docs.py` fails when it does.

Usage: python docs/tools/cli_help.py [--check]
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys

CLI_DOC = os.path.join(os.path.dirname(__file__), os.pardir, "cli.md")
WIDTH = "100"
BLOCK = re.compile(r"(<!-- help:(?P<command>[a-z]*) -->\n```\n)(?P<body>.*?)(```)", re.S)


def help_text(command: str) -> str:
    """What `deadrelu COMMAND --help` prints, at the docs' width."""
    from deadrelu.cli import main

    argv = [command, "--help"] if command else ["--help"]
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            main(argv)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    shown = " ".join(["deadrelu", *argv])
    return f"$ {shown}\n{out.getvalue().rstrip()}\n"


def regenerate(text: str) -> str:
    """`text` (docs/cli.md) with every help block replaced by the current output."""
    return BLOCK.sub(lambda m: m.group(1) + help_text(m.group("command")) + m.group(4), text)


def main() -> int:
    with open(CLI_DOC, encoding="utf-8") as f:
        text = f.read()
    new = regenerate(text)
    if "--check" in sys.argv[1:]:
        print("docs/cli.md is up to date" if new == text else "docs/cli.md is stale: run docs/tools/cli_help.py")
        return int(new != text)
    with open(CLI_DOC, "w", encoding="utf-8") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
