"""Tests of the scaling study's sources (gadlib.scaling) and the source filters they use."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gadlib import scaling
from gadlib.data.synth import ALL_DEFECTS, DEFECTS
from gadlib.training import checkpoint_path, load_source


def test_suite_counts_split_half_normal_half_defective():
    assert scaling.suite_counts(60, 6) == dict(n_train=20, n_test_normal=10, n_test_per_defect=5)   # the default
    assert scaling.suite_counts(120, 6) == dict(n_train=40, n_test_normal=20, n_test_per_defect=10)
    counts = scaling.suite_counts(60, 10)
    assert counts["n_train"] + counts["n_test_normal"] + 10 * counts["n_test_per_defect"] == 60
    for images, families in [(7, 6), (4, 1), (8, 6)]:
        with pytest.raises(ValueError):
            scaling.suite_counts(images, families)


def test_the_default_source_is_the_studys_own():
    source = scaling.suite_source()
    assert source.specs == ("synth",) and source.categories == scaling.DEFAULT_CATEGORIES
    assert source.axis == "default" and source.job("inctrl") == dict(
        method="inctrl", source="synth", params={}, categories=list(scaling.DEFAULT_CATEGORIES))


def test_sources_never_hold_a_target_or_held_out_category():
    assert not set(scaling.EXTRA_CATEGORIES) & (set(scaling.HELD_OUT) | set(scaling.UNSEEN_TARGETS))
    assert len(scaling.DEFAULT_CATEGORIES + scaling.EXTRA_CATEGORIES) == 20
    with pytest.raises(ValueError, match="leather"):
        scaling.Source("bad", "categories", categories=("tile", "leather"))
    with pytest.raises(ValueError, match="axis"):
        scaling.Source("bad", "size")


def test_bigger_suites_hold_the_smaller_ones_images(tmp_path):
    small = scaling.suite_source(2, 24, root=tmp_path, size=48)
    big = scaling.suite_source(3, 48, root=tmp_path, size=48)
    assert small.axis_value == 2 and big.categories == scaling.DEFAULT_CATEGORIES[:3]
    small_root, big_root = (tmp_path / s.specs[0].split("/")[-1] for s in (small, big))
    first = small_root / "brushed_metal" / "train" / "good" / "000.png"
    same = big_root / "brushed_metal" / "train" / "good" / "000.png"
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(same)))
    described = big.describe()
    assert described["source_categories"] == 3 and described["source_images"] == 3 * 48
    assert described["source_defects"] == len(DEFECTS) and described["source_real_anomalies_left_out"] == 0
    more = scaling.suite_source(2, 40, ALL_DEFECTS, root=tmp_path, size=48, axis="defects")
    assert more.axis_value == 10 and more.describe()["source_defects"] == 10


def test_jobs_carry_the_backbone_the_length_and_the_domain_filter():
    base = scaling.suite_source()
    lite2 = scaling.with_backbone(base, "efficientnet_lite2")
    assert lite2.job("resad")["params"] == {"backbone": "efficientnet_lite2"}
    assert scaling.with_length(base, 4).job("inctrl", {"lr": 1e-3})["params"] == {"lr": 1e-3, "epochs": 40}
    mono = next(s for s in scaling.real_sources() if s.name == "ELPV mono")
    assert mono.job("nagl") == dict(method="nagl", source="elpv", params={}, categories=None, domains=["mono"])
    with pytest.raises(ValueError, match="positive"):
        scaling.with_length(base, 0)


def test_a_source_never_scores_its_own_dataset():
    tidy = pd.DataFrame(dict(dataset=["elpv", "elpv", "elpv", "textile", "synth"],
                             domain=["mono+poly", "mono", "poly", "textile", "synthetic"], value=range(5)))
    sources = {s.name: s for s in scaling.real_sources()}
    assert list(scaling.keep_scored(tidy, sources["ELPV mono"])["domain"]) == ["poly", "textile", "synthetic"]
    assert list(scaling.keep_scored(tidy, sources["ELPV poly"])["domain"]) == ["mono", "textile", "synthetic"]
    assert list(scaling.keep_scored(tidy, sources["textile + synth"])["dataset"]) == ["elpv"] * 3 + ["synth"]
    assert len(scaling.keep_scored(tidy, scaling.suite_source())) == 5


def test_targets_are_labelled_per_view():
    tidy = pd.DataFrame(dict(domain=["mono+poly", "mono", "poly"]))
    assert list(scaling.label_target(tidy, "ELPV")["target"]) == ["ELPV", "ELPV mono", "ELPV poly"]
    assert list(scaling.label_target(pd.DataFrame(dict(domain=["synthetic"] * 2)), "synth")["target"]) == ["synth"] * 2


def _rows(method, source, axis, images, values):
    return [dict(method=method, source=source, axis=axis, axis_value=None, source_images=images, target="T",
                 shots=4, seed=seed, metric="image_auroc", value=v) for seed, v in enumerate(values)]


def test_verdict_finds_the_smallest_source_that_passes_the_bar():
    tidy = pd.DataFrame(_rows("a", "base", "default", 100, [0.70, 0.72])
                        + _rows("a", "big", "categories", 400, [0.90, 0.92])
                        + _rows("a", "bigger", "categories", 800, [0.95, 0.95])
                        + _rows("b", "base", "default", 100, [0.60, 0.60])
                        + _rows("b", "big", "categories", 400, [0.70, 0.66]))
    bar = pd.DataFrame([dict(target="T", shots=4, seed=s, metric="image_auroc", value=0.8) for s in range(2)])
    verdict = scaling.verdict(tidy, bar, keys=["target", "shots"]).set_index("method")
    assert verdict.loc["a", "smallest_passing"] == "big" and verdict.loc["a", "its_images"] == 400
    assert verdict.loc["a", "best_source"] == "bigger" and verdict.loc["a", "gain"] == pytest.approx(0.24)
    assert pd.isna(verdict.loc["b", "smallest_passing"]) and verdict.loc["b", "default"] == pytest.approx(0.6)
    assert verdict.loc["b", "bar"] == pytest.approx(0.8) and verdict.loc["b", "best"] == pytest.approx(0.68)


def test_the_default_source_starts_every_axis():
    tidy = pd.DataFrame(_rows("a", "base", "default", 100, [0.7]) + _rows("a", "big", "categories", 400, [0.9]))
    curves = scaling.along_axes(tidy, dict(categories=6, images=60))
    categories = curves[curves["axis"] == "categories"]
    assert sorted(categories["source"]) == ["base", "big"]
    assert categories.loc[categories["source"] == "base", "axis_value"].item() == 6
    assert (curves["axis"] != "default").all() and set(curves["axis"]) == set(scaling.AXES[1:])


def test_load_source_keeps_only_the_named_domains(tiny_suite):
    root, frame = tiny_suite
    kept = load_source(f"synth:{root}", domains=["synthetic"])
    assert len(kept) == len(frame)
    with pytest.raises(ValueError, match="domains"):
        load_source(f"synth:{root}", domains=["mono"])


def test_a_domain_filter_is_part_of_the_checkpoint_key_only_when_given(tmp_path):
    args = ("inctrl", {}, "elpv", None, "backbone-key")
    plain = checkpoint_path(*args, root=tmp_path)
    assert checkpoint_path(*args, root=tmp_path, domains=None) == plain
    assert checkpoint_path(*args, root=tmp_path, domains=["mono"]) != plain
    assert checkpoint_path(*args, root=tmp_path, domains=["mono"]) != checkpoint_path(*args, root=tmp_path,
                                                                                      domains=["poly"])
