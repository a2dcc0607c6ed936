"""``gad bench``: what each method costs at inference, against the backbone alone, as k grows.

For every method and k, on the same query images and the same first k references:

* ``backbone_s``: the backbone alone -- decode, forward and cache the features of the queries and the
  k references, from an empty feature cache;
* ``method_s``: the method's whole ``predict_shots`` from another empty cache (the same decoding and
  backbone work, plus matching and scoring);
* ``warm_s``: the same prediction again, features cached (matching and scoring only);
* ``ratio = method_s / backbone_s`` (1.0 = the method adds nothing to the backbone) and images per second;
* peak memory: the process's peak resident set so far (CPU; it never goes down, so read it as "at most"),
  and the peak CUDA allocation of this step on a GPU.

Trained methods are fitted with a single training step on a small synthetic source first: inference
cost does not depend on the learned weights, only on their shapes. Not a test: timings vary by machine.

Also here: :func:`bench_search` (time and AUROC change of each nearest-neighbour search on a whole test
set), :func:`bench_threads` (the same rows for several torch thread counts) and :func:`time_study`.
"""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

DEFAULT_METHODS = ("knn", "resad", "inctrl", "nagl", "vod")
TINY_FIT = dict(epochs=1, steps_per_epoch=1, simulated_per_category=2)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0      # Linux: kilobytes


def bench_images(dataset: str = "textile", queries: int = 32, references: int = 32, category: str | None = None):
    """``queries`` test images and ``references`` normal pool images of one category (first in path order)."""
    from gadlib.data.load import load_dataset

    _, frame = load_dataset(dataset)
    category = category or sorted(frame["category"].unique())[0]
    rows = frame[frame["category"] == category]
    pool = sorted(rows.loc[(rows["split"] == "train") & (rows["label"] == 0), "image_path"])
    test = sorted(rows.loc[rows["split"] == "test", "image_path"])
    if len(pool) < references or len(test) < queries:
        raise ValueError(f"{dataset}/{category}: the bench needs {references} normal pool and {queries} test images, "
                         f"found {len(pool)} and {len(test)}; choose another --dataset or fewer --shots/--queries")
    return test[:queries], pool[:references]


def _warm_up(cache) -> None:
    """One untimed pass of a cache's backbone: the first pass of a loaded model sets up its kernels.

    The method under test gets its own feature cache (an empty one per repeat) and with it a backbone loaded
    afresh; warming only the backbone-alone one charged the method that set-up (about 5 % of the pass here).
    """
    size = cache.backbone.preprocess.image_size
    with torch.inference_mode():
        cache.backbone(torch.zeros(2, 3, size, size, device=cache.device))


def _timed(function) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_method(name: str, queries: Sequence[str], references: Sequence[str], shots: Sequence[int],
                 params: dict | None = None, device: str | None = None, source: str = "synth",
                 source_categories: Sequence[str] = ("tile", "washer"), workdir: str | Path | None = None,
                 progress: bool = False, repeats: int = 3) -> pd.DataFrame:
    """Rows of the module docstring for one method, every k in ``shots`` (ascending).

    Each time is the median of ``repeats`` runs, every cold run from its own empty feature cache: single
    runs of a ~1 s pass on a shared CPU move the ratio by up to ±0.4. ``ratio_min``/``ratio_max`` give the
    spread of the per-repeat ratios.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    from gadlib.cache import FeatureCache
    from gadlib.methods import References, create_method, needs_training
    from gadlib.training import load_source

    workdir = Path(workdir or tempfile.mkdtemp(prefix="gadlib-bench-"))
    params = dict(params or {}, device=device, progress=progress)
    trained = needs_training(name)
    method = create_method(name, **{**params, **(TINY_FIT if trained else {})}, cache_dir=str(workdir / "fit"))
    if trained:
        method.fit(load_source(source, list(source_categories)))
    backbone = method.feature_cache().backbone
    _warm_up(method.feature_cache())
    rows = []
    for k in sorted(set(int(k) for k in shots)):
        if k > len(references):
            raise ValueError(f"k={k} needs {k} references, the bench has {len(references)}")
        refs = References(list(references[:k]))
        images = list(queries) + list(refs.normal)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        times = []
        for repeat in range(repeats):
            cold = FeatureCache(backbone, root=workdir / f"backbone_k{k}_{repeat}", device=device, progress=False)
            backbone_s = _timed(lambda: cold.ensure(images))
            scoring = method.with_params(cache_dir=str(workdir / f"method_k{k}_{repeat}"))
            _warm_up(scoring.feature_cache())           # its own backbone: loaded and warmed outside the timing
            method_s = _timed(lambda: scoring.predict_shots(list(queries), refs, [k]))
            warm_s = _timed(lambda: scoring.predict_shots(list(queries), refs, [k]))
            times.append((backbone_s, method_s, warm_s))
        backbone_s, method_s, warm_s = (float(v) for v in np.median(np.array(times), axis=0))
        each = [m / b for b, m, _ in times]
        rows.append(dict(method=name, device=str(cold.device), k=k, queries=len(queries), repeats=repeats,
                         backbone_s=backbone_s, method_s=method_s, warm_s=warm_s, ratio=method_s / backbone_s,
                         ratio_min=min(each), ratio_max=max(each), images_per_s=len(queries) / method_s,
                         peak_rss_mb=_peak_rss_mb(),
                         cuda_peak_mb=torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None,
                         threads=torch.get_num_threads()))
    return pd.DataFrame(rows)


def run_bench(methods: Sequence[str] = DEFAULT_METHODS, shots: Sequence[int] = (1, 2, 4, 8, 16, 32),
              dataset: str = "textile", queries: int = 32, devices: Sequence[str] | None = None,
              method_params: dict | None = None, out: str | Path | None = "results/bench",
              source: str = "synth", source_categories: Sequence[str] = ("tile", "washer"),
              progress: bool = True, repeats: int = 3) -> pd.DataFrame:
    """Bench every method on CPU (and CUDA when present); write ``bench.csv``, ``bench.md`` and a figure."""
    from tqdm.auto import tqdm

    devices = list(devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]))
    query_paths, reference_paths = bench_images(dataset, queries, max(shots))
    parts = []
    with tempfile.TemporaryDirectory(prefix="gadlib-bench-") as work:
        for device in devices:
            for name in tqdm(methods, desc=f"bench ({device})", unit="method", disable=not progress):
                parts.append(bench_method(name, query_paths, reference_paths, shots,
                                          (method_params or {}).get(name), device, source, source_categories,
                                          workdir=Path(work) / device / name, repeats=repeats))
    table = pd.concat(parts, ignore_index=True).assign(dataset=dataset)
    if out is not None:
        write_bench(table, Path(out))
    return table


def bench_table(table: pd.DataFrame) -> pd.DataFrame:
    """The printed summary: ratio to the backbone and warm scoring time, k across."""
    wide = table.pivot_table(index=["device", "method"], columns="k", values="ratio").round(2)
    wide.columns = [f"ratio k={k}" for k in wide.columns]
    warm = table.pivot_table(index=["device", "method"], columns="k", values="warm_s")
    fastest, slowest = warm.columns.min(), warm.columns.max()
    wide[f"warm s k={fastest}"] = warm[fastest].round(3)
    wide[f"warm s k={slowest}"] = warm[slowest].round(3)
    wide["peak RSS MB"] = table.groupby(["device", "method"])["peak_rss_mb"].max().round(0)
    return wide.reset_index()


def write_bench(table: pd.DataFrame, out: Path) -> None:
    from gadlib import viz
    from gadlib.results import environment_info, to_markdown

    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "bench.csv", index=False)
    summary = bench_table(table)
    queries = int(table["queries"].iloc[0])
    note = (f"\nratio = whole prediction / backbone alone on the same {queries} queries + k references, both from an "
            f"empty feature cache, medians of {int(table['repeats'].iloc[0])} runs; warm s = the prediction again with "
            "cached features (matching and scoring only); "
            f"dataset {table['dataset'].iloc[0]}, {int(table['threads'].iloc[0])} torch threads.\n")
    (out / "bench.md").write_text(to_markdown(summary) + note)
    (out / "environment.json").write_text(pd.Series(environment_info()).to_json(indent=1))
    viz.save_figure(cost_versus_k(table), out / "cost_vs_k.png")


def cost_versus_k(table: pd.DataFrame):
    """Two panels: ratio to the backbone and warm scoring seconds, against k (log2), one line per method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for (device, name), rows in table.groupby(["device", "method"], sort=True):
        rows = rows.sort_values("k")
        label = name if table["device"].nunique() == 1 else f"{name} ({device})"
        axes[0].plot(rows["k"], rows["ratio"], marker="o", label=label)
        axes[1].plot(rows["k"], rows["warm_s"], marker="o", label=label)
    axes[0].axhline(1.3, color="grey", linestyle="--", linewidth=0.8)
    axes[0].set_ylabel("method / backbone time")
    axes[1].set_ylabel("warm scoring time (s)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("normal references k")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return fig


def bench_threads(methods: Sequence[str] = ("knn", "resad"), threads: Sequence[int] = (1, 2), k: int = 8,
                  dataset: str = "textile", queries: int = 32, method_params: dict | None = None,
                  out: str | Path | None = "results/bench", source: str = "synth",
                  source_categories: Sequence[str] = ("tile", "washer"), progress: bool = True,
                  repeats: int = 3) -> pd.DataFrame:
    """The bench's rows at one k for each torch thread count (``torch.set_num_threads``): what using
    more cores buys, for the backbone and for each method. The thread count is restored afterwards."""
    from tqdm.auto import tqdm

    before = torch.get_num_threads()
    query_paths, reference_paths = bench_images(dataset, queries, k)
    parts = []
    try:
        with tempfile.TemporaryDirectory(prefix="gadlib-bench-") as work:
            for count in threads:
                torch.set_num_threads(int(count))
                for name in tqdm(methods, desc=f"bench ({count} threads)", unit="method", disable=not progress):
                    parts.append(bench_method(name, query_paths, reference_paths, [k],
                                              (method_params or {}).get(name), "cpu", source, source_categories,
                                              workdir=Path(work) / f"t{count}" / name, repeats=repeats))
    finally:
        torch.set_num_threads(before)
    table = pd.concat(parts, ignore_index=True).assign(dataset=dataset)
    if out is not None:
        from gadlib.results import to_markdown

        Path(out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(out) / "threads.csv", index=False)
        (Path(out) / "threads.md").write_text(to_markdown(threads_table(table)) + (
            f"\nk = {k}, {queries} queries of {dataset}, CPU; seconds from an empty feature cache (backbone alone, "
            f"whole method) and with cached features (warm), medians of {repeats} runs.\n"))
    return table


def threads_table(table: pd.DataFrame) -> pd.DataFrame:
    """Seconds by method and thread count, and the speed-up of the most threads over one thread."""
    view = table.pivot_table(index="method", columns="threads", values=["backbone_s", "method_s", "warm_s"])
    counts = sorted(table["threads"].unique())
    out = pd.DataFrame(index=view.index)
    for column, label in (("backbone_s", "backbone s"), ("method_s", "method s"), ("warm_s", "warm s")):
        for count in counts:
            out[f"{label} ({count} thr)"] = view[(column, count)].round(3)
        if len(counts) > 1:
            out[f"{label} speed-up"] = (view[(column, counts[0])] / view[(column, counts[-1])]).round(2)
    return out.reset_index()


CROSS_DOMAIN_SOURCE = ("brushed_metal", "woven_fabric", "wood_grain", "tile", "washer", "bottle_top")


def bench_search(methods: Sequence[str] = ("knn", "resad"), searches: Sequence[str] | None = None,
                 dataset: str = "textile", shots: Sequence[int] = (8, 32), seed: int = 0,
                 method_params: dict | None = None, source: str = "synth",
                 source_categories: Sequence[str] = CROSS_DOMAIN_SOURCE, out: str | Path | None = "results/bench",
                 progress: bool = True) -> pd.DataFrame:
    """What each nearest-neighbour search costs and changes: for every method, search and k, the scoring
    time of the whole target test set (features cached first, so matching and scoring only) and its image
    and pixel AUROC, with the change against ``search="exact"``.

    Trained methods are trained on the cross-domain study's source (or loaded from its cached checkpoint),
    so these AUROCs are the study's. One reference draw (``seed``) per k: a comparison of searches on
    the same references, not a reported result.
    """
    from gadlib.data.load import load_dataset
    from gadlib.kernels.residual import SEARCHES
    from gadlib.methods import create_method, needs_training
    from gadlib.study import evaluate
    from gadlib.training import train_or_load

    name, frame = load_dataset(dataset)
    rows = []
    for method in methods:
        params = (method_params or {}).get(method, {})
        if not needs_training(method):
            model = create_method(method, **params, progress=False)
        else:
            model = train_or_load(method, source, list(source_categories), params, progress=progress)[0]
        model.feature_cache().ensure(frame["image_path"].tolist())
        for k in shots:
            for search in searches or SEARCHES:
                scoring = model.with_params(search=search, progress=False)
                start = time.perf_counter()
                result = evaluate(frame, scoring, name, [k], [seed], progress=False)
                seconds = time.perf_counter() - start
                metrics = result.tidy.groupby("metric")["value"].mean()
                rows.append(dict(method=method, search=search, k=k, seconds=seconds,
                                 queries=int(len(result.scores)), image_auroc=metrics.get("image_auroc"),
                                 pixel_auroc=metrics.get("pixel_auroc"), threads=torch.get_num_threads()))
                if progress:
                    print(f"{method} k={k} {search}: {seconds:.1f} s, image AUROC {rows[-1]['image_auroc']:.4f}",
                          flush=True)
    table = pd.DataFrame(rows).assign(dataset=dataset)
    exact = table[table["search"] == "exact"].set_index(["method", "k"])
    for column in ("seconds", "image_auroc", "pixel_auroc"):
        base = exact[column].reindex(pd.MultiIndex.from_frame(table[["method", "k"]])).to_numpy()
        table[f"{column}_vs_exact"] = table[column] / base if column == "seconds" else table[column] - base
    if out is not None:
        from gadlib.results import to_markdown

        Path(out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(out) / "search.csv", index=False)
        (Path(out) / "search.md").write_text(to_markdown(search_table(table)) + (
            f"\nWhole {dataset} test set ({int(table['queries'].iloc[0])} queries), one reference draw (seed {seed}), "
            "features cached; time relative to the exact search; AUROC changes in points (x100).\n"))
    return table


def search_table(table: pd.DataFrame) -> pd.DataFrame:
    """The printed summary of :func:`bench_search`: one row per method, k and search."""
    view = table[["method", "k", "search", "seconds", "seconds_vs_exact", "image_auroc", "image_auroc_vs_exact",
                  "pixel_auroc", "pixel_auroc_vs_exact"]].copy()
    for column in ("image_auroc", "pixel_auroc", "image_auroc_vs_exact", "pixel_auroc_vs_exact"):
        view[column] = (100 * view[column]).round(2)
    view["seconds"] = view["seconds"].round(1)
    view["seconds_vs_exact"] = view["seconds_vs_exact"].round(2)
    view = view.dropna(axis=1, how="all")          # pixel columns of a dataset without masks
    return view.rename(columns={"seconds": "scoring s", "seconds_vs_exact": "time / exact",
                                "image_auroc": "image AUROC", "image_auroc_vs_exact": "Δ image",
                                "pixel_auroc": "pixel AUROC", "pixel_auroc_vs_exact": "Δ pixel"})


def time_study(notebook: str | Path = "notebooks/00_quickstart.ipynb", out: str | Path | None = "results/bench",
               parameters: dict | None = None) -> pd.DataFrame:
    """Time to the first result of ``make study``: its first notebook, from an empty feature cache (cold) and
    again with the cache it filled (warm). Runs in subprocesses with their own ``GADLIB_CACHE``."""
    import json
    import os
    import subprocess
    import sys

    rows = []
    with tempfile.TemporaryDirectory(prefix="gadlib-study-") as work:
        env = dict(os.environ, GADLIB_CACHE=str(Path(work) / "cache"))
        for run in ("cold", "warm"):
            command = [sys.executable, "-m", "gadlib.cli", "notebook", str(notebook), str(Path(work) / run)]
            for key, value in (parameters or {}).items():
                command += ["-p", f"{key}={json.dumps(value)}"]
            start = time.perf_counter()
            subprocess.run(command, check=True, env=env, capture_output=True)
            rows.append(dict(notebook=Path(notebook).name, cache=run, seconds=time.perf_counter() - start))
    table = pd.DataFrame(rows)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(out) / "study_time.csv", index=False)
    return table


def bench_layouts(layouts=((1, 0), (2, 1)), dataset: str = "elpv", methods=("knn", "nagl", "resad"),
                    seeds=(0, 1, 2), shots=(1, 2, 4, 8), max_per_group: int | None = 150,
                    train_jobs: int = 2, out=None):
    """Wall time of the same study work under each ``(workers, threads)`` layout; 0 threads = every core.

    The work is what a notebook does: one :func:`gadlib.study.evaluate` call per method (one cell per
    seed, every k; trained methods get a one-step fit, their inference costs the same) with warm features
    and no result store, then ``train_jobs`` small NAGL trainings through :func:`gadlib.training.train_all`
    (each layout in its own checkpoint folder). Writes ``layouts.csv`` to ``out`` when given.
    """
    import os

    from gadlib.data.load import load_dataset, subsample
    from gadlib.methods import create_method, needs_training
    from gadlib.study import evaluate
    from gadlib.parallel import cores
    from gadlib.training import load_source, train_all

    name, frame = load_dataset(dataset)
    frame = subsample(frame, max_per_group)
    models = {}
    for method in methods:
        model = create_method(method, **(TINY_FIT if needs_training(method) else {}), progress=False)
        models[method] = model.fit(load_source("synth", ["tile", "washer"])) if needs_training(method) else model
        model.feature_cache().ensure(frame["image_path"].tolist())
    rows, default_threads = [], torch.get_num_threads()
    for workers, threads in layouts:
        threads = threads or max(1, cores() // workers)
        torch.set_num_threads(threads if workers == 1 else default_threads)
        try:
            # Untimed warm-up: a pool's workers start once per notebook kernel (torch import, backbone load).
            evaluate(frame, models[methods[0]], name, shots[:1], seeds, store=False, workers=workers, progress=False)
            for method, model in models.items():
                started = time.perf_counter()
                evaluate(frame, model, name, shots, seeds, store=False, workers=workers, progress=False)
                rows.append(dict(work=f"score {method}", workers=workers, threads=threads,
                                 seconds=time.perf_counter() - started))
            previous = os.environ.get("GADLIB_CACHE")
            with tempfile.TemporaryDirectory(prefix="gadlib-layout-") as root:
                os.environ["GADLIB_CACHE"] = root
                jobs = [dict(method="nagl", source="synth", categories=["tile", "washer"],
                             params=dict(epochs=2, steps_per_epoch=25, seed=seed)) for seed in range(train_jobs)]
                started = time.perf_counter()
                train_all(jobs, progress=False, workers=workers)
                rows.append(dict(work=f"train {train_jobs} x nagl", workers=workers, threads=threads,
                                 seconds=time.perf_counter() - started))
                if previous is None:
                    os.environ.pop("GADLIB_CACHE")
                else:
                    os.environ["GADLIB_CACHE"] = previous
        finally:
            torch.set_num_threads(default_threads)
    table = pd.DataFrame(rows).assign(dataset=dataset, max_per_group=max_per_group)
    if out is not None:
        from gadlib.results import to_markdown

        Path(out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(out) / "layouts.csv", index=False)
        (Path(out) / "layouts.md").write_text(to_markdown(layouts_table(table)) + (
            f"\nSeconds on {dataset} (at most {max_per_group} images per group), 3 seeds x k = 1, 2, 4, 8 per "
            "method (trained methods after a one-step fit), warm features, no result store; training: small NAGL "
            "fits side by side. Speed-up = 1 process / pool.\n"))
    return table


def layouts_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per piece of work: seconds under each layout and the pool's speed-up."""
    table = table.assign(layout=table["workers"].astype(str) + " x " + table["threads"].astype(str))
    wide = table.pivot_table(index="work", columns="layout", values="seconds", sort=False).round(1)
    single, pooled = [c for c in wide.columns if c.startswith("1 x")], [c for c in wide.columns if not c.startswith("1 x")]
    if single and pooled:
        wide["speed-up"] = (wide[single[0]] / wide[pooled[0]]).round(2)
    total = wide.sum(numeric_only=True).round(1).to_frame("total").T
    if single and pooled:
        total["speed-up"] = round(float(total[single[0]].iloc[0] / total[pooled[0]].iloc[0]), 2)
    return pd.concat([wide, total]).reset_index(names="work")
