"""Before/after tables: known means, the best training-free pick, whole-target rows and bad input."""
import subprocess

import numpy as np
import pandas as pd
import pytest

from gadlib.compare import before_after, before_after_markdown, read_tidy, whole_target


def _rows(values: dict, dataset="elpv", domain="mono+poly") -> pd.DataFrame:
    """values: (method, shots) -> per-seed AUROCs (one category)."""
    rows = [dict(dataset=dataset, category=dataset, domain=domain, method=m, shots=k, seed=s, metric="image_auroc",
                 value=v) for (m, k), seeds in values.items() for s, v in enumerate(seeds)]
    return pd.DataFrame(rows)


def test_before_after_means_changes_and_best_training_free():
    before = _rows({("ResAD", 1): [0.5, 0.7], ("kNN", 1): [0.9, 0.9]})
    after = _rows({("ResAD", 1): [0.8, 0.8], ("ResAD", 2): [0.7, 0.9], ("kNN", 1): [0.6, 0.7],
                   ("kNN + A", 1): [0.75, 0.85], ("kNN", 2): [0.95, 0.95], ("kNN + A", 2): [0.5, 0.5]})
    table = before_after(before, after, trained=["ResAD"], training_free=["kNN", "kNN + A"]).set_index("shots")
    assert table.loc[1, "before"] == pytest.approx(0.6) and table.loc[1, "after"] == pytest.approx(0.8)
    assert table.loc[1, "change"] == pytest.approx(0.2)
    # The best training-free method is chosen per k from the after rows: kNN + A at k = 1, kNN at k = 2.
    assert table.loc[1, "best_training_free_method"] == "kNN + A"
    assert table.loc[1, "best_training_free"] == pytest.approx(0.8)
    assert table.loc[2, "best_training_free_method"] == "kNN" and table.loc[2, "after_minus_best"] == pytest.approx(-0.15)
    assert np.isnan(table.loc[2, "before"])            # no ResAD at k = 2 before
    text = before_after_markdown(before_after(before, after, ["ResAD"], ["kNN", "kNN + A"]))
    assert "| elpv | ResAD | 60.0 → 80.0 (80.0) | – → 80.0 (95.0) |" in text


def test_before_after_names_missing_methods():
    after = _rows({("ResAD", 1): [0.8], ("kNN", 1): [0.7]})
    with pytest.raises(ValueError, match="NAGL"):
        before_after(after, after, trained=["NAGL"], training_free=["kNN"])
    with pytest.raises(ValueError, match="at least one"):
        before_after(after, after, trained=["ResAD"], training_free=[])


def test_whole_target_keeps_the_joined_domain_only():
    tidy = pd.concat([_rows({("kNN", 1): [0.1]}, domain=d) for d in ("mono+poly", "mono", "poly")]
                     + [_rows({("kNN", 1): [0.3]}, dataset="textile", domain="textile")])
    kept = whole_target(tidy)
    assert sorted(kept["domain"]) == ["mono+poly", "textile"]


def test_read_tidy_from_git_filters_views_and_keeps_one_source_per_method(tmp_path):
    def write(folder, frame):
        (tmp_path / "results" / folder).mkdir(parents=True, exist_ok=True)
        frame.to_csv(tmp_path / "results" / folder / "tidy.csv", index=False)

    first = pd.concat([_rows({("kNN", 1): [0.7]}).assign(abnormal_shots=m) for m in (0, 1)])
    write("a", first)
    write("b", _rows({("kNN", 1): [0.1], ("VOD", 1): [0.6]}))
    git = dict(cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(["git", "init", "-q"], **git)
    subprocess.run(["git", "add", "."], **git)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], **git)
    write("b", _rows({("VOD", 1): [0.9]}))                       # the working tree differs from the commit
    views = (("a", "tidy.csv", {"abnormal_shots": [0]}), ("b", "tidy.csv", {}), ("c", "tidy.csv", {}))
    old = read_tidy("HEAD", root="results", views=views, repo=tmp_path)
    assert sorted(old["method"]) == ["VOD", "kNN"]             # kNN from view a only, at m = 0 only
    assert old.loc[old["method"] == "kNN", "value"].tolist() == [0.7]
    with pytest.raises(RuntimeError, match="nonexistent"):
        read_tidy("nonexistent", root="results", views=views, repo=tmp_path)
    assert read_tidy(None, root="results", views=views, repo=tmp_path).query("method == 'VOD'")["value"].item() == 0.9


def test_headline_reads_every_method_against_the_bar_at_the_same_k():
    from gadlib.compare import headline, headline_markdown

    tidy = pd.concat([
        _rows({("bar", 2): [0.8, 0.9], ("bar", 4): [0.9, 0.9], ("ResAD", 2): [0.7, 0.7], ("ResAD", 4): [0.95, 0.95],
               ("NAGL", 2): [0.85, 0.85]}),
        _rows({("bar", 2): [0.6, 0.6], ("ResAD", 2): [0.6, 0.6], ("NAGL", 2): [0.5, 0.7]}, dataset="textile",
              domain="textile"),
    ])
    table = headline(tidy, bar="bar", methods=["ResAD", "NAGL"], targets={"elpv": "ELPV", "textile": "textile"})
    cell = table.set_index(["target", "method"])
    assert cell.loc[("ELPV", "best training-free: bar"), "k=2"] == "**85.0**"
    assert cell.loc[("ELPV", "ResAD"), "k=2"] == "70.0 (-15.0)"
    assert cell.loc[("ELPV", "ResAD"), "k=4"] == "95.0 (+5.0)"
    assert cell.loc[("ELPV", "NAGL"), "k=4"] == "–"                  # no row: shown, not invented
    assert cell.loc[("textile", "ResAD"), "k=2"] == "60.0 (+0.0)"     # never "-0.0"
    assert cell.loc[("textile", "NAGL"), "k=2"] == "60.0 (+0.0)"
    assert "bold" in headline_markdown(table)
    with pytest.raises(ValueError, match="VOD"):
        headline(tidy, bar="bar", methods=["VOD"], targets={"elpv": "ELPV"})
