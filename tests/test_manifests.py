"""Tests for gadlib.data.manifests: the shipped YAMLs, parse() and verify()."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from gadlib.data import manifests
from gadlib.data.manifests import COUNT_KEYS, PARSERS, REQUIRED_FIELDS

SHIPPED = {
    "mvtec_ad", "visa", "visa_mvtec", "btad", "mpdd", "mvtec_3d", "brats_bmad",
    "medianomaly_rsna", "medianomaly_vindr_cxr", "medianomaly_brain_tumor", "medianomaly_lag",
    "medianomaly_isic2018", "medianomaly_camelyon16", "medianomaly_brats2021",
    "elpv", "textile", "synth",
}
REPO_MANIFESTS = Path(__file__).resolve().parents[1] / "data_manifests"


def _img(path: Path, value: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """MVTec-style dummy: bottle has 2 train, 1 test good, 1 anomalous (masked); screw is extra."""
    root = tmp_path / "data"
    _img(root / "bottle/train/good/000.png")
    _img(root / "bottle/train/good/001.png")
    _img(root / "bottle/test/good/000.png")
    _img(root / "bottle/test/broken_large/000.png")
    _img(root / "bottle/ground_truth/broken_large/000_mask.png", 255)
    _img(root / "screw/train/good/000.png")
    return root


@pytest.fixture()
def manifest_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "manifests"
    folder.mkdir()
    base = yaml.safe_load((REPO_MANIFESTS / "mvtec_ad.yaml").read_text())
    base.update(
        name="tiny", categories=["bottle", "cable"],
        expected_counts={"bottle": {"train_good": 2, "test_good": 1, "test_anomalous": 2},
                         "cable": {"train_good": 5, "test_good": None, "test_anomalous": None}},
    )
    (folder / "tiny.yaml").write_text(yaml.safe_dump(base))
    monkeypatch.setenv(manifests.MANIFESTS_ENV, str(folder))
    return folder


def test_shipped_manifests_are_complete() -> None:
    assert manifests.manifests_dir() == REPO_MANIFESTS
    assert set(manifests.list_manifests()) == SHIPPED
    for name in SHIPPED:
        manifest = manifests.load_manifest(name)
        assert manifest["name"] == name
        assert set(REQUIRED_FIELDS) <= set(manifest)
        assert manifest["parser"] in PARSERS
        assert isinstance(manifest["parser_args"], dict)
        assert manifest["checksums"] is None
        assert str(manifest["source"]).startswith(("http", "gadlib"))
        counts = manifest["expected_counts"]
        assert set(counts) == set(manifest["categories"]), name
        for cat, per_split in counts.items():
            assert set(per_split) == set(COUNT_KEYS), (name, cat)
            assert all(v is None or (isinstance(v, int) and v >= 0) for v in per_split.values()), (name, cat)


def test_published_totals() -> None:
    def total(name: str, key: str) -> int:
        return sum(c[key] for c in manifests.load_manifest(name)["expected_counts"].values())

    assert (total("mvtec_ad", "train_good"), total("mvtec_ad", "test_good"), total("mvtec_ad", "test_anomalous")) == (3629, 467, 1258)
    assert total("visa", "train_good") + total("visa", "test_good") == 9621 and total("visa", "test_anomalous") == 1200
    assert total("mvtec_3d", "test_good") + total("mvtec_3d", "test_anomalous") == 1197
    assert total("mpdd", "train_good") == 888 and total("btad", "test_anomalous") == 290


def test_parser_table_resolves_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(":" in target for target in PARSERS.values())
    from gadlib.data.folder import parse_folder

    assert manifests.resolve_parser("folder") is parse_folder
    for key in ("visa", "medianomaly"):
        assert callable(manifests.resolve_parser(key))
    # loading a manifest must not import its parser module
    monkeypatch.delitem(sys.modules, "gadlib.data.elpv", raising=False)
    manifests.load_manifest("elpv")
    assert "gadlib.data.elpv" not in sys.modules
    monkeypatch.setitem(PARSERS, "ghost", "gadlib.data.no_such_module:parse")
    with pytest.raises(ImportError, match="gadlib.data.no_such_module"):
        manifests.resolve_parser("ghost")
    with pytest.raises(ValueError, match="unknown parser 'nope'"):
        manifests.resolve_parser("nope")


def test_unknown_manifest_lists_known() -> None:
    with pytest.raises(ValueError, match="unknown dataset manifest 'mvtec_loco'") as err:
        manifests.load_manifest("mvtec_loco")
    assert "mvtec_ad" in str(err.value) and "medianomaly_rsna" in str(err.value)


def test_parse_uses_manifest_args(tree: Path) -> None:
    frame = manifests.parse("mvtec_ad", tree)
    assert sorted(frame["category"].unique()) == ["bottle", "screw"]
    assert set(frame["domain"]) == {"industrial"}
    with pytest.raises(ValueError, match="needs a path"):
        manifests.parse("mvtec_ad")


def test_verify_reports_missing_category_and_mismatch(manifest_dir: Path, tree: Path) -> None:
    report = manifests.verify("tiny", tree)
    assert not report.ok
    assert report.found["bottle"] == {"train_good": 2, "test_good": 1, "test_anomalous": 1}
    assert report.expected["cable"]["train_good"] == 5
    assert len(report.problems) == 2
    assert report.problems[0].startswith("missing category ['cable']: no images parsed under")
    assert report.problems[1].startswith("bottle: test_anomalous found 1, expected 2 (-1); ")
    assert any("['screw']" in n for n in report.notes)
    text = str(report)
    assert "FAILED (2 problem(s))" in text and "1/2 !" in text and "-/5 !" in text


def test_verify_expected_override_on_shipped_manifest(tree: Path) -> None:
    counts = {"bottle": {"train_good": 2, "test_good": 1, "test_anomalous": 1}, "screw": {"train_good": 1}}
    report = manifests.verify("mvtec_ad", tree, expected=counts)
    assert report.ok is False  # mvtec_ad lists 15 categories, 13 are missing; counts themselves match
    assert len(report.problems) == 1 and report.problems[0].startswith("missing categories ['cable', 'capsule'")
    assert all(f"'{c}'" in report.problems[0] for c in ("grid", "toothbrush", "zipper"))
    assert report.expected == counts


def test_verify_ok_and_missing_masks(manifest_dir: Path, tree: Path) -> None:
    counts = {"bottle": {"train_good": 2, "test_good": 1, "test_anomalous": 1}}
    tiny = yaml.safe_load((manifest_dir / "tiny.yaml").read_text())
    tiny["categories"] = ["bottle"]
    (manifest_dir / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    good = manifests.verify("tiny", tree, expected=counts)
    assert good.ok and good.problems == [] and ": OK" in str(good)
    (tree / "bottle/ground_truth/broken_large/000_mask.png").unlink()
    masked = manifests.verify("tiny", tree, expected=counts)
    assert not masked.ok
    assert masked.problems[0].startswith("bottle: 1 anomalous image(s) have no mask")


def test_verify_bad_path_reports_instead_of_raising(tmp_path: Path) -> None:
    report = manifests.verify("btad", tmp_path / "missing_btad")
    assert not report.ok and report.found == {}
    assert str(tmp_path / "missing_btad") in report.problems[0]
    assert "avires.dimi.uniud.it" in report.problems[0]


def test_verify_unknown_counts_are_noted(manifest_dir: Path, tree: Path) -> None:
    tiny = yaml.safe_load((manifest_dir / "tiny.yaml").read_text())
    tiny.update(categories=["bottle"], expected_counts={"bottle": {"train_good": None, "test_good": 1, "test_anomalous": 1}})
    (manifest_dir / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    report = manifests.verify("tiny", tree)
    assert report.ok
    assert any("bottle.train_good" in n for n in report.notes)
    assert "2/?" in str(report)
