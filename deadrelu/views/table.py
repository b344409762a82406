"""One small table model for every view: a `Table` is built once from a result, then rendered.

A view builds a `Table` (titled `Column`s, `Row`s of `Cell`s, a caption below) and one of three
renderers turns it into the terminal's `rich.table.Table` (`to_rich`), HTML (`to_html`: a notebook
fragment with inline styles, or rows for the report page's style sheet) or GitHub markdown
(`to_markdown`). Cells carry a meaning, not a colour (`"bad"`, `"warn"`, `"good"`, `"best"`,
`"muted"`); each renderer says it its own way: bold red in a terminal, a red cell in HTML, bold in
markdown. Every text is escaped for its target: rich markup, HTML, markdown.

Example:

```python
table = Table("dead units", [Column("site path", code=True), Column("dead", numeric=True)])
table.add_row("dense/relu", Cell("12", "bad"))
print(to_markdown(table))
```
"""

from __future__ import annotations

import dataclasses
import html
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover - rich is imported when a table is drawn, not when this module is
    import rich.table

Style = Literal["", "bad", "warn", "good", "best", "muted"]
"""What a cell means: `"bad"` (flagged, lost, diverged), `"warn"` (worth a look), `"good"` (healthy),
`"best"` (the winner of a comparison), `"muted"` (secondary or missing), `""` (plain)."""

RED, ORANGE, GREEN, GREY = "#c0392b", "#b9770e", "#1e8449", "#6c757d"
"""The HTML colours of `"bad"`, `"warn"`, `"good"` and `"muted"`."""

CELL_CSS = "padding:2px 8px;border-bottom:1px solid #e3e3e3;vertical-align:top"
"""Inline style of every cell of a notebook table."""

MONO_CSS = "font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:12px"
"""Inline style of code (site paths) in a notebook table."""

RICH_STYLES: dict[str, str] = {
    "bad": "bold red",
    "warn": "yellow",
    "good": "green",
    "best": "bold green",
    "muted": "dim",
}
"""The terminal's rich style of each `Style`."""

HTML_STYLES: dict[str, str] = {
    "bad": f"color:{RED};font-weight:600",
    "warn": f"color:{ORANGE}",
    "good": f"color:{GREEN}",
    "best": f"color:{GREEN};font-weight:600",
    "muted": f"color:{GREY}",
}
"""The inline CSS of each `Style` in a notebook table."""

HTML_CLASSES: dict[str, str] = {"bad": "bad", "warn": "warn", "good": "ok", "best": "best", "muted": "muted"}
"""The report page's CSS class of each `Style` (its style sheet defines them)."""


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a `Table`.

    Attributes:
        title: The header.
        numeric: Right-aligned (numbers); markdown aligns it right too.
        code: A path or name: monospace in HTML, free to break after each "/", `code` in markdown,
            folded (never cut) in a narrow terminal.
        fit: Terminal only: longer texts are shortened from the middle to this many characters
            (`shorten`); HTML and markdown show them whole.
        style: The style of every cell of this column that has none of its own.
        long_title: The header where width does not matter: markdown, and the tooltip of the HTML
            header. Defaults to `title`.
        nowrap: HTML: keep each text on one line (short labels such as "✗ flagged"); numeric
            columns never break either.
    """

    title: str
    numeric: bool = False
    code: bool = False
    fit: int | None = None
    style: Style = ""
    long_title: str = ""
    nowrap: bool = False

    @property
    def full_title(self) -> str:
        """`long_title`, else `title`."""
        return self.long_title or self.title


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of a `Table`.

    Attributes:
        text: What the cell shows.
        style: What it means (`Style`); empty for the row's or the column's style.
        full: The whole text when `text` elides some (e.g. a long list of unit indices): HTML shows it
            behind a `<details>`; the terminal and markdown show `text`.
    """

    text: str
    style: Style = ""
    full: str = ""


@dataclasses.dataclass
class Row:
    """One row of a `Table`: its cells and a style for those that have none of their own."""

    cells: list[Cell]
    style: Style = ""


@dataclasses.dataclass
class Table:
    """A table, built once and rendered by `to_rich`, `to_html` and `to_markdown`.

    Attributes:
        title: Shown above the table in a terminal; HTML and markdown leave it to the text around it.
        columns: The columns, in order.
        rows: The rows; `add_row` appends one.
        caption: A line below the table (e.g. how many rows are not shown).
    """

    title: str
    columns: list[Column]
    rows: list[Row] = dataclasses.field(default_factory=list)
    caption: str = ""

    def add_row(self, *cells: Cell | str, style: Style = "") -> None:
        """Appends a row; plain strings become unstyled cells.

        Args:
            *cells: One `Cell` (or string) per column.
            style: The style of the cells without their own.

        Raises:
            ValueError: When the number of cells is not the number of columns.
        """
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title!r}: a row of {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(Row([cell if isinstance(cell, Cell) else Cell(str(cell)) for cell in cells], style))


def shorten(path: str, width: int = 48) -> str:
    """Shortens a long site path from the middle, keeping its first and last parts.

    Args:
        path: The text.
        width: The longest result, "…" included.

    Returns:
        `path` itself when it fits, else its head, "…" and its tail.
    """
    if len(path) <= width:
        return path
    keep = width - 1
    head = keep // 3
    return f"{path[:head]}…{path[-(keep - head) :]}"


def _style(cell: Cell, row: Row, column: Column) -> str:
    """The style that applies to a cell: its own, else its row's, else its column's."""
    return cell.style or row.style or column.style


# -- the terminal ---------------------------------------------------------------------------


def to_rich(table: Table) -> rich.table.Table:
    """The table for a rich console: title above, caption below, bold header, styles in colour.

    Args:
        table: The table.

    Returns:
        A `rich.table.Table`; no text of the table is read as rich markup.
    """
    import rich.table
    from rich.markup import escape
    from rich.text import Text

    title = escape(table.title) if table.title else None
    out = rich.table.Table(title=title, title_justify="left", header_style="bold")
    for column in table.columns:
        out.add_column(
            escape(column.title),
            justify="right" if column.numeric else "left",
            style=RICH_STYLES.get(column.style, ""),
            overflow="fold" if column.code else "ellipsis",
        )
    for row in table.rows:
        cells = []
        for cell, column in zip(row.cells, table.columns):
            text = shorten(cell.text, column.fit) if column.fit else cell.text
            cells.append(Text(text, style=RICH_STYLES.get(cell.style, "")))
        out.add_row(*cells, style=RICH_STYLES.get(row.style) or None)
    if table.caption:
        out.caption = escape(table.caption)
    return out


# -- HTML -----------------------------------------------------------------------------------


def escape_html(value: object) -> str:
    """Any value as HTML text or attribute value, escaped (`None` is empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def path_html(path: str) -> str:
    """A site path, escaped, free to break after each "/" of a nested path."""
    return "/<wbr>".join(escape_html(part) for part in str(path).split("/"))


def to_html(table: Table, *, inline: bool = False) -> str:
    """The table as an HTML `<table>`, every text escaped; the caption below it, no title.

    Args:
        table: The table.
        inline: Style every element itself, for a notebook fragment that has no style sheet. Without
            it, cells get class names for the report page's style sheet: `n` (numeric), `path`
            (code), `nowrap` and one per style (`HTML_CLASSES`).

    Returns:
        The HTML text. `<tr>` tags carry no attributes: a row's style is given to each of its cells.
    """
    head = "".join(_th(column, inline) for column in table.columns)
    body = "".join(
        "<tr>" + "".join(_td(cell, column, row, inline) for cell, column in zip(row.cells, table.columns)) + "</tr>"
        for row in table.rows
    )
    caption = ""
    if table.caption:
        css = ' class="muted"'
        if inline:
            css = f' style="caption-side:bottom;text-align:left;padding:.2em 0;color:{GREY}"'
        caption = f"<caption{css}>{escape_html(table.caption)}</caption>"
    attrs = ' style="border-collapse:collapse;margin:0 0 .5em;font-size:12.5px"' if inline else ""
    return f"<table{attrs}>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _th(column: Column, inline: bool) -> str:
    tip = f' title="{escape_html(column.long_title)}"' if column.long_title else ""
    if inline:
        align = "right" if column.numeric else "left"
        attrs = f' style="{CELL_CSS};text-align:{align};background:#f4f5f7"'
    else:
        attrs = ' class="n"' if column.numeric else ""
    return f"<th{attrs}{tip}>{escape_html(column.title)}</th>"


def _td(cell: Cell, column: Column, row: Row, inline: bool) -> str:
    style = _style(cell, row, column)
    content = path_html(cell.text) if column.code else escape_html(cell.text)
    if cell.full and cell.full != cell.text:
        content = f"<details><summary>{content}</summary><code>{escape_html(cell.full)}</code></details>"
    if inline:
        css = [CELL_CSS, f"text-align:{'right' if column.numeric else 'left'}"]
        css += ["white-space:nowrap"] if column.numeric or column.nowrap else []
        css += [MONO_CSS] if column.code else []
        css += [HTML_STYLES[style]] if style else []
        return f'<td style="{";".join(css)}">{content}</td>'
    classes = [name for name, on in (("n", column.numeric), ("path", column.code), ("nowrap", column.nowrap)) if on]
    classes += [HTML_CLASSES[style]] if style else []
    if classes:
        return f'<td class="{" ".join(classes)}">{content}</td>'
    return f"<td>{content}</td>"


# -- markdown -------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = "\\`*_[]<>|"


def _markdown_text(text: str) -> str:
    text = " ".join(text.split())
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


def _markdown_code(text: str) -> str:
    # Inside a table, a "|" ends the cell even in a code span unless escaped (GitHub's rule).
    text = " ".join(text.split()).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def to_markdown(table: Table) -> str:
    """The table as GitHub markdown: long titles, code columns in backticks, "bad" and "best" cells bold.

    Args:
        table: The table.

    Returns:
        The markdown lines (header, alignment, one line per row; the caption after a blank line),
        ending in a newline. The title is left to the text around it.
    """
    lines = [
        "| " + " | ".join(_markdown_text(column.full_title) for column in table.columns) + " |",
        "|" + "|".join("---:" if column.numeric else "---" for column in table.columns) + "|",
    ]
    for row in table.rows:
        cells = []
        for cell, column in zip(row.cells, table.columns):
            text = _markdown_code(cell.text) if column.code and cell.text else _markdown_text(cell.text)
            cells.append(f"**{text}**" if text and _style(cell, row, column) in ("bad", "best") else text)
        lines.append("| " + " | ".join(cells) + " |")
    if table.caption:
        lines += ["", _markdown_text(table.caption)]
    return "\n".join(lines) + "\n"
