"""The study loop, run folders and aggregation: known answers, protocol invariants, clean failures."""
from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gadlib.methods import create_method
from gadlib.results import (format_mean_std, read_episodes, read_tidy, summarize, summary_table, to_markdown,
                            upgrade_run_folder, write_run)
from gadlib.study import TIDY_COLUMNS, evaluate, run_evaluation

KNN = dict(image_size=64, progress=False)


def test_evaluate_rows_and_protocol(tiny_suite):
    _, frame = tiny_suite
    result = evaluate(frame, create_method("knn", **KNN), "synth", shots=[1, 2, 4], seeds=[0, 1, 2], progress=False)
    tidy = result.tidy
    assert list(tidy.columns) == TIDY_COLUMNS
    # 2 categories x 3 seeds x 3 shots, each with 3 image + 4 pixel metrics (masks exist)
    assert len(tidy) == 2 * 3 * 3 * 7
    assert set(tidy["metric"]) == {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
                                   "pixel_aupro", "pixel_best_dice"}
    assert tidy["value"].between(0, 1).all()
    assert len(result.episodes) == 2 * 3 * 3
    for episode in result.episodes:
        assert not set(episode.normal_refs) & set(episode.queries)
    # per-query scores: every query of every episode, labels copied from the table
    labels = frame.set_index("image_path")["label"]
    assert (result.scores["label"].to_numpy() == labels.loc[result.scores["image_path"]].to_numpy()).all()
    n_test = (frame["split"] == "test").sum()
    assert len(result.scores) == n_test * 3 * 3


def test_a_k_reads_the_same_whatever_other_k_are_requested(tiny_suite):
    # a k's draw depends on (category, k, seed) only, so the scaling notebook reads k = 4 from the other
    # notebooks' k = 1, 2, 4, 8 cells: the same draw and the same numbers as a k = 4 request
    _, frame = tiny_suite
    method = create_method("knn", **KNN)
    alone = evaluate(frame, method, "synth", shots=[2], seeds=[0, 1], store=False, progress=False)
    among = evaluate(frame, method, "synth", shots=[1, 2, 4], seeds=[0, 1], store=False, progress=False)
    assert [e.normal_refs for e in alone.episodes] == [e.normal_refs for e in among.episodes if e.shots == 2]
    kept = among.tidy[among.tidy["shots"] == 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone.tidy.reset_index(drop=True), kept, check_exact=False, rtol=1e-6)


def test_second_run_reuses_cached_features(tiny_suite):
    _, frame = tiny_suite
    method = create_method("knn", **KNN)
    first = evaluate(frame, method, "synth", shots=[2], seeds=[0], progress=False)
    cache = method.feature_cache()
    misses = cache.misses
    second = evaluate(frame, method, "synth", shots=[2], seeds=[0], progress=False)
    assert cache.misses == misses
    pd.testing.assert_frame_equal(first.tidy, second.tidy)


def test_run_folder_contents(tiny_suite, tmp_path):
    root, _ = tiny_suite
    out = tmp_path / "run"
    result = run_evaluation(f"folder:{root}", "knn", [1, 2], [0, 1, 2], out, method_params=dict(image_size=64),
                            progress=False)
    assert {p.name for p in out.iterdir()} >= {"tidy.csv", "episodes.json.gz", "params.json", "environment.json",
                                               "summary.md", "scores.csv.gz"}
    pd.testing.assert_frame_equal(read_tidy(out), result.tidy, check_dtype=False)
    episodes = read_episodes(out)
    assert len(episodes) == 2 * 3 * 2
    assert episodes == list(result.episodes)
    params = json.loads((out / "params.json").read_text())
    assert params["shots"] == [1, 2] and "efficientnet_lite0" in params["backbone_key"]
    assert "pixel_aupro" in (out / "summary.md").read_text()


def test_a_run_folder_of_the_earlier_layout_upgrades_to_what_write_run_writes_now(tiny_suite, tmp_path):
    root, _ = tiny_suite
    result = run_evaluation(f"folder:{root}", "knn", [1, 2], [0, 1], None, method_params=dict(image_size=64),
                            progress=False)
    result = replace(result, per_type=result.tidy.assign(defect="scratch"))
    now, before = tmp_path / "now", tmp_path / "before"
    for folder in (now, before):
        write_run(folder, result, {}, write_scores=False)
    # the earlier layout: every episode with its whole query list, per-defect-type rows as plain CSV
    with gzip.GzipFile(before / "episodes.json.gz", "wb", mtime=0) as handle:
        handle.write(json.dumps([json.loads(e.to_json()) for e in result.episodes]).encode())
    (before / "tidy_per_defect_type.csv.gz").unlink()
    result.per_type.to_csv(before / "tidy_per_defect_type.csv", index=False)
    assert read_episodes(before) == read_episodes(now) == list(result.episodes)
    assert upgrade_run_folder(before) and not upgrade_run_folder(before)
    assert {p.name for p in before.iterdir()} == {p.name for p in now.iterdir()}
    for name in ("episodes.json.gz", "tidy_per_defect_type.csv.gz"):
        assert (before / name).read_bytes() == (now / name).read_bytes()
    stored = json.loads(gzip.open(now / "episodes.json.gz").read())
    assert len(stored["query_lists"]) == len({e.target for e in result.episodes}) < len(stored["episodes"])
    pd.testing.assert_frame_equal(pd.read_csv(now / "tidy_per_defect_type.csv.gz"), result.per_type, check_dtype=False)


def _copy_suite(root, tmp_path):
    copy = tmp_path / "suite"
    shutil.copytree(root, copy)
    return copy


def test_k_larger_than_pool_fails_before_writing(tiny_suite, tmp_path):
    root, _ = tiny_suite
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="reference pool.*holds only 4"):
        run_evaluation(f"folder:{root}", "knn", [8], [0], out, method_params=KNN)
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_mask_size_mismatch_fails_before_writing(tiny_suite, tmp_path):
    copy = _copy_suite(tiny_suite[0], tmp_path)
    mask = sorted(copy.glob("tile/ground_truth/*/*.png"))[0]
    Image.new("L", (32, 32)).save(mask)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=f"{mask.name}.*32x32.*64x64"):
        run_evaluation(f"folder:{copy}", "knn", [1], [0], out, method_params=KNN)
    assert not out.exists()


def test_corrupt_image_fails_cleanly(tiny_suite, tmp_path):
    copy = _copy_suite(tiny_suite[0], tmp_path)
    broken = sorted(copy.glob("screw/test/good/*.png"))[0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=f"{broken.name}.*cannot decode"):
        run_evaluation(f"folder:{copy}", "knn", [1], [0], out, method_params=KNN)
    assert not out.exists()


def test_empty_category_folder_is_an_error(tiny_suite, tmp_path):
    copy = _copy_suite(tiny_suite[0], tmp_path)
    (copy / "empty_part" / "train" / "good").mkdir(parents=True)
    (copy / "empty_part" / "test" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty_part"):
        run_evaluation(f"folder:{copy}", "knn", [1], [0], tmp_path / "run", method_params=KNN)


def _tidy(values: dict[tuple[str, int], float]) -> pd.DataFrame:
    rows = [dict(dataset="d", category=c, domain="x", method="m", shots=2, abnormal_shots=0, seed=s,
                 metric="image_auroc", value=v) for (c, s), v in values.items()]
    return pd.DataFrame(rows)


def test_summarize_macro_over_categories_then_seeds():
    # per seed, the mean over categories: seed0 (0.6+0.8)/2=0.7, seed1 (0.7+0.9)/2=0.8, seed2 (0.8+1.0)/2=0.9
    tidy = _tidy({("a", 0): 0.6, ("b", 0): 0.8, ("a", 1): 0.7, ("b", 1): 0.9, ("a", 2): 0.8, ("b", 2): 1.0})
    row = summarize(tidy).iloc[0]
    assert row["mean"] == pytest.approx(0.8)
    assert row["std"] == pytest.approx(0.1)  # sample std of 0.7, 0.8, 0.9
    assert row["seeds"] == 3 and row["categories"] == 2
    table = summary_table(tidy)
    assert table.loc[0, "shots=2"] == "80.0 ± 10.0"
    with pytest.raises(ValueError, match="no rows for metric 'pixel_auroc'"):
        summary_table(tidy, "pixel_auroc")


def test_format_and_markdown():
    assert format_mean_std(0.8234, 0.0123) == "82.3 ± 1.2"
    text = to_markdown(pd.DataFrame({"a": [1, None], "b": ["x", "y"]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.0 | x |", "|  | y |"]


def test_evaluate_needs_shots_and_seeds(tiny_suite):
    _, frame = tiny_suite
    with pytest.raises(ValueError, match="at least one k"):
        evaluate(frame, create_method("knn", **KNN), "synth", shots=[], seeds=[0])


def test_simulated_abnormal_refs_are_recorded(tiny_suite, tmp_path):
    root, _ = tiny_suite
    out = tmp_path / "run"
    result = run_evaluation(f"folder:{root}", "knn", [2], [0], out, method_params=KNN, abnormal_shots=1,
                            abnormal_source="simulated", progress=False)
    episode = result.episodes[0]
    assert episode.abnormal_shots == 1 and episode.abnormal_source == "simulated"
    ref = episode.abnormal_refs[0]
    assert Path(ref).is_file() and Path(episode.abnormal_masks[0]).is_file()
    assert ref not in episode.queries
    assert set(result.tidy["abnormal_shots"]) == {1}
    assert np.isfinite(result.tidy["value"]).all()


def test_domain_without_anomalies_gets_no_undefined_metrics(tiny_suite):
    """A domain whose queries are all normal yields rows only for the domains where AUROC is defined."""
    _, frame = tiny_suite
    frame = frame.copy()
    normal_screws = (frame["category"] == "screw") & (frame["label"] == 0) & (frame["split"] == "test")
    frame.loc[normal_screws, "domain"] = "lab_b"
    frame.loc[frame["category"] == "tile", "domain"] = "lab_a"
    result = evaluate(frame, create_method("knn", **KNN), "synth", shots=[1], seeds=[0], progress=False)
    screw_domains = set(result.tidy.loc[result.tidy["category"] == "screw", "domain"])
    # screw queries: normal ones in lab_b, anomalous ones in "synthetic": the pooled group only
    assert screw_domains == {"lab_b+synthetic"}
    assert set(result.tidy.loc[result.tidy["category"] == "tile", "domain"]) == {"lab_a"}


def test_defect_auroc_known_answer():
    from gadlib.results import defect_auroc

    base = dict(dataset="d", category="c", method="m", shots=1)
    rows = []
    for seed, flip in ((0, False), (1, True)):
        rows += [dict(base, seed=seed, label=0, defect="good", score=s) for s in (0.1, 0.2)]
        # "big" always outranks the normals; "faint" is below both in seed 0 and between them in seed 1
        rows += [dict(base, seed=seed, label=1, defect="big", score=0.9)]
        rows += [dict(base, seed=seed, label=1, defect="faint", score=0.15 if flip else 0.05)]
    table = defect_auroc(pd.DataFrame(rows)).set_index("defect")
    assert table.loc["big", "mean"] == pytest.approx(1.0) and table.loc["big", "std"] == 0
    assert table.loc["faint", "mean"] == pytest.approx(0.25)  # seed 0: 0.0, seed 1: 0.5
    assert table.loc["faint", "seeds"] == 2


def test_methods_of_two_image_sizes_in_one_schedule_get_masks_of_their_own_size(tiny_suite):
    from gadlib.study import evaluate_many

    _, frame = tiny_suite
    small, large = create_method("knn", **KNN), create_method("knn", image_size=96, progress=False)
    requests = [dict(frame=frame, method=m, dataset="synth", shots=[2], seeds=[0]) for m in (small, large)]
    together = evaluate_many(requests, progress=False, store=False, workers=1)
    alone = evaluate(frame, large, "synth", shots=[2], seeds=[0], progress=False)
    pixel = together[1].tidy[together[1].tidy["metric"].str.startswith("pixel")]
    assert len(pixel) and np.allclose(pixel["value"].to_numpy(),
                                      alone.tidy.loc[alone.tidy["metric"].str.startswith("pixel"), "value"].to_numpy())
