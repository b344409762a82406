"""The HTML report: one self-contained, well-formed page with every site, figure and piece of provenance."""

from __future__ import annotations

import base64
import dataclasses
import io
from html.parser import HTMLParser

import pytest
from PIL import Image

from deadrelu.cli import main
from deadrelu.compare import compare_reports
from deadrelu.views.html import render_html
from test_plots import make_report, planted_pair


@dataclasses.dataclass
class HtmlCell:
    """A `<th>` or `<td>` as a browser shows it: its text (a `<details>` shows its summary only),
    its class names and its inline style."""

    text: str = ""
    classes: set[str] = dataclasses.field(default_factory=set)
    style: str = ""
    title: str = ""


class Page(HTMLParser):
    """Collects what the tests look at: text (a `<wbr>` joins, as in a browser), tags, image sources,
    attribute values and every table as rows of `HtmlCell`s (header row first)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[str] = []
        self.chunks: list[str] = []
        self.attribute_values: list[str] = []
        self.tables: list[list[list[HtmlCell]]] = []
        self.captions: list[str] = []
        self._glue = False
        self._cell: HtmlCell | None = None
        self._hidden = 0  # inside a <details> but outside its <summary>
        self._caption: list[str] | None = None
        self.feed(text)
        self.close()
        self.text = " ".join(self.chunks)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.attribute_values += [v or "" for v in attrs.values()]
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = HtmlCell(
                classes=set((attrs.get("class") or "").split()),
                style=attrs.get("style") or "",
                title=attrs.get("title") or "",
            )
            self.tables[-1][-1].append(self._cell)
        elif tag == "details":
            self._hidden += 1
        elif tag == "summary":
            self._hidden -= 1
        elif tag == "caption":
            self._caption = []
        self._glue = tag == "wbr"

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = None
        elif tag == "summary":
            self._hidden += 1
        elif tag == "details":
            self._hidden -= 1
        elif tag == "caption" and self._caption is not None:
            self.captions.append("".join(self._caption))
            self._caption = None

    def handle_data(self, data):
        if self._glue and self.chunks:
            self.chunks[-1] += data
        else:
            self.chunks.append(data)
        self._glue = False
        if self._cell is not None and not self._hidden:
            self._cell.text += data
        if self._caption is not None:
            self._caption.append(data)

    def table(self, first_header: str) -> list[list[HtmlCell]]:
        """The first table whose header row starts with this title."""
        return next(t for t in self.tables if t and t[0] and t[0][0].text == first_header)


def assert_self_contained(text: str, page: Page) -> None:
    assert "http://" not in text and "https://" not in text
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    for value in page.attribute_values:
        assert not value.startswith(("//", "file:")), value
    for src in page.images:  # every embedded image is a real PNG
        png = base64.b64decode(src.split(",", 1)[1])
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


@pytest.fixture(scope="module")
def tricky_report():
    """Gradients, a dead site, and paths that must be escaped."""
    paths = ["enc<1>/conv&a", 'dec/"quoted"/relu', "<script>alert(1)</script>", "plain/conv2d_3"]
    return make_report(4, gradients=True, seed=5, paths=paths)


def test_html_is_self_contained_and_lists_every_site(tricky_report):
    text = render_html(tricky_report, site_figures=2)
    page = Page(text)
    assert_self_contained(text, page)
    assert "script" not in page.tags  # the path "<script>…" was escaped, not injected
    for site in tricky_report.sites:
        assert site.path in page.text
    # overview, unit map, histogram, then the 2 worst sites' unit figures
    assert len(page.images) == 3 + 2
    # Every site in model order, flagged ones with a red flag cell.
    rows = page.table("#")[1:]
    assert [row[1].text for row in rows] == [site.path for site in tricky_report.sites]
    flags = [row[-1] for row in rows]
    assert [flag.text for flag in flags] == ["✗ flagged" if s.flagged else "ok" for s in tricky_report.sites]
    assert ["bad" in flag.classes for flag in flags] == [site.flagged for site in tricky_report.sites]
    assert any(site.flagged for site in tricky_report.sites) and not all(s.flagged for s in tricky_report.sites)
    for needle in (
        "Settings and provenance",
        "sha256",
        tricky_report.model["sha256"],
        "data/x.npz",
        "synthetic test report",
        "Weight gradients",
        "flag_threshold",
    ):
        assert needle in page.text, needle


def test_html_with_a_diff_has_the_diff_section():
    new, old, _planted = planted_pair()
    diff = compare_reports(new, old)
    text = render_html(new, diff=diff, site_figures=0)
    page = Page(text)
    assert_self_contained(text, page)
    assert "Compared with an earlier report" in page.text
    assert "only in the new report" in page.text and "only in the old report" in page.text
    assert len(page.images) == 3 + 1  # the three report figures and the diff figure


def test_cli_report_html(tmp_path, capfd):
    report = make_report(2, seed=9)
    report.to_json(str(tmp_path / "scan.json"))
    code = main(["report", str(tmp_path / "scan.json"), "--html", str(tmp_path / "report.html"), "--quiet"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "dead ReLU scan" in out  # the table is printed as well
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert_self_contained(text, page)
    assert len(page.images) == 3 + len(report.sites)
    assert all(site.path in page.text for site in report.sites)


@pytest.mark.slow
def test_cli_report_compare_with_html(tmp_path, capfd):
    new, old, planted = planted_pair()
    new.to_json(str(tmp_path / "new.json"))
    old.to_json(str(tmp_path / "old.json"))
    code = main(
        [
            "report",
            str(tmp_path / "new.json"),
            "--compare",
            str(tmp_path / "old.json"),
            "--html",
            str(tmp_path / "diff.html"),
            "--quiet",
        ]
    )
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "newly dead" in out
    text = (tmp_path / "diff.html").read_text(encoding="utf-8")
    page = Page(text)
    assert_self_contained(text, page)
    assert len(page.images) == 3 + len(new.sites) + 1
    assert "Compared with an earlier report" in page.text
    for path, (_newly, _) in planted.items():
        assert path in page.text
