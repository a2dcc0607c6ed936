"""Figures from arrays and tidy tables: heat-map overlays, score distributions, shot curves, ROC.

Every helper is pure: it takes arrays or DataFrames and returns a matplotlib ``Axes`` or
``Figure``; nothing is shown or written, except by :func:`save_figure`. Figures are built with the
object API (``matplotlib.figure.Figure``), not pyplot, so they work under any backend (Agg
included), hold no global state and need no closing; notebooks display a returned Figure.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator
from sklearn.metrics import roc_curve

from gadlib import metrics

__all__ = [
    "overlay_heatmap",
    "heatmap_grid",
    "score_distributions",
    "metric_vs_shots",
    "roc_curves",
    "save_figure",
    "table_heatmap",
    "embedding_grid",
]

HEAT_CMAP = "jet"
MASK_COLOUR = "lime"


def _check_image_and_map(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None) -> None:
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}.")
    if anomaly_map.shape != image.shape[:2]:
        raise ValueError(
            f"anomaly_map has shape {anomaly_map.shape} but the image is {image.shape[:2]}; "
            "upsample the map to the image size first (e.g. gadlib.kernels.scoring)."
        )
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"mask has shape {mask.shape} but the image is {image.shape[:2]}; they must match.")


def overlay_heatmap(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None = None,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draw an image with its anomaly map as a translucent heat layer and the mask outlined.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or float in [0, 1]) or ``(H, W)`` grey image.
        anomaly_map: ``(H, W)`` scores, higher = more anomalous.
        mask: optional ``(H, W)`` ground truth in {0, 1}; its boundary is drawn as a contour.
        alpha: opacity of the heat layer.
        vmin, vmax: colour range of the heat layer; default the map's own min and max.
        ax: axes to draw on; a new figure is made when omitted.

    Returns:
        The axes: ``ax.images[0]`` is the image, ``ax.images[1]`` the heat layer.
    """
    image, anomaly_map = np.asarray(image), np.asarray(anomaly_map)
    mask = None if mask is None else np.asarray(mask)
    _check_image_and_map(image, anomaly_map, mask)
    if ax is None:
        ax = Figure(figsize=(4, 4), layout="constrained").add_subplot()
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    ax.imshow(anomaly_map, cmap=HEAT_CMAP, alpha=alpha, vmin=vmin, vmax=vmax, interpolation="nearest")
    if mask is not None and np.any(mask):
        ax.contour((mask > 0).astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.0)
    ax.set_axis_off()
    return ax


def heatmap_grid(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    shared_scale: bool = True,
) -> Figure:
    """Lay out several queries as (image, overlay) pairs, ``ncols`` queries per row.

    With ``shared_scale=True`` (default) every overlay uses one colour range, the min and max
    over all maps, and one colour bar is drawn: equal colours mean equal scores, so queries can
    be compared. ``shared_scale=False`` stretches each map to its own range, which shows the
    shape of every map but makes a normal image's noise look as hot as a real defect.

    Args:
        images: N images, ``(H, W, 3)`` or ``(H, W)``; sizes may differ between queries.
        maps: N anomaly maps, each the size of its image.
        masks: optional N ground-truth masks (or None entries) to outline.
        titles: optional N titles, written above each pair.
        ncols: queries per row.
        shared_scale: one colour range for all maps (see above).

    Returns:
        The figure; per query, the first axes holds the image and the second the overlay.
    """
    if len(images) != len(maps) or len(images) == 0:
        raise ValueError(f"give one map per image (and at least one): got {len(images)} images, {len(maps)} maps.")
    masks = [None] * len(images) if masks is None else list(masks)
    titles = [""] * len(images) if titles is None else list(titles)
    if len(masks) != len(images) or len(titles) != len(images):
        raise ValueError(
            f"masks and titles need one entry per image ({len(images)}); got {len(masks)} and {len(titles)}."
        )
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}.")
    arrays = [np.asarray(m, dtype=float) for m in maps]
    vmin = min(float(m.min()) for m in arrays) if shared_scale else None
    vmax = max(float(m.max()) for m in arrays) if shared_scale else None
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig = Figure(figsize=(2.2 * 2 * ncols, 2.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, 2 * ncols, squeeze=False)
    for index, (image, anomaly_map, mask, title) in enumerate(zip(images, arrays, masks, titles)):
        row, col = divmod(index, ncols)
        image_ax, overlay_ax = axes[row, 2 * col], axes[row, 2 * col + 1]
        image = np.asarray(image)
        image_ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        image_ax.set_axis_off()
        image_ax.set_title(title, fontsize=8, loc="left")
        overlay_heatmap(image, anomaly_map, mask=mask, vmin=vmin, vmax=vmax, ax=overlay_ax)
    for ax in axes.ravel()[2 * len(images) :]:
        ax.set_axis_off()
    if shared_scale:
        heat = axes[0, 1].images[1]  # an opaque twin, so the bar shows the colours at full strength
        opaque = ScalarMappable(norm=heat.norm, cmap=heat.get_cmap())
        fig.colorbar(opaque, ax=axes, shrink=0.8, label="anomaly score")
    return fig


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: the table lacks column(s) {missing}; it has {list(frame.columns)}.")


def score_distributions(
    frame: pd.DataFrame, score_col: str = "score", label_col: str = "label", by: str | None = None
) -> Figure:
    """Histograms with KDE of normal vs anomalous scores, one panel per value of ``by``.

    Densities are normalised per class, so a small anomalous class stays visible.
    """
    _require_columns(frame, [score_col, label_col] + ([by] if by else []), "score_distributions")
    data = frame.assign(_class=frame[label_col].map({0: "normal", 1: "anomalous"}))
    if data["_class"].isna().any():
        found = sorted(frame[label_col].unique())
        raise ValueError(f"{label_col} must hold 0 (normal) or 1 (anomalous); found {found}.")
    groups = [(None, data)] if by is None else list(data.groupby(by, sort=True))
    fig = Figure(figsize=(3.6 * len(groups), 3.0), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False, sharex=True)[0]
    for ax, (name, group) in zip(axes, groups):
        sns.histplot(
            data=group, x=score_col, hue="_class", hue_order=["normal", "anomalous"], stat="density",
            common_norm=False, kde=group[score_col].nunique() > 1, element="step", ax=ax,
        )
        ax.set_title("" if name is None else f"{by} = {name}", fontsize=9)
        legend = ax.get_legend()
        if legend is not None:
            legend.set_title(None)
    return fig


def _per_seed_means(tidy: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    # Average over categories (and datasets) within one seed first, then summarise the seeds.
    per_seed = tidy.groupby(keys + ["seed"], sort=True)["value"].mean().reset_index()
    summary = per_seed.groupby(keys, sort=True)["value"].agg(["mean", "std", "count"]).reset_index()
    summary["std"] = summary["std"].fillna(0.0)  # a single seed has no spread to draw
    return summary


def metric_vs_shots(
    tidy: pd.DataFrame,
    metric: str = "image_auroc",
    hue: str = "method",
    col: str | None = None,
    reference: pd.DataFrame | None = None,
) -> Figure:
    """Mean ± std over seeds of one metric against the number of normal shots.

    Rows of ``tidy`` (columns dataset, category, domain, method, shots, abnormal_shots, seed,
    metric, value) are first averaged over everything but (col, hue, shots, seed), e.g. over
    categories; the seeds then give the mean (line) and sample std (error bar). The x axis is
    log2 with a tick at every shot count.

    Args:
        tidy: tidy results table.
        metric: which ``metric`` rows to plot.
        hue: column giving one line per value.
        col: optional column giving one panel per value.
        reference: optional published numbers, columns (shots, value, label) and optionally
            ``col``; drawn as dashed lines with open markers, one per label.

    Returns:
        The figure; every line is an ``ErrorbarContainer`` in ``ax.containers`` whose label is its hue value.
    """
    _require_columns(tidy, ["shots", "seed", "metric", "value", hue] + ([col] if col else []), "metric_vs_shots")
    rows = tidy[tidy["metric"] == metric]
    if rows.empty:
        present = sorted(tidy["metric"].unique())
        raise ValueError(f"metric_vs_shots: no rows with metric == {metric!r}; present: {present}.")
    if (rows["shots"] <= 0).any():
        raise ValueError("metric_vs_shots draws shots on a log2 axis; drop the shots <= 0 rows (plot them separately).")
    keys = [c for c in (col, hue) if c] + ["shots"]
    if "abnormal_shots" in rows.columns and "abnormal_shots" not in keys and rows["abnormal_shots"].nunique() > 1:
        raise ValueError(
            "metric_vs_shots: rows mix several abnormal_shots values, which would be averaged together; "
            "filter to one value or pass hue='abnormal_shots' or col='abnormal_shots'."
        )
    summary = _per_seed_means(rows, keys)
    panels = [(None, summary)] if col is None else list(summary.groupby(col, sort=True))
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    shot_ticks = sorted(rows["shots"].unique())
    if reference is not None:
        _require_columns(reference, ["shots", "value", "label"], "metric_vs_shots reference")
        shot_ticks = sorted(set(shot_ticks) | set(reference["shots"].unique()))
    for ax, (panel, panel_rows) in zip(axes, panels):
        for name, line in panel_rows.groupby(hue, sort=True):
            x, mean, std = (line[c].to_numpy(dtype=float) for c in ("shots", "mean", "std"))
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=str(name))
        if reference is not None:
            ref = reference if panel is None or col not in reference.columns else reference[reference[col] == panel]
            for label, ref_line in ref.groupby("label", sort=True):
                ref_line = ref_line.sort_values("shots")
                x, value = ref_line["shots"].to_numpy(dtype=float), ref_line["value"].to_numpy(dtype=float)
                ax.plot(x, value, linestyle="--", marker="s", mfc="none", label=str(label))
        ax.set_xscale("log", base=2)
        ax.set_xticks(shot_ticks, labels=[str(int(s)) for s in shot_ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("normal shots (k)")
        ax.set_title("" if panel is None else f"{col} = {panel}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric} (mean ± std over seeds)")
    _one_legend(axes, fontsize=8)
    return fig


def _one_legend(axes, fontsize: int) -> None:
    """One legend for all panels, on the last, so a line drawn in one panel only (e.g. a reference) is named."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[-1].legend(list(handles.values()), list(handles), fontsize=fontsize)


def metric_vs_source(
    tidy: pd.DataFrame,
    bar: pd.DataFrame,
    metric: str = "image_auroc",
    x: str = "axis_value",
    col: str = "target",
    hue: str = "method",
    xlabel: str | None = None,
) -> Figure:
    """Mean ± std over seeds of one metric against a property of the training source, with the bar.

    One panel per ``col`` value (e.g. target), one line per ``hue`` (trained method) along ``x`` (numeric:
    a line; text, such as a backbone or a source's name: points at evenly spaced ticks), and the best
    training-free baseline's mean on the same draws as a horizontal grey line (``bar``: tidy rows with
    ``col``, ``seed``, ``metric``, ``value``; several bars, e.g. one per backbone, by a ``label`` column).

    Returns:
        The figure; each trained line is an ``ErrorbarContainer`` in ``ax.containers``.
    """
    _require_columns(tidy, [x, col, hue, "seed", "metric", "value"], "metric_vs_source")
    _require_columns(bar, [col, "seed", "metric", "value"], "metric_vs_source bar")
    rows = tidy[tidy["metric"] == metric]
    if rows.empty:
        present = sorted(tidy["metric"].unique())
        raise ValueError(f"metric_vs_source: no rows with metric == {metric!r}; present: {present}.")
    as_numbers = pd.to_numeric(rows[x], errors="coerce")
    numeric = bool(as_numbers.notna().all())
    rows = rows.assign(**{x: as_numbers}) if numeric else rows
    ticks = sorted(rows[x].unique()) if numeric else list(dict.fromkeys(rows[x]))
    summary = _per_seed_means(rows, [col, hue, x])
    bar = bar[bar["metric"] == metric]
    bar = bar.assign(label=bar["label"] if "label" in bar else "best training-free")
    bar_means = bar.groupby([col, "label", "seed"])["value"].mean().groupby(level=[0, 1]).mean()
    panels = list(summary.groupby(col, sort=True))
    fig = Figure(figsize=(max(4.2, 0.5 * len(ticks) + 2.5) * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (panel, panel_rows) in zip(axes, panels):
        for name, line in panel_rows.groupby(hue, sort=True):
            where = line[x].to_numpy(dtype=float) if numeric else np.array([ticks.index(v) for v in line[x]], float)
            order = np.argsort(where)
            ax.errorbar(where[order], line["mean"].to_numpy(float)[order], yerr=line["std"].to_numpy(float)[order],
                        marker="o", capsize=3, label=str(name), linestyle="-" if numeric else "none")
        if panel in bar_means.index.get_level_values(0):
            styles = [("0.3", "--"), ("0.55", ":"), ("0.7", "-.")]
            for (label, value), (colour, style) in zip(bar_means.loc[panel].items(), styles * 3):
                ax.axhline(value, linestyle=style, color=colour, linewidth=1.3, label=str(label))
        if numeric:
            ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
        else:
            ax.set_xticks(range(len(ticks)), labels=[str(t) for t in ticks], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(xlabel or x)
        ax.set_title(f"{panel}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric} (mean ± std over seeds)")
    _one_legend(axes, fontsize=7)
    return fig


def table_heatmap(table: pd.DataFrame, title: str = "", center: float | None = None, digits: int = 1) -> Figure:
    """A numeric table (index = rows, columns = columns) as an annotated heat map.

    ``center`` gives a diverging colour map around that value (e.g. 0 for gains); missing cells stay
    blank. The annotations are the table's values, rounded to ``digits``.
    """
    values = table.apply(pd.to_numeric, errors="coerce")
    if values.empty or values.isna().all().all():
        raise ValueError("table_heatmap: the table has no numeric values to draw")
    labels = [" / ".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in values.index]
    fig = Figure(figsize=(1.0 + 0.9 * values.shape[1], 1.2 + 0.42 * values.shape[0]), layout="constrained")
    ax = fig.subplots()
    limit = np.nanmax(np.abs(values.to_numpy(dtype=float) - (center or 0.0)))
    sns.heatmap(values.set_axis(labels), ax=ax, annot=True, fmt=f".{digits}f", cbar=True,
                cmap="RdBu_r" if center is not None else "viridis", center=center,
                vmin=None if center is None else center - limit, vmax=None if center is None else center + limit,
                annot_kws={"fontsize": 8})
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("")
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.tick_params(axis="y", labelsize=8)
    return fig


def embedding_grid(coords: Mapping[str, np.ndarray], points: pd.DataFrame, colour_by: Sequence[str],
                   title: str = "", max_legend: int = 20) -> Figure:
    """2-D embeddings of several spaces (rows) coloured by several columns of ``points`` (columns).

    ``coords[space]`` is ``(P, 2)`` with one row per row of ``points``. Abnormal points (``status`` column,
    if present) are drawn on top, as crosses.
    """
    _require_columns(points, list(colour_by), "embedding_grid")
    for space, xy in coords.items():
        if xy.shape != (len(points), 2):
            raise ValueError(f"embedding_grid: {space} has shape {xy.shape}, expected ({len(points)}, 2)")
    fig = Figure(figsize=(3.6 * len(colour_by), 3.2 * len(coords)), layout="constrained")
    axes = fig.subplots(len(coords), len(colour_by), squeeze=False)
    abnormal = (points["status"] == "abnormal").to_numpy() if "status" in points.columns else np.zeros(len(points), bool)
    for r, (space, xy) in enumerate(coords.items()):
        for c, column in enumerate(colour_by):
            ax = axes[r, c]
            values = points[column].astype(str).to_numpy()
            show_legend = r == 0 and len(set(values)) <= max_legend
            palette = sns.color_palette("tab10" if len(set(values)) <= 10 else "tab20", len(set(values)))
            for layer, marker, size in ((~abnormal, "o", 6), (abnormal, "x", 14)):
                if layer.any():
                    sns.scatterplot(x=xy[layer, 0], y=xy[layer, 1], hue=values[layer], hue_order=sorted(set(values)),
                                    marker=marker, s=size, linewidth=0.6 if marker == "x" else 0, alpha=0.7, ax=ax,
                                    legend=False, palette=palette)
            if show_legend:
                handles = [Line2D([], [], marker="o", linestyle="", color=colour, label=name)
                           for name, colour in zip(sorted(set(values)), palette)]
                ax.legend(handles=handles, title=column, fontsize=7, title_fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{space} — by {column}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """ROC curves of several scorers on one axes, each labelled with its AUROC.

    Args:
        curves: name -> (labels, scores), labels in {0, 1}, higher score = more anomalous.
    """
    if not curves:
        raise ValueError("roc_curves needs at least one (labels, scores) pair.")
    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for name, (labels, scores) in curves.items():
        auroc = metrics.image_auroc(labels, scores)  # also validates the pair
        fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(scores))
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", aspect="equal")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG (parent folders created) and release it; returns the path.

    The PNG is stored with a 256-colour palette (no dithering): heat maps and plots look the same and the
    file is about 3-4x smaller, which keeps the committed ``results/`` small.
    """
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG; give a path ending in .png, got {path.name!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    palette.save(path, optimize=True)
    if getattr(fig.canvas, "manager", None) is not None:  # made by pyplot, which holds on to it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def training_curve(history: Sequence[Mapping[str, float]]) -> Figure:
    """Per-epoch training losses, one panel per loss term (their scales differ).

    Args:
        history: one mapping per epoch with an ``epoch`` key and one key per loss term (as a method's
            ``fit_record_["history"]``).
    """
    if not history:
        raise ValueError("training_curve: empty history (was the method trained?)")
    frame = pd.DataFrame(list(history))
    if "epoch" not in frame.columns:
        raise ValueError(f"training_curve: history rows need an 'epoch' key, got {list(frame.columns)}")
    terms = [c for c in frame.columns if c != "epoch"]
    fig = Figure(figsize=(3.2 * len(terms), 2.8), layout="constrained")
    axes = fig.subplots(1, len(terms), squeeze=False)[0]
    for ax, term in zip(axes, terms):
        ax.plot(frame["epoch"], frame[term], marker="o", markersize=3)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean loss per step")
    return fig


def compare_maps(
    images: Sequence[np.ndarray],
    maps_by_method: Mapping[str, Sequence[np.ndarray]],
    masks: Sequence[np.ndarray | None] | None = None,
    titles: Sequence[str] | None = None,
) -> Figure:
    """The same queries under several methods: one row per method, one column per query.

    Each method's row has its own colour range (min to max over that row), because score scales of
    different methods are not comparable; within a row, equal colours mean equal scores. The first
    row shows the images (with ground-truth outlines when ``masks`` are given).
    """
    if not maps_by_method:
        raise ValueError("compare_maps: no methods given")
    for name, maps in maps_by_method.items():
        if len(maps) != len(images):
            raise ValueError(f"compare_maps: method '{name}' has {len(maps)} maps for {len(images)} images")
    masks = [None] * len(images) if masks is None else list(masks)
    titles = [""] * len(images) if titles is None else list(titles)
    rows = len(maps_by_method) + 1
    fig = Figure(figsize=(2.1 * len(images), 2.2 * rows), layout="constrained")
    axes = fig.subplots(rows, len(images), squeeze=False)
    for col, (image, mask, title) in enumerate(zip(images, masks, titles)):
        image = np.asarray(image)
        axes[0, col].imshow(image, cmap="gray" if image.ndim == 2 else None)
        if mask is not None and np.asarray(mask).any():
            axes[0, col].contour(np.asarray(mask) > 0, levels=[0.5], colors=MASK_COLOUR, linewidths=0.8)
        axes[0, col].set_title(title, fontsize=7, loc="left")
    for row, (name, maps) in enumerate(maps_by_method.items(), start=1):
        arrays = [np.asarray(m, dtype=float) for m in maps]
        vmin, vmax = min(a.min() for a in arrays), max(a.max() for a in arrays)
        for col, (image, anomaly_map, mask) in enumerate(zip(images, arrays, masks)):
            overlay_heatmap(np.asarray(image), anomaly_map, mask=mask, vmin=vmin, vmax=vmax, ax=axes[row, col])
        axes[row, 0].set_ylabel(name, fontsize=9)
        axes[row, 0].axis("on")
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
    for ax in axes[0]:
        ax.set_axis_off()
    return fig
