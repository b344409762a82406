"""The table model: one `Table` rendered for the terminal, HTML and markdown shows the same cells,
escaped for each; and the terminal, notebook, page and markdown views of one report show the same rows."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from deadrelu.compare import compare_reports
from deadrelu.views import notebook, terminal
from deadrelu.views.html import render_html
from deadrelu.views.table import RED, Cell, Column, Table, shorten, to_html, to_markdown, to_rich
from test_html import Page
from test_plots import make_report, planted_pair

SCRIPT_PATH = "enc/<script>alert(1)</script>/relu"


def rich_rows(renderable, width: int = 250) -> list[list[str]]:
    """The rows of a rich table as printed (header first): the text between the │ and ┃ borders."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    rows = []
    for line in console.file.getvalue().splitlines():
        if line.startswith(("│", "┃")):
            rows.append([cell.strip() for cell in re.split("[│┃]", line)[1:-1]])
    return rows


def markdown_rows(text: str) -> list[list[str]]:
    """The rows of a markdown table (header first, the alignment row left out), each cell as GitHub
    shows it: bold, backticks and backslash escapes removed."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        rows.append([_unmarkdown(cell.strip()) for cell in cells])
    return rows


def _unmarkdown(cell: str) -> str:
    if cell.startswith("**") and cell.endswith("**"):
        cell = cell[2:-2]
    if cell.startswith("`"):
        return cell.strip("`").strip().replace("\\|", "|")
    return re.sub(r"\\(.)", r"\1", cell)


@pytest.fixture
def table() -> Table:
    table = Table(
        "three sites",
        [
            Column("site path", code=True, fit=20),
            Column("dead", numeric=True),
            Column("flag"),
            Column("indices", long_title="dead unit indices"),
        ],
        caption="1 more site <not shown>",
    )
    table.add_row(SCRIPT_PATH, Cell("12", "bad"), Cell("✗ flagged", "bad"), Cell("1–3, …", full="1–3, 7, 9"))
    table.add_row("pipe|and`tick", "0", Cell("ok", "good"), "–")
    table.add_row("[bold]markup", "3", Cell("dying", "warn"), "–", style="muted")
    return table


def test_one_table_rendered_three_ways(table):
    # The terminal: paths shortened to `fit` from the middle, numbers right-aligned, no markup read.
    rows = rich_rows(to_rich(table))
    assert rows == [
        ["site path", "dead", "flag", "indices"],
        [shorten(SCRIPT_PATH, 20), "12", "✗ flagged", "1–3, …"],
        ["pipe|and`tick", "0", "ok", "–"],
        ["[bold]markup", "3", "dying", "–"],
    ]
    assert shorten(SCRIPT_PATH, 20) == "enc/<s…/script>/relu"
    rendered = Console(file=io.StringIO(), width=250, color_system=None)
    rendered.print(to_rich(table))
    text = rendered.file.getvalue()
    assert "│   12 │" in text and "│    0 │" in text  # right-aligned in a column as wide as "dead"
    assert "1 more site <not shown>" in text

    # HTML: the whole text, escaped; classes for the page's style sheet.
    html = to_html(table)
    page = Page(html)
    assert "script" not in page.tags and "&lt;script&gt;" in html
    header, *body = page.tables[0]
    assert [cell.text for cell in header] == ["site path", "dead", "flag", "indices"]
    assert header[3].title == "dead unit indices" and header[1].classes == {"n"}
    assert [[cell.text for cell in row] for row in body] == [
        [SCRIPT_PATH, "12", "✗ flagged", "1–3, …"],
        ["pipe|and`tick", "0", "ok", "–"],
        ["[bold]markup", "3", "dying", "–"],
    ]
    assert body[0][0].classes == {"path"} and body[0][1].classes == {"n", "bad"} and body[1][2].classes == {"ok"}
    assert body[2][0].classes == {"path", "muted"} and body[2][2].classes == {"warn"}  # cell style over row style
    assert "<code>1–3, 7, 9</code>" in html  # the full text behind the elided one
    assert page.captions == ["1 more site <not shown>"]

    # A notebook fragment: inline styles, no class names.
    inline = Page(to_html(table, inline=True))
    cell = inline.tables[0][1][1]
    assert not cell.classes and "text-align:right" in cell.style and f"color:{RED}" in cell.style
    assert "text-align:left" in inline.tables[0][1][0].style and "monospace" in inline.tables[0][1][0].style

    # Markdown: long titles, right alignment, code in backticks, "bad" bold, escaped pipes.
    markdown = to_markdown(table)
    lines = markdown.splitlines()
    assert lines[1] == "|---|---:|---|---|"
    assert f"`{SCRIPT_PATH}`" in lines[2] and "**12**" in lines[2] and "**✗ flagged**" in lines[2]
    assert "`` pipe\\|and`tick ``" in lines[3] and "\\[bold\\]markup" not in lines[4]  # code is not escaped
    assert markdown_rows(markdown) == [
        ["site path", "dead", "flag", "dead unit indices"],
        [SCRIPT_PATH, "12", "✗ flagged", "1–3, …"],
        ["pipe|and`tick", "0", "ok", "–"],
        ["[bold]markup", "3", "dying", "–"],
    ]
    assert lines[-1] == "1 more site \\<not shown\\>"


def test_a_row_must_have_a_cell_per_column(table):
    with pytest.raises(ValueError, match="a row of 2 cells for 4 columns"):
        table.add_row("a", "b")


def test_shorten_keeps_head_and_tail():
    assert shorten("short", 10) == "short"
    assert shorten("encoder/block_1/stage_2/conv", 12) == "enc…e_2/conv"


# -- one report, four views -----------------------------------------------------------------

PATHS = ["enc<1>/conv&a", "dec/[red]/relu", "<script>alert(1)</script>", "plain/conv2d_3", "b/c", "d"]


@pytest.fixture(scope="module")
def report():
    report = make_report(6, gradients=True, seed=5, paths=PATHS)
    report.sites[4].reached = False
    return report


def test_terminal_notebook_page_and_markdown_show_the_same_rows(report):
    terminal_rows = rich_rows(terminal.site_table(report))
    header, body = terminal_rows[0], terminal_rows[1:]
    assert [row[1] for row in body] == PATHS and "not reached" in [row[-1] for row in body]
    assert len(header) == 12  # with the gradient columns

    # The notebook: worst first, the same cells.
    worst_first = rich_rows(notebook.report_renderable(report))
    notebook_table = Page(notebook.report_html(report, figure=False)).tables[0]
    assert [[cell.text for cell in row] for row in notebook_table] == worst_first
    assert sorted(worst_first[1:]) == sorted(body) and worst_first[1:] != body

    # The page: model order, the same cells in the columns it shares with the terminal.
    page_table = Page(render_html(report, site_figures=0)).table("#")
    titles = [cell.text for cell in page_table[0]]
    assert set(header) < set(titles) and "dead units" in titles
    shared = [[row[titles.index(title)].text for title in header] for row in page_table[1:]]
    assert shared == body

    # Markdown: the same cells under the long titles.
    md = markdown_rows(terminal.markdown_table(report))
    assert md[1:] == body and md[0][7] == "saturated" and md[0][9] == "mean |∂ℓ/∂z|"

    # Flagged sites are red in both HTML views.
    flagged = [row for row in page_table[1:] if row[-1].text == "✗ flagged"]
    assert flagged and all("bad" in row[-1].classes for row in flagged)
    assert all(f"color:{RED}" in row[-1].style for row in notebook_table[1:] if row[-1].text == "✗ flagged")


def test_the_views_of_a_diff_show_the_same_rows():
    new, old, _planted = planted_pair()
    diff = compare_reports(new, old)
    rows = rich_rows(terminal.diff_table(diff))
    assert rows[0][-2:] == ["newly dead", "recovered"] and len(rows) == 1 + len(diff.sites) + 2
    page = Page(render_html(new, diff=diff, site_figures=0)).table("site path")
    assert [[cell.text for cell in row] for row in page] == rows
    assert markdown_rows(terminal.diff_markdown(diff)) == rows


def test_the_views_of_a_timeline_show_the_same_rows(report):
    from deadrelu.timeline import make_check

    first = make_check(report, None, epoch=1, step=10)
    second = make_check(report, first, epoch=2, step=20)
    second.action = "revive"
    checks = [first, second, make_check(report, second, epoch=3, step=30)]
    rows = rich_rows(notebook.timeline_renderable(checks, rows=2))
    assert [row[0] for row in rows] == ["epoch", "2", "3"] and rows[1][-1] == "revive"
    html = Page(notebook.timeline_html(checks, rows=2, figure=False))
    assert [[cell.text for cell in row] for row in html.tables[0]] == rows
    assert all(f"color:{RED}" in cell.style for cell in html.tables[0][1])  # the check after which it acted
    assert html.captions == ["1 earlier checks not shown (monitor.timeline has them)"]
