"""`repr` of a `Report` and a `SiteReport` is one short line, not pages of per-unit arrays."""

from __future__ import annotations

from pathlib import Path

import pytest

import deadrelu
from deadrelu.report import Report

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def report() -> Report:
    return deadrelu.scan(SAMPLES / "dying_mlp.keras", SAMPLES / "probe.npz")


def test_report_repr(report):
    text = repr(report)
    assert text == "<Report dying_mlp: 104/192 units dead (54.2%) in 3 sites, 1,000 samples>"
    assert len(text) < 200 and "\n" not in text
    assert repr(Report.from_dict(report.to_dict())) == text  # read back, the same line


def test_site_report_repr(report):
    site = report.sites[0]
    text = repr(site)
    assert text == "<SiteReport hidden_1 (Dense, fused): 48/64 units dead (75.0%), flagged>"
    assert len(text) < 200 and "\n" not in text
    assert str(site) == text
    # A list of sites prints one short line per site.
    assert len(repr(report.sites)) < 3 * 200


def test_long_paths_are_clipped_from_the_left(report):
    site = Report.from_dict(report.to_dict()).sites[1]
    site.path = "/".join(f"block_{i}" for i in range(40)) + "/hidden_2"
    text = repr(site)
    assert len(text) < 200 and text.startswith("<SiteReport …") and "/hidden_2 (Dense, fused): 21/64" in text
