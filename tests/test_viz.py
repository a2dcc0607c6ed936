"""Tests for gadlib.viz: read the drawn data back from the figures."""

from __future__ import annotations

import struct
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

from gadlib import viz


def _query(seed: int, height: int = 20, width: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[5:11, 8:16] = 1  # rows 5..10, columns 8..15
    anomaly_map = rng.random((height, width)) + mask
    return image, anomaly_map, mask


def _contours(ax) -> list[ContourSet]:
    return [c for c in ax.collections if isinstance(c, ContourSet)]


def test_overlay_heatmap_draws_image_heat_and_mask_outline() -> None:
    image, anomaly_map, mask = _query(0)
    ax = viz.overlay_heatmap(image, anomaly_map, mask=mask, alpha=0.4)
    assert ax.images[0].get_array().shape == (20, 30, 3)
    heat = ax.images[1]
    assert heat.get_array().shape == (20, 30)
    assert heat.get_alpha() == 0.4
    assert heat.get_clim() == pytest.approx((anomaly_map.min(), anomaly_map.max()))
    (contour,) = _contours(ax)
    vertices = np.concatenate([path.vertices for path in contour.get_paths() if len(path.vertices)])
    # The 0.5 level sits half a pixel outside the mask's pixel centres, all the way round.
    assert vertices[:, 0].min() == pytest.approx(7.5) and vertices[:, 0].max() == pytest.approx(15.5)
    assert vertices[:, 1].min() == pytest.approx(4.5) and vertices[:, 1].max() == pytest.approx(10.5)


def test_overlay_heatmap_grey_image_no_mask_and_given_axes() -> None:
    _, anomaly_map, _ = _query(1)
    ax = Figure().add_subplot()
    returned = viz.overlay_heatmap(np.zeros((20, 30)), anomaly_map, vmin=0.0, vmax=3.0, ax=ax)
    assert returned is ax
    assert ax.images[1].get_clim() == (0.0, 3.0)
    assert _contours(ax) == []
    # An all-normal mask has nothing to outline.
    viz.overlay_heatmap(np.zeros((20, 30)), anomaly_map, mask=np.zeros((20, 30)), ax=ax)
    assert _contours(ax) == []


def test_overlay_heatmap_rejects_mismatched_shapes() -> None:
    image, anomaly_map, mask = _query(0)
    with pytest.raises(ValueError, match=r"\(10, 15\).*\(20, 30\).*upsample"):
        viz.overlay_heatmap(image, anomaly_map[::2, ::2])
    with pytest.raises(ValueError, match="mask"):
        viz.overlay_heatmap(image, anomaly_map, mask=mask[:5])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        viz.overlay_heatmap(np.zeros((20, 30, 4)), anomaly_map)


@pytest.mark.parametrize("shared_scale", [True, False])
def test_heatmap_grid_layout_and_colour_scale(shared_scale: bool) -> None:
    queries = [_query(seed) for seed in range(5)]
    maps = [q[1] * (seed + 1) for seed, q in enumerate(queries)]  # different ranges per query
    fig = viz.heatmap_grid(
        [q[0] for q in queries], maps, masks=[q[2] for q in queries], titles=list("abcde"),
        ncols=2, shared_scale=shared_scale,
    )
    grid_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(grid_axes) == 3 * 2 * 2  # 3 rows of 2 (image, overlay) pairs
    overlays = [ax for ax in grid_axes if len(ax.images) == 2]
    assert len(overlays) == 5
    assert [ax.get_title(loc="left") for ax in grid_axes if len(ax.images) == 1] == list("abcde")
    assert all(len(_contours(ax)) == 1 for ax in overlays)
    clims = [ax.images[1].get_clim() for ax in overlays]
    if shared_scale:
        expected = (min(m.min() for m in maps), max(m.max() for m in maps))
        assert all(clim == pytest.approx(expected) for clim in clims)
        assert len(fig.axes) == len(grid_axes) + 1  # one colour bar
    else:
        assert clims == [pytest.approx((m.min(), m.max())) for m in maps]
        assert len(fig.axes) == len(grid_axes)


def test_heatmap_grid_rejects_length_mismatch() -> None:
    image, anomaly_map, _ = _query(0)
    with pytest.raises(ValueError, match="one map per image"):
        viz.heatmap_grid([image, image], [anomaly_map])


def _scores_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for domain in ("industrial", "medical"):
        for label in (0, 1):
            rows += [{"domain": domain, "label": label, "score": s} for s in rng.normal(label * 2, 1, 40)]
    return pd.DataFrame(rows)


def test_score_distributions_facets_by_domain() -> None:
    fig = viz.score_distributions(_scores_frame(), by="domain")
    assert [ax.get_title() for ax in fig.axes] == ["domain = industrial", "domain = medical"]
    for ax in fig.axes:
        assert len(ax.patches) + len(ax.collections) >= 2  # a histogram per class
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["normal", "anomalous"]
        assert len(ax.lines) == 2  # one KDE per class
    assert len(viz.score_distributions(_scores_frame()).axes) == 1


def test_score_distributions_bad_input() -> None:
    with pytest.raises(ValueError, match="lacks column"):
        viz.score_distributions(_scores_frame(), score_col="image_score")
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        viz.score_distributions(_scores_frame().assign(label=2))


def _tidy() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method in ("knn", "resad"):
        for shots in (1, 2, 4, 8):
            for seed in range(3):
                for category in ("bottle", "cable"):
                    for metric in ("image_auroc", "pixel_auroc"):
                        rows.append(dict(
                            dataset="mvtec", category=category, domain="industrial", method=method,
                            shots=shots, abnormal_shots=0, seed=seed, metric=metric,
                            value=0.6 + 0.03 * np.log2(shots) + 0.1 * rng.random(),
                        ))
    return pd.DataFrame(rows)


def test_metric_vs_shots_plots_seed_means_and_stds() -> None:
    tidy = _tidy()
    reference = pd.DataFrame({"shots": [2, 4, 8], "value": [0.7, 0.72, 0.75], "label": "InCTRL (published)"})
    fig = viz.metric_vs_shots(tidy, metric="image_auroc", reference=reference)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == [1, 2, 4, 8]
    drawn = {c.get_label(): c for c in ax.containers}
    assert set(drawn) == {"knn", "resad"}
    for method, container in drawn.items():
        expected_mean, expected_std = [], []
        for shots in (1, 2, 4, 8):
            per_seed = []
            for seed in range(3):
                values = [r.value for r in tidy.itertuples()
                          if r.method == method and r.shots == shots and r.seed == seed and r.metric == "image_auroc"]
                per_seed.append(sum(values) / len(values))
            expected_mean.append(np.mean(per_seed))
            expected_std.append(np.std(per_seed, ddof=1))
        x, y = container.lines[0].get_data()
        np.testing.assert_allclose(x, [1, 2, 4, 8])
        np.testing.assert_allclose(y, expected_mean)
        segments = np.array(container.lines[2][0].get_segments())  # vertical error bars
        np.testing.assert_allclose(segments[:, 0, 1], np.array(expected_mean) - expected_std)
        np.testing.assert_allclose(segments[:, 1, 1], np.array(expected_mean) + expected_std)
    (ref_line,) = [line for line in ax.lines if line.get_label() == "InCTRL (published)"]
    assert ref_line.get_linestyle() == "--" and ref_line.get_marker() == "s"
    np.testing.assert_allclose(ref_line.get_ydata(), [0.7, 0.72, 0.75])
    assert "InCTRL (published)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_metric_vs_shots_facets_and_guards() -> None:
    tidy = _tidy()
    tidy.loc[tidy["category"] == "cable", "domain"] = "cables"
    fig = viz.metric_vs_shots(tidy, col="domain")
    assert [ax.get_title() for ax in fig.axes] == ["domain = cables", "domain = industrial"]
    with pytest.raises(ValueError, match="abnormal_shots"):
        viz.metric_vs_shots(pd.concat([tidy, tidy.assign(abnormal_shots=1)]))
    with pytest.raises(ValueError, match="log2"):
        viz.metric_vs_shots(pd.concat([tidy, tidy.assign(shots=0)]))
    with pytest.raises(ValueError, match="no rows with metric"):
        viz.metric_vs_shots(tidy, metric="f1")


def test_roc_curves_labels_and_points() -> None:
    labels = np.array([0, 0, 1, 1])
    fig = viz.roc_curves({"perfect": (labels, np.array([0.1, 0.2, 0.8, 0.9])),
                          "coin": (labels, np.array([0.5, 0.5, 0.5, 0.5]))})
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.lines}
    assert {"perfect (AUROC 1.000)", "coin (AUROC 0.500)", "chance"} <= set(lines)
    perfect = np.column_stack(lines["perfect (AUROC 1.000)"].get_data())
    assert any(np.allclose(point, [0, 1]) for point in perfect)
    with pytest.raises(ValueError, match="no anomalous"):
        viz.roc_curves({"bad": (np.zeros(3), np.ones(3))})


def test_save_figure_writes_png_of_the_right_size(tmp_path: Path) -> None:
    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = viz.save_figure(fig, tmp_path / "sub" / "plot.png", dpi=50)
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    assert struct.unpack(">II", header[16:24]) == (200, 150)
    with pytest.raises(ValueError, match=r"\.png"):
        viz.save_figure(fig, tmp_path / "plot.pdf")


def test_save_figure_closes_pyplot_figures(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 2))
    viz.save_figure(fig, tmp_path / "p.png")
    assert not plt.fignum_exists(fig.number)


def test_metric_vs_shots_names_a_reference_drawn_in_one_panel_only() -> None:
    tidy = _tidy()
    tidy.loc[tidy["category"] == "cable", "domain"] = "cables"
    reference = pd.DataFrame({"shots": [2, 4], "value": [0.7, 0.72], "label": "InCTRL (published)",
                              "domain": "cables"})
    fig = viz.metric_vs_shots(tidy, col="domain", reference=reference)
    labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert sorted(labels) == ["InCTRL (published)", "knn", "resad"]
    assert not [line for line in fig.axes[-1].lines if line.get_label() == "InCTRL (published)"]


def test_training_curve_one_panel_per_loss_and_guards() -> None:
    history = [{"epoch": 1, "nll": 2.0, "boundary": 0.3}, {"epoch": 2, "nll": 1.5, "boundary": 0.2}]
    fig = viz.training_curve(history)
    assert [ax.get_title() for ax in fig.axes] == ["nll", "boundary"]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [2.0, 1.5])
    with pytest.raises(ValueError, match="empty history"):
        viz.training_curve([])
    with pytest.raises(ValueError, match="'epoch'"):
        viz.training_curve([{"nll": 1.0}])


def test_compare_maps_rows_per_method_with_own_scale() -> None:
    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    maps = {"kNN": [np.zeros((8, 8)), np.ones((8, 8))], "ResAD": [np.full((8, 8), 5.0), np.full((8, 8), 9.0)]}
    fig = viz.compare_maps(images, maps, titles=["a", "b"])
    axes = np.array(fig.axes).reshape(3, 2)
    assert axes[1, 0].get_ylabel() == "kNN" and axes[2, 0].get_ylabel() == "ResAD"
    assert axes[2, 1].images[1].get_clim() == (5.0, 9.0)
    with pytest.raises(ValueError, match="'ResAD' has 1 maps for 2 images"):
        viz.compare_maps(images, {"ResAD": [np.zeros((8, 8))]})


def test_embedding_grid_and_table_heatmap():
    from gadlib.viz import embedding_grid, table_heatmap

    points = pd.DataFrame(dict(category=list("abcabc"), status=["normal"] * 4 + ["abnormal"] * 2))
    coords = {"one": np.arange(12.0).reshape(6, 2), "two": -np.arange(12.0).reshape(6, 2)}
    fig = embedding_grid(coords, points, ["category", "status"])
    axes = fig.get_axes()
    assert len(axes) == 4 and axes[0].get_title() == "one — by category"
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["a", "b", "c"]
    assert axes[2].get_legend() is None                      # legends on the first row only
    with pytest.raises(ValueError, match=r"expected \(6, 2\)"):
        embedding_grid({"bad": np.zeros((5, 2))}, points, ["category"])
    table = pd.DataFrame({"x": [1.0, -2.0], "y": [0.5, np.nan]}, index=["r1", "r2"])
    heat = table_heatmap(table, "gains", center=0)
    texts = sorted(t.get_text() for t in heat.get_axes()[0].texts)
    assert texts == ["-2.0", "0.5", "1.0"]                   # the missing cell stays blank
    with pytest.raises(ValueError, match="no numeric values"):
        table_heatmap(pd.DataFrame({"x": ["a"]}))


def _source_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, bar = [], []
    backbone = {6: "lite0", 12: "lite2", 20: "lite1"}
    for target in ("ELPV", "textile"):
        for seed in range(3):
            for x, value in ((6, 0.6), (12, 0.7), (20, 0.8)):
                for method, shift in (("resad", 0.0), ("nagl", 0.05)):
                    rows.append(dict(target=target, method=method, axis_value=x, backbone=backbone[x], seed=seed,
                                     metric="image_auroc", value=value + shift + 0.01 * seed))
            bar.append(dict(target=target, seed=seed, metric="image_auroc", value=0.75 + 0.01 * seed))
    tidy = pd.DataFrame(rows)
    tidy["axis_value"] = tidy["axis_value"].astype(object)        # as it comes out of a mixed-axis table
    return tidy, pd.DataFrame(bar)


def test_metric_vs_source_draws_seed_means_against_the_bar() -> None:
    tidy, bar = _source_rows()
    fig = viz.metric_vs_source(tidy, bar, x="axis_value", col="target")
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [6, 12, 20]                     # numbers, though the column held objects
    drawn = {c.get_label(): c for c in ax.containers}
    x, y = drawn["nagl"].lines[0].get_data()
    np.testing.assert_allclose(x, [6, 12, 20])
    np.testing.assert_allclose(y, [0.66, 0.76, 0.86])               # mean over seeds of value + shift + 0.01 seed
    (bar_line,) = [line for line in ax.lines if line.get_label() == "best training-free"]
    np.testing.assert_allclose(bar_line.get_ydata(), [0.76, 0.76])


def test_metric_vs_source_keeps_text_values_in_order_and_names_each_bar() -> None:
    tidy, bar = _source_rows()
    two_bars = pd.concat([bar.assign(label="Lite0 bar"), bar.assign(label="Lite2 bar", value=bar["value"] - 0.1)])
    fig = viz.metric_vs_source(tidy, two_bars, x="backbone", col="target")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lite0", "lite2", "lite1"]   # order of appearance
    labels = {line.get_label(): line for line in ax.lines if "bar" in line.get_label()}
    np.testing.assert_allclose(labels["Lite2 bar"].get_ydata(), [0.66, 0.66])
    assert labels["Lite0 bar"].get_linestyle() != labels["Lite2 bar"].get_linestyle()
    with pytest.raises(ValueError, match="metric"):
        viz.metric_vs_source(tidy, bar, metric="pixel_auroc")
