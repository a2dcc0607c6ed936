"""A study grid: cells are independent, written atomically, resumable after a kill, and run the same
sequentially, on a process pool and on a Dask cluster (issue 6, scale)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from gadlib.grid import Cell, cell_file, collect, make_grid, pending, run_cell, run_grid

KEYS = ["dataset", "category", "domain", "method", "shots", "seed", "metric"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from gadlib.data.synth import generate_suite

    root = tmp_path_factory.mktemp("grid_suite")
    generate_suite(root, categories=["tile", "leather"], defects=["hole", "scratch"], n_train=5, n_test_normal=3,
                   n_test_per_defect=2, size=48, seed=6)
    return f"synth:{root}"


def _cells(spec, seeds=(0, 1, 2)):
    return make_grid({"kNN": ("knn", {"image_size": 48}), "kNN cosine": ("knn", {"image_size": 48, "metric": "cosine"})},
                     {spec: None}, seeds=seeds, shots=[1, 2])


def _sorted(tidy: pd.DataFrame) -> pd.DataFrame:
    return tidy.drop(columns=["cell"], errors="ignore").sort_values(KEYS).reset_index(drop=True)


def test_grid_rows_equal_one_run_and_a_rerun_skips_everything(spec, tmp_path):
    from gadlib.study import run_evaluation

    cells = _cells(spec)
    assert len(cells) == 6 and len({c.key() for c in cells}) == 6
    tidy = run_grid(cells, tmp_path / "study", progress=False)
    whole = run_evaluation(spec, "knn", [1, 2], [0, 1, 2], method_params={"image_size": 48}, progress=False).tidy
    assert _sorted(tidy[tidy["method"] == "kNN"]).equals(_sorted(whole.assign(method="kNN")))
    assert pending(cells, tmp_path / "study") == []
    stamps = {c.key(): cell_file(tmp_path / "study", c).stat().st_mtime_ns for c in cells}
    again = run_grid(cells, tmp_path / "study", progress=False)
    assert again.equals(tidy)
    assert stamps == {c.key(): cell_file(tmp_path / "study", c).stat().st_mtime_ns for c in cells}   # untouched
    # The label is not part of the configuration; the hyper-parameters are.
    relabelled = Cell(**{**cells[0].__dict__, "label": "other"})
    assert relabelled.key() == cells[0].key() and cells[0].key() != cells[3].key()
    with pytest.raises(ValueError, match="same cell twice"):
        run_grid(cells + cells[:1], tmp_path / "twice", progress=False)


def test_a_killed_study_loses_at_most_the_cell_in_flight(spec, tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "study.py"
    script.write_text(f'''
import time
from gadlib import grid
from gadlib.grid import make_grid, run_grid
original = grid.run_cell
def slow(cell, out):                       # a slow study: time to kill it in the middle
    path = original(cell, out)
    time.sleep(1.5)
    return path
grid.run_cell = slow
cells = make_grid({{"kNN": ("knn", {{"image_size": 48}}), "kNN cosine": ("knn", {{"image_size": 48, "metric": "cosine"}})}},
                  {{{spec!r}: None}}, seeds=(0, 1, 2), shots=[1, 2])
run_grid(cells, {str(out)!r}, progress=False)
''')
    process = subprocess.Popen([sys.executable, str(script)], env=dict(os.environ), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    cells = _cells(spec)
    deadline = time.time() + 240
    while len(cells) - len(pending(cells, out)) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = [c for c in cells if c not in pending(cells, out)]
    assert 2 <= len(done) < len(cells), "the study should have been killed midway"
    for cell in done:                                  # every file that exists is complete
        rows = pd.read_csv(cell_file(out, cell))
        assert len(rows) and set(rows["seed"]) == {cell.seed} and set(rows["shots"]) == {1, 2}
    computed = []
    import gadlib.grid as grid

    original = grid.run_cell

    def counting(cell, folder):
        computed.append(cell.key())
        return original(cell, folder)

    grid.run_cell = counting
    try:
        tidy = run_grid(cells, out, progress=False)
    finally:
        grid.run_cell = original
    assert sorted(computed) == sorted(c.key() for c in cells if c not in done)   # only what was missing
    fresh = run_grid(cells, tmp_path / "fresh", progress=False)
    assert _sorted(tidy).equals(_sorted(fresh))


def test_process_pool_and_dask_give_the_same_rows(spec, tmp_path):
    distributed = pytest.importorskip("distributed")
    cells = _cells(spec, seeds=(0, 1))
    sequential = _sorted(run_grid(cells, tmp_path / "one", progress=False))
    pooled = _sorted(run_grid(cells, tmp_path / "pool", workers=2, progress=False))
    assert pooled.equals(sequential)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        on_dask = _sorted(run_grid(cells, tmp_path / "dask", scheduler=client, progress=False))
        by_address = _sorted(run_grid(cells[:1], tmp_path / "address", scheduler=cluster.scheduler_address,
                                      progress=False))
    assert on_dask.equals(sequential)
    assert by_address.equals(_sorted(collect(cells[:1], tmp_path / "one")))


def test_run_cell_writes_nothing_when_the_cell_fails(spec, tmp_path):
    bad = Cell(method="knn", dataset=spec, seed=0, shots=(99,), params=(("image_size", 48),))
    with pytest.raises(ValueError, match="k=99 normal references asked for"):
        run_cell(bad, tmp_path)
    assert not cell_file(tmp_path, bad).exists() and not list(tmp_path.rglob("*.tmp"))


def test_bench_times_methods_against_the_backbone(spec, tmp_path):
    from gadlib.bench import bench_images, run_bench

    with pytest.raises(ValueError, match="the bench needs 40 normal pool"):
        bench_images(spec, queries=2, references=40)
    table = run_bench(["knn", "vod"], shots=[1, 2], dataset=spec, queries=3,
                      method_params={"knn": {"image_size": 48}, "vod": {"image_size": 48}}, out=tmp_path / "bench",
                      source=spec, source_categories=["tile"], progress=False, repeats=2)
    assert len(table) == 4 and set(table["method"]) == {"knn", "vod"} and set(table["k"]) == {1, 2}
    assert (table["backbone_s"] > 0).all() and (table["warm_s"] < table["method_s"]).all()
    assert (table["ratio"] - table["method_s"] / table["backbone_s"]).abs().max() < 1e-12
    # two repeats: the ratio of the medians (means) lies between the two runs' ratios
    assert (table["repeats"] == 2).all() and (table["ratio_min"] <= table["ratio"] + 1e-12).all()
    assert (table["ratio"] <= table["ratio_max"] + 1e-12).all()
    assert (table["images_per_s"] * table["method_s"] - 3).abs().max() < 1e-9
    assert {"bench.csv", "bench.md", "cost_vs_k.png"} <= {p.name for p in (tmp_path / "bench").iterdir()}
    assert "ratio k=2" in (tmp_path / "bench" / "bench.md").read_text()
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        run_bench(["knn"], shots=[1], dataset=spec, queries=3, out=None, progress=False, repeats=0)


def test_bench_search_compares_searches_on_the_same_references(spec, tmp_path):
    pytest.importorskip("faiss")
    from gadlib.bench import bench_search
    from gadlib.kernels.residual import SEARCHES
    from gadlib.study import run_evaluation

    table = bench_search(["knn"], dataset=spec, shots=[2], method_params={"knn": {"image_size": 48}},
                         out=tmp_path / "bench", progress=False)
    assert list(table["search"]) == list(SEARCHES) and (table["k"] == 2).all()
    exact = table.set_index("search").loc["exact"]
    assert exact["seconds_vs_exact"] == 1 and exact["image_auroc_vs_exact"] == 0
    # the exact row is the study's own number for this draw
    study = run_evaluation(spec, "knn", shots=[2], seeds=[0], method_params={"image_size": 48}, progress=False)
    assert exact["image_auroc"] == pytest.approx(study.tidy.query("metric == 'image_auroc'")["value"].mean())
    assert table["image_auroc_vs_exact"].abs().max() < 0.1      # every search finds (nearly) the same patches
    assert "Δ image" in (tmp_path / "bench" / "search.md").read_text()


def test_bench_threads_restores_the_thread_count(spec, tmp_path):
    import torch

    from gadlib.bench import bench_threads

    before = torch.get_num_threads()
    table = bench_threads(["knn"], threads=[1], k=1, dataset=spec, queries=2,
                          method_params={"knn": {"image_size": 48}}, out=tmp_path, progress=False)
    assert torch.get_num_threads() == before
    assert list(table["threads"]) == [1] and (table["warm_s"] > 0).all()
    assert "speed-up" not in (tmp_path / "threads.md").read_text()     # one thread count: nothing to compare
