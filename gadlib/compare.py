"""Before and after: a method's study numbers at two commits, beside the best training-free score.

A fix to a method (its training episodes, its scores, its defaults) is judged by the numbers it moves.
:func:`before_after` reads two versions of the study's tidy rows (for instance the committed results
of an older commit, :func:`read_tidy`, and a fresh run) and puts, per target and k, each trained
method before and after next to the best training-free method on the same reference draws (the
same seeds and categories of the *after* run).

Example::

    from gadlib.compare import before_after, read_tidy
    table = before_after(read_tidy("HEAD~20"), read_tidy(), trained=["ResAD", "InCTRL-vision", "NAGL", "VOD: A + B"],
                         training_free=["kNN", "kNN + A", "s_p: patch residual (training-free)"])
"""
from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Sequence

import pandas as pd

from gadlib.results import summarize, to_markdown

#: The three-gap targets that are the other notebooks' data sets, trained on the synthetic source.
THREE_GAP_TARGETS = ["synth: 3 unseen categories", "synth → textile", "synth → ELPV"]
#: Where each method's plain, whole-target rows live: (results folder, tidy file, row filters). The
#: baselines notebook has the named training-free baselines (:mod:`gadlib.baselines`); the
#: normal-and-abnormal notebook has ResAD, InCTRL, NAGL and kNN with m = 0 and label-free references, and
#: InCTRL's training-free patch term s_p on the same draws; the three-gap notebook has VOD on the same three
#: targets, trained on the synthetic source, with one simulated abnormal reference, and its readings part
#: (`make study-extended`) kNN + A and the other readings. A file missing at a revision (an older study) is
#: skipped.
STUDY_VIEWS: tuple[tuple[str, str, dict], ...] = (
    ("baselines", "tidy.csv", {}),
    ("normal_abnormal", "tidy.csv", {"abnormal_shots": [0], "protocol": ["label-free"]}),
    ("normal_abnormal", "inctrl_terms_tidy.csv", {"method": ["s_p: patch residual (training-free)"]}),
    ("three_gaps", "tidy.csv", {"target": THREE_GAP_TARGETS}),
    ("three_gaps_readings", "tidy.csv", {"target": THREE_GAP_TARGETS}),
)


def whole_target(tidy: pd.DataFrame) -> pd.DataFrame:
    """Rows of the whole category only: per (dataset, category), the domain that joins all the others
    (``"mono+poly"``), not the per-domain rows the study adds beside it."""
    parts = tidy["domain"].astype(str).str.count(r"\+")
    widest = parts.groupby([tidy["dataset"], tidy["category"]]).transform("max")
    return tidy[parts == widest]


def read_tidy(revision: str | None = None, root: str | Path = "results/embedded",
              views: Sequence[tuple[str, str, dict]] = STUDY_VIEWS, repo: str | Path = ".") -> pd.DataFrame:
    """The views' tidy rows (whole targets), from the working tree or from git ``revision``.

    Rows from a later view whose (dataset, method) already came from an earlier one are dropped, so each
    method's numbers have one source. A view whose file the revision (or the working tree) lacks is skipped.
    """
    frames, seen = [], set()
    for folder, name, filters in views:
        path = Path(root) / folder / name
        if revision is None:
            if not (Path(repo) / path).is_file():
                continue
            tidy = pd.read_csv(Path(repo) / path)
        else:
            shown = subprocess.run(["git", "show", f"{revision}:{path.as_posix()}"], cwd=repo,
                                   capture_output=True, text=True)
            if shown.returncode:
                if "does not exist" in shown.stderr or "exists on disk, but not in" in shown.stderr:
                    continue
                raise RuntimeError(f"git show {revision}:{path}: {shown.stderr.strip()}")
            tidy = pd.read_csv(io.StringIO(shown.stdout))
        for column, values in filters.items():
            if column in tidy:
                tidy = tidy[tidy[column].isin(values)]
        tidy = whole_target(tidy)
        keys = set(zip(tidy["dataset"], tidy["method"]))
        tidy = tidy[[(d, m) not in seen for d, m in zip(tidy["dataset"], tidy["method"])]]
        seen |= keys
        frames.append(tidy[["dataset", "category", "domain", "method", "shots", "seed", "metric", "value"]])
    return pd.concat(frames, ignore_index=True)


def before_after(before: pd.DataFrame, after: pd.DataFrame, trained: Sequence[str], training_free: Sequence[str],
                 metric: str = "image_auroc") -> pd.DataFrame:
    """Per dataset and k: each trained method's mean ``metric`` before and after, and the best training-free.

    Means are over seeds of the per-seed macro average over categories (:func:`gadlib.results.summarize`).
    Returns long rows ``dataset, shots, method, before, after, change, best_training_free,
    best_training_free_method, after_minus_best`` (``before`` is NaN for a method the old rows lack). The
    training-free methods are read from ``after`` only, whose draws the trained methods' "after" shares.
    """
    if not trained or not training_free:
        raise ValueError("name at least one trained and one training-free method")

    def means(tidy):
        out = summarize(tidy[tidy["metric"] == metric], by=("dataset", "method", "shots"))
        return out.set_index(["dataset", "method", "shots"])["mean"]

    old, new = means(before), means(after)
    methods = set(new.index.get_level_values("method"))
    missing = [m for m in dict.fromkeys([*trained, *training_free]) if m not in methods]
    if missing:
        raise ValueError(f"no '{metric}' rows for {missing} in the after rows; methods: {sorted(methods)}")
    free = new[new.index.get_level_values("method").isin(training_free)].reset_index()
    best = free.loc[free.groupby(["dataset", "shots"])["mean"].idxmax()].set_index(["dataset", "shots"])
    rows = []
    for (dataset, method, shots), value in new.items():
        if method not in trained:
            continue
        top = best.loc[(dataset, shots)]
        previous = old.get((dataset, method, shots), float("nan"))
        rows.append(dict(dataset=dataset, shots=shots, method=method, before=previous, after=value,
                         change=value - previous, best_training_free=top["mean"],
                         best_training_free_method=top["method"], after_minus_best=value - top["mean"]))
    return pd.DataFrame(rows).sort_values(["dataset", "method", "shots"], ignore_index=True)


def before_after_markdown(table: pd.DataFrame) -> str:
    """:func:`before_after` as one Markdown table: a row per (dataset, method), k across, cells
    ``before → after (best training-free)`` in AUROC points."""
    def cell(row):
        before = "–" if pd.isna(row.before) else f"{100 * row.before:.1f}"
        return f"{before} → {100 * row.after:.1f} ({100 * row.best_training_free:.1f})"

    wide = table.assign(cell=[cell(r) for r in table.itertuples()]).pivot_table(
        index=["dataset", "method"], columns="shots", values="cell", aggfunc="first")
    wide.columns = [f"k={k}" for k in wide.columns]
    return to_markdown(wide.reset_index())


#: The headline's rows: the bar, the first round's baseline, and each trained method in its plain form.
HEADLINE_METHODS: tuple[str, ...] = ("kNN (L2, max)", "ResAD", "InCTRL-vision", "NAGL", "VOD: A + B")
HEADLINE_TARGETS: dict[str, str] = {"elpv": "ELPV (solar cells)", "textile": "textile",
                                    "synth": "synth: 3 unseen categories"}


def headline(tidy: pd.DataFrame, bar: str | None = None, methods: Sequence[str] = HEADLINE_METHODS,
             targets: dict[str, str] = HEADLINE_TARGETS, metric: str = "image_auroc") -> pd.DataFrame:
    """The study in one table: per target, the best training-free baseline and each method against it.

    Cells are the mean ``metric`` (%) over seeds of the per-seed macro average over categories, with the
    difference to the bar at the same k in brackets (positive: the method beats what needs no training).
    ``tidy`` is :func:`read_tidy`'s rows, where every method shares the seeded reference draws.
    """
    from gadlib.baselines import BEST_TRAINING_FREE

    bar = bar or BEST_TRAINING_FREE
    means = summarize(tidy[tidy["metric"] == metric], by=("dataset", "method", "shots")).set_index(
        ["dataset", "method", "shots"])["mean"]
    present = set(means.index.get_level_values("method"))
    missing = [m for m in (bar, *methods) if m not in present]
    if missing:
        raise ValueError(f"headline: no '{metric}' rows for {missing}; methods: {sorted(present)}")
    shots = sorted(set(means.index.get_level_values("shots")))
    rows = []
    for dataset, label in targets.items():
        for method in (bar, *methods):
            row = {"target": label, "method": "best training-free: " + method if method == bar else method}
            for k in shots:
                value, reference = means.get((dataset, method, k)), means.get((dataset, bar, k))
                if value is None:
                    row[f"k={k}"] = "–"
                elif method == bar or reference is None:
                    row[f"k={k}"] = f"**{100 * value:.1f}**" if method == bar else f"{100 * value:.1f}"
                else:
                    gain = round(100 * (value - reference), 1) + 0.0      # + 0.0: never "-0.0"
                    row[f"k={k}"] = f"{100 * value:.1f} ({gain:+.1f})"
            rows.append(row)
    return pd.DataFrame(rows)


def headline_markdown(table: pd.DataFrame, seeds: Sequence[int] = (0, 1, 2)) -> str:
    """:func:`headline` as Markdown with the note that says how to read it."""
    return to_markdown(table) + (
        "\nImage AUROC (%), mean over seeds " + ", ".join(map(str, seeds)) + " of the same reference draws for "
        "every row; in brackets the difference to the best training-free baseline (bold) at the same k. kNN (L2, "
        "max) is the first round's baseline; NAGL and VOD use no abnormal reference here except VOD's one "
        "cut-and-paste image made from the normal references.\n")
