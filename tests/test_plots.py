"""Figures and the report diff: PNGs that open, have a sane size and show what they claim; exact diffs.

Reports are built directly from numpy arrays (no TensorFlow), except one end-to-end `scan --plot-dir`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from deadrelu.compare import compare_reports, compress_indices
from deadrelu.report import Report, SiteReport
from deadrelu.views import plots
from paths import SAMPLES

# -- synthetic reports ----------------------------------------------------------------------


def make_site(
    rng: np.random.Generator,
    path: str,
    units: int,
    *,
    dead: int = 0,
    dying: int = 0,
    positions: int = 1,
    gradients: bool = False,
    layer: str = "Dense",
) -> SiteReport:
    """A site with exactly `dead` dead and `dying` dying units (chosen at random), the rest healthy."""
    order = rng.permutation(units)
    dead_idx, dying_idx = np.sort(order[:dead]), np.sort(order[dead : dead + dying])
    samples = 200 * positions
    fires = rng.integers(samples // 10, samples, units)
    fires[dying_idx] = rng.integers(1, max(2, samples // 200), dying_idx.size)
    fires[dead_idx] = 0
    rate = fires / samples
    extra = {}
    if gradients:
        grad = rng.lognormal(-6.0, 1.0, units) * (rate > 0)
        extra = {"grad_mean_abs": grad, "grad_zero_rate": 1.0 - rate}
    return SiteReport(
        path=path,
        layer=layer,
        kind="fused",
        params={"activation": "relu"},
        units=units,
        positions=positions,
        calls=1,
        dead=[int(i) for i in dead_idx],
        dying=[int(i) for i in dying_idx],
        saturated=[],
        flagged=dead / units >= 0.1,
        fires=fires.astype(np.int64),
        active_rate=rate,
        sample_active_rate=np.minimum(rate * 2, 1.0),
        mean_abs=rate,
        dormancy=rate / max(float(rate.mean()), 1e-12),
        max_output=rate * 3.0,
        **extra,
    )


def make_report(
    count: int = 3, *, dead: bool = True, gradients: bool = False, seed: int = 0, paths: list[str] | None = None
) -> Report:
    """A report of `count` sites with long nested paths; some sites have dead units unless `dead=False`."""
    rng = np.random.default_rng(seed)
    sites = []
    for i in range(count):
        units = int(rng.choice([8, 16, 64, 256]))
        share = float(rng.choice([0.0, 0.05, 0.3, 0.8])) if dead else 0.0
        path = paths[i] if paths else f"encoder/block_{i // 4}/stage_{i % 4}/conv2d_{i}"
        sites.append(
            make_site(
                rng,
                path,
                units,
                dead=int(share * units) or (1 if dead and i == 0 else 0),
                dying=1 if units > 8 else 0,
                positions=int(rng.choice([1, 49])),
                gradients=gradients,
                layer="Conv2D",
            )
        )
    layer_gradients = None
    if gradients:
        layer_gradients = [
            {
                "path": s.path,
                "layer": s.layer,
                "params": 1000,
                "grad_norm": float(rng.lognormal(-2, 1)),
                "weight_norm": 10.0,
                "ratio": 0.01,
            }
            for s in sites
        ]
    return Report(
        model={"path": "models/net.keras", "name": "net", "sha256": "ab" * 32, "format": "keras", "repairs": []},
        data={"source": "data/x.npz", "samples": 200, "synthetic": False},
        settings={"batch_size": 32, "dying_threshold": 0.01, "flag_threshold": 0.1},
        sites=sites,
        layer_gradients=layer_gradients,
        notes=["synthetic test report"],
    )


# -- PNG checks -----------------------------------------------------------------------------


@dataclasses.dataclass
class Png:
    width: int
    height: int
    colors: int
    red: int


def inspect_png(path) -> Png:
    """Opens a PNG with PIL; counts distinct colours and pixels of the 'dead' red."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    red = (rgb[..., 0] > 160) & (rgb[..., 1] < 100) & (rgb[..., 2] < 90)
    return Png(width=rgb.shape[1], height=rgb.shape[0], colors=len(np.unique(packed)), red=int(red.sum()))


def assert_picture(path, *, red: bool, min_size=(500, 250), max_size=(2000, 4000)) -> Png:
    png = inspect_png(path)
    assert min_size[0] <= png.width <= max_size[0] and min_size[1] <= png.height <= max_size[1], png
    assert png.colors > 50, f"{path} looks blank: {png}"
    assert (png.red > 20) if red else (png.red == 0), (
        f"{path}: red pixels {png.red}, expected {'some' if red else 'none'}"
    )
    return png


# -- layout ---------------------------------------------------------------------------------


def test_row_layout_grows_then_caps_and_thins_labels():
    small, large, huge = plots.row_layout(3), plots.row_layout(300), plots.row_layout(2000)
    assert small.height < large.height <= plots.MAX_HEIGHT and huge.height == plots.MAX_HEIGHT
    assert small.fontsize == 9 and small.step == 1
    assert 5 <= large.fontsize < 9 and large.step == 1
    assert huge.step > 1 and huge.fontsize == 5


def test_site_file_names_are_safe_and_unique():
    names = [plots.site_file_name(i, p) for i, p in enumerate(["a/b", "a_b", "../../etc/passwd", "x y:z*?", ""])]
    assert len(set(names)) == len(names)
    for name in names:
        assert name.startswith("site-") and name.endswith(".png")
        assert "/" not in name and ".." not in name and " " not in name
    assert names[0] == "site-000-a_b.png"


# -- figures --------------------------------------------------------------------------------


def test_overview_shows_red_only_when_units_are_dead(tmp_path):
    dead, clean = tmp_path / "dead.png", tmp_path / "clean.png"
    plots.plot_overview(make_report(3, gradients=True), str(dead))
    plots.plot_overview(make_report(3, dead=False), str(clean))
    with_gradients = assert_picture(dead, red=True)
    without = assert_picture(clean, red=False)
    assert with_gradients.width > without.width  # the gradient panels are there
    assert not list(tmp_path.glob(".deadrelu-*"))  # no temporary file left behind


def test_overview_of_300_sites_stays_a_sane_size(tmp_path):
    path = tmp_path / "big.png"
    report = make_report(300, gradients=True, seed=3)
    report.layer_gradients = None  # the per-layer panel is drawn in the small test; keep this one quick
    plots.plot_overview(report, str(path))
    png = assert_picture(path, red=True, min_size=(1000, 2000), max_size=(2000, int(plots.MAX_HEIGHT * plots.DPI)))
    assert png.height <= 40 * 100


def test_empty_report_still_draws(tmp_path):
    plots.plot_overview(make_report(0), str(tmp_path / "empty.png"))
    assert inspect_png(tmp_path / "empty.png").width > 0


def test_histogram_has_a_red_dead_bar_only_with_dead_units(tmp_path):
    plots.save_figure(plots.histogram_figure(make_report(4)), str(tmp_path / "dead.png"))
    plots.save_figure(plots.histogram_figure(make_report(4, dead=False)), str(tmp_path / "clean.png"))
    assert_picture(tmp_path / "dead.png", red=True)
    assert_picture(tmp_path / "clean.png", red=False)


def test_plot_dir_writes_every_figure_with_sanitized_names(tmp_path):
    report = make_report(1, paths=["enc/conv a"], seed=1)
    report.sites.append(make_site(np.random.default_rng(0), "enc/dense:b", 32))  # healthy: no red at all
    folder = tmp_path / "figs" / "run1"
    folder.parent.mkdir()
    written = plots.plot_site_dir(report, str(folder))
    names = [os.path.basename(p) for p in written]
    assert names == [
        "overview.png",
        "unit_map.png",
        "active_rates.png",
        "site-000-enc_conv_a.png",
        "site-001-enc_dense_b.png",
    ]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    for path in written:
        assert_picture(path, red=not path.endswith("site-001-enc_dense_b.png"))


def test_plot_dir_refuses_a_file(tmp_path):
    from deadrelu.errors import UsageError

    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError):
        plots.plot_site_dir(make_report(1), str(tmp_path / "file"))


# -- the diff -------------------------------------------------------------------------------


def planted_pair():
    """(new, old, planted): old and new reports with known newly dead and recovered units.

    Site 0 gains three dead units and loses one; every dead unit of site 1 revives; site 2 is renamed
    (only in one report each); site 3 changes its unit count (not compared unit by unit).
    """
    old = make_report(4, seed=7)
    old.sites[1] = make_site(np.random.default_rng(2), old.sites[1].path, 16, dead=5)
    new = copy.deepcopy(old)
    site = new.sites[0]
    alive = [u for u in range(site.units) if u not in site.dead]
    newly = sorted(alive[:3])
    recovered = sorted(site.dead[:1])
    site.dead = sorted(set(site.dead) - set(recovered) | set(newly))
    new.sites[1].dead = []
    planted = {old.sites[0].path: (newly, recovered), old.sites[1].path: ([], sorted(old.sites[1].dead))}
    new.sites[2] = dataclasses.replace(new.sites[2], path="decoder/new_layer")
    new.sites[3] = make_site(np.random.default_rng(1), old.sites[3].path, old.sites[3].units * 2, dead=2)
    return new, old, planted


def test_compare_finds_exactly_the_planted_changes():
    new, old, planted = planted_pair()
    diff = compare_reports(new, old)
    for path, (newly, recovered) in planted.items():
        assert diff.site(path).newly_dead == newly
        assert diff.site(path).recovered == recovered
    for site in diff.sites:
        if site.path not in planted:
            assert site.newly_dead == [] and site.recovered == []
    assert diff.only_new == ["decoder/new_layer"] and diff.only_old == [old.sites[2].path]
    changed = diff.site(old.sites[3].path)
    assert not changed.comparable and changed.units == 2 * changed.units_before
    assert any("unit count changed" in note for note in diff.notes)
    summary = diff.summary
    assert summary["newly_dead"] == sum(len(n) for n, _ in planted.values())
    assert summary["recovered"] == sum(len(r) for _, r in planted.values())
    assert json.loads(json.dumps(diff.to_dict()))["schema"] == "deadrelu/diff@2"


def test_compress_indices():
    assert compress_indices([]) == "–"
    assert compress_indices([1, 2, 3, 7, 9, 10]) == "1–3, 7, 9–10"
    long = compress_indices(list(range(0, 400, 2)), limit=20)
    assert long.endswith(")") and "… (+" in long


def test_diff_figure_shows_dead_and_recovered(tmp_path):
    new, old, _ = planted_pair()
    plots.plot_diff(compare_reports(new, old), str(tmp_path / "diff.png"))
    png = assert_picture(tmp_path / "diff.png", red=True)
    with Image.open(tmp_path / "diff.png") as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    green = (rgb[..., 1] > 150) & (rgb[..., 0] < 80) & (rgb[..., 2] < 120)
    assert green.sum() > 20 and png.colors > 50


# -- command line ---------------------------------------------------------------------------


def test_report_compare_cli_prints_table_and_writes_diff_and_figure(tmp_path, run_cli):
    new, old, planted = planted_pair()
    new.to_json(str(tmp_path / "new.json"))
    old.to_json(str(tmp_path / "old.json"))
    code, out, err = run_cli(
        [
            "report",
            tmp_path / "new.json",
            "--compare",
            tmp_path / "old.json",
            "--json",
            tmp_path / "diff.json",
            "--plot",
            tmp_path / "diff.png",
        ]
    )
    assert code == 0, err
    assert "newly dead" in out and "only in the new report" in out
    written = json.loads((tmp_path / "diff.json").read_text())
    for path, (newly, recovered) in planted.items():
        entry = next(s for s in written["sites"] if s["path"] == path)
        assert entry["newly_dead"] == newly and entry["recovered"] == recovered
    assert_picture(tmp_path / "diff.png", red=True)


def test_report_compare_missing_file_is_one_line_exit_2(tmp_path, run_cli):
    make_report(2).to_json(str(tmp_path / "new.json"))
    code, _out, err = run_cli(["report", tmp_path / "new.json", "--compare", tmp_path / "missing.json"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deadrelu: error:") and "missing.json" in lines[0]


def test_report_plot_dir_bad_parent_is_exit_2(tmp_path, run_cli):
    make_report(2).to_json(str(tmp_path / "new.json"))
    code, _, err = run_cli(["report", tmp_path / "new.json", "--plot-dir", tmp_path / "no" / "such" / "dir"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--plot-dir" in err


@pytest.mark.slow
def test_scan_plot_dir_end_to_end(tmp_path, run_cli):
    folder = tmp_path / "figures"
    code, out, err = run_cli(
        [
            "scan",
            SAMPLES / "dying_mlp.keras",
            "--data",
            SAMPLES / "probe.npz",
            "--samples",
            "200",
            "--plot-dir",
            folder,
            "--json",
            tmp_path / "scan.json",
            "--quiet",
        ]
    )
    assert code == 0, err
    report = Report.from_json(str(tmp_path / "scan.json"))
    expected = {"overview.png", "unit_map.png", "active_rates.png"} | {
        plots.site_file_name(i, s.path) for i, s in enumerate(report.sites)
    }
    assert {p.name for p in folder.iterdir()} == expected
    assert report.summary["dead"] > 0  # the sample model is built to have dead units
    assert "dead ReLU scan" in out  # the table is still printed
    for name in expected:
        assert_picture(folder / name, red=True)
