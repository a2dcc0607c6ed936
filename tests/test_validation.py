"""Choosing defaults on held-out source categories: the table's paired differences and the stated rule."""
from __future__ import annotations

import pandas as pd
import pytest

from gadlib import validation


def _rows(config: str, values: dict[tuple[int, int], float], category: str = "washer") -> list[dict]:
    return [dict(dataset="synth", category=category, domain="washer", method="resad", config=config, shots=k,
                 abnormal_shots=0, seed=seed, metric="image_auroc", value=v) for (k, seed), v in values.items()]


@pytest.fixture
def tidy() -> pd.DataFrame:
    long = {(1, 0): 0.80, (1, 1): 0.82, (4, 0): 0.90, (4, 1): 0.92}
    short = {(1, 0): 0.79, (1, 1): 0.81, (4, 0): 0.91, (4, 1): 0.91}       # 0.5 points lower on average
    worse = {(1, 0): 0.70, (1, 1): 0.72, (4, 0): 0.80, (4, 1): 0.82}       # 10 points lower
    return pd.DataFrame(_rows("long", long) + _rows("short", short) + _rows("worse", worse))


def test_the_table_gives_means_over_seeds_and_paired_differences_to_the_first_configuration(tidy):
    table = validation.validation_table(tidy).set_index("configuration")
    assert list(table.index) == ["long", "short", "worse"]           # first-seen order, the reference first
    assert table.loc["long", "k=1"].startswith("81.0 ±")
    assert table.loc["long", "Δ k=1"] == ""
    assert table.loc["short", "Δ k=1"] == "-1.0"                     # (0.79 - 0.80 + 0.81 - 0.82) / 2
    assert table.loc["short", "Δ k=4"] == "+0.0"
    assert table.loc["worse", "Δ k=4"] == "-10.0"


def test_the_rule_keeps_the_cheaper_candidate_within_the_tolerance_and_not_beyond(tidy):
    assert validation.choose(tidy, ["short", "long"], tolerance=0.01) == "short"
    assert validation.choose(tidy, ["short", "long"], tolerance=0.004) == "long"
    assert validation.choose(tidy, ["worse", "long"], tolerance=0.01) == "long"
    assert validation.choose(tidy, ["long", "short"], tolerance=0.0) == "long"
    with pytest.raises(ValueError, match="no 'image_auroc' rows"):
        validation.choose(tidy, ["long", "absent"])


def test_categories_cannot_be_both_trained_on_and_held_out():
    with pytest.raises(ValueError, match="both trained on and held out"):
        validation.validate("resad", {"default": {}}, train_categories=["tile", "washer"], held_out=["washer"])
    with pytest.raises(ValueError, match="at least one configuration"):
        validation.validate("resad", {})
    assert not set(validation.TRAIN_CATEGORIES) & set(validation.HELD_OUT_CATEGORIES)
