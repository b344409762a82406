"""Output that explains itself: a collapsed model (a site 100% dead) is the headline of every view,
`report --compare` ends in a computed verdict, and a site is found by path or by index."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.views.terminal import collapse_line, markdown_table

L = keras.layers


def _model(dead_bias: float):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, activation="relu", name="h1"),
            L.Dense(5, activation="relu", name="h2"),
            L.Dense(2),
        ]
    )
    kernel, bias = model.get_layer("h2").get_weights()
    bias[:] = dead_bias
    model.get_layer("h2").set_weights([kernel, bias])
    return model


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(50, 6)).astype("float32")


def test_a_fully_dead_site_is_the_headline_of_every_view(x, tmp_path, run_cli):
    model = _model(-100.0)
    report = deadrelu.scan(model, x)
    assert report.collapsed == ["h2"] and report.site("h2").dead == list(range(5))
    headline = collapse_line(report)
    assert headline.startswith("collapsed: site 'h2' is 100% dead on 50 samples")
    assert markdown_table(report).startswith(f"**{headline}**")
    html = report._repr_html_()
    assert "collapsed: site" in html and html.index("collapsed: site") < html.index(" units dead")
    from deadrelu.views.html import render_html

    text = render_html(report, site_figures=0)
    assert text.index("collapsed: site") < text.index('class="summary')
    path = tmp_path / "m.keras"
    model.save(path)
    np.savez(tmp_path / "x.npz", x=x)
    code, out, err = run_cli(["scan", path, "--data", tmp_path / "x.npz"])
    lines = (out + err).splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("collapsed:"))
    summary = next(i for i, line in enumerate(lines) if " units dead (" in line)
    assert code == 0 and first < summary
    # With the cause analysis too, first; the finding stays in the JSON and the findings list.
    why = deadrelu.scan(model, x, why=True)
    assert markdown_table(why).startswith("**collapsed: site 'h2'")
    assert any(f.get("kind") == "dead_site" for f in why.to_dict()["why"]["findings"])


def test_no_headline_while_a_unit_of_every_site_fires(x):
    report = deadrelu.scan(_model(0.0), x)
    assert report.collapsed == [] and collapse_line(report) is None
    assert "collapsed" not in markdown_table(report) and "collapsed:" not in report._repr_html_()


def test_report_compare_ends_in_a_computed_verdict(x):
    from deadrelu.compare import compare_reports

    worse = deadrelu.scan(_model(-100.0), x)  # h2 all dead
    better = deadrelu.scan(_model(0.0), x)
    dead_worse = sum(len(s.dead) for s in worse.sites)
    dead_better = sum(len(s.dead) for s in better.sites)
    assert dead_worse > dead_better
    diff = compare_reports(better, worse)
    total = sum(s.units for s in better.sites)
    assert diff.verdict == (
        f"better: {dead_worse:,} → {dead_better:,} dead units on the {len(better.sites)} matched sites "
        f"(−{dead_worse - dead_better:,}; {dead_worse / total:.1%} → {dead_better / total:.1%} of their units)"
    )
    assert compare_reports(worse, better).verdict.startswith(f"worse: {dead_better:,} → {dead_worse:,} dead units")
    assert compare_reports(worse, worse).verdict.startswith("no better: ")
    assert diff.to_dict()["verdict"] == diff.verdict


def test_a_site_is_found_by_path_or_by_index(x):
    report = deadrelu.scan(_model(-100.0), x)
    assert report.site(1) is report.site("h2") is report.sites[1] and report.site(-1) is report.sites[-1]
    with pytest.raises(KeyError, match="no site at index 5: the report has 2 sites"):
        report.site(5)
    with pytest.raises(KeyError, match="no site 'h9'"):
        report.site("h9")
