"""The HTML report: one self-contained, well-formed page with every site, figure and piece of provenance."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import pytest
from PIL import Image

from deadrelu.cli import main
from deadrelu.compare import compare_reports
from deadrelu.html import render_html
from test_plots import make_report, planted_pair


class Page(HTMLParser):
    """Collects what the tests look at: text, tags, image sources, table rows and their classes."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[str] = []
        self.row_classes: list[str] = []
        self.chunks: list[str] = []
        self.attribute_values: list[str] = []
        self.feed(text)
        self.close()
        self.text = " ".join(self.chunks)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.attribute_values += [v or "" for v in attrs.values()]
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "tr":
            self.row_classes.append(attrs.get("class") or "")

    def handle_data(self, data):
        self.chunks.append(data)


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
    flagged = sum(site.flagged for site in tricky_report.sites)
    assert flagged and page.row_classes.count("flagged") >= flagged
    for needle in (
        "Settings",
        "Provenance",
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
