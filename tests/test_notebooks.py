"""Every notebook runs under papermill on tiny parameters and writes what it promises."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from PIL import Image

from gadlib.baselines import BEST_TRAINING_FREE
from gadlib.notebooks import run_notebook
from gadlib.results import summary_table
from gadlib.study import run_evaluation

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TINY = dict(max_per_group=4, shots=[1, 2], seeds=[0, 1, 2], method_params={"image_size": 64},
            n_overlays=2, progress=False)


def _errors(executed_path: Path) -> list:
    executed = nbformat.read(executed_path, as_version=4)
    return [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_one_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in notebook.cells) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_parameter(path, caplog):
    """A parameter papermill cannot parse prints "Unable to parse line ..." on every run of `make study`."""
    import ast

    import papermill

    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assigned = [node.targets[0].id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)]
    with caplog.at_level("WARNING"):
        found = papermill.inspect_notebook(str(path))
    assert list(found) == assigned
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded") / "embedded"
    run_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", out, TINY)
    return out


def test_quickstart_writes_tables_figures_and_records(quickstart):
    names = {p.name for p in quickstart.iterdir()}
    assert {"tidy.csv", "table_image_auroc.md", "table_image_auroc.csv", "table_image_auroc_by_defect.md", "auroc_vs_shots.png",
            "score_distributions.png", "elpv_anomaly_maps.png", "environment.json", "parameters.json",
            "00_quickstart.ipynb", "runs"} <= names
    for png in ("auroc_vs_shots.png", "score_distributions.png", "elpv_anomaly_maps.png"):
        with Image.open(quickstart / png) as img:
            assert img.width > 300 and img.height > 150
    assert not _errors(quickstart / "00_quickstart.ipynb")
    assert "widgets" not in json.loads((quickstart / "00_quickstart.ipynb").read_text())["metadata"]
    params = json.loads((quickstart / "parameters.json").read_text())
    assert params["shots"] == [1, 2] and params["max_per_group"] == 4
    # The kernel's IPC sockets live in a temporary folder, not beside the notebooks.
    assert not list(NOTEBOOK_DIR.glob("kernel-ipc-*"))


def test_quickstart_table_is_computed_from_its_rows(quickstart):
    tidy = pd.read_csv(quickstart / "tidy.csv")
    table = pd.read_csv(quickstart / "table_image_auroc.csv", keep_default_na=False)
    expected = summary_table(tidy, "image_auroc")
    for column in ("shots=1", "shots=2"):
        assert table[column].tolist() == expected[column].tolist()
    elpv_all = table[(table["dataset"] == "elpv") & (table["domain"] == "mono+poly")]
    assert elpv_all["InCTRL published, k=2"].tolist() == ["83.9"]
    assert set(table["dataset"]) == {"elpv", "textile"}


def test_quickstart_matches_the_library_call(quickstart, tmp_path):
    """The notebook adds no computation of its own: the same call gives the same rows."""
    direct = run_evaluation("elpv", "knn", TINY["shots"], TINY["seeds"], None, method_params={"image_size": 64},
                            max_per_group=4, progress=False)
    tidy = pd.read_csv(quickstart / "tidy.csv")
    mine = tidy[tidy["dataset"] == "elpv"].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, direct.tidy, check_dtype=False)


def test_quickstart_defect_table_lists_textile_defect_types(quickstart):
    text = (quickstart / "table_image_auroc_by_defect.md").read_text()
    assert "| textile | textile | knn | global |" in text and "| textile | textile | knn | local |" in text


@pytest.fixture(scope="module")
def cross_domain(tmp_path_factory):
    """The cross-domain notebook on a tiny suite: 2 source categories, 1 unseen target category."""
    from gadlib.data.synth import generate_suite

    root = tmp_path_factory.mktemp("cross_suite")
    generate_suite(root, categories=["tile", "wood_grain", "leather"], defects=["scratch", "hole"], n_train=6,
                   n_test_normal=4, n_test_per_defect=3, size=64, seed=5)
    spec = f"synth:{root}"
    small = dict(image_size=64, epochs=2, steps_per_epoch=5, batch_size=6, train_shots=2, flow_blocks=2,
                 position_dim=8, simulated_per_category=4)
    params = dict(source=spec, source_categories=["tile", "wood_grain"], targets={spec: ["leather"]},
                  resad_params=small, knn_params={"image_size": 64}, training_free_params={"image_size": 64},
                  shots=[1, 2], seeds=[0, 1, 2],
                  ablations={"no constraintor": {"constraintor": False},
                             "transductive": {"normalization": "transductive"}},
                  ablation_shots=[2], ablation_targets=[spec], n_overlays=2, progress=False)
    out = tmp_path_factory.mktemp("cross") / "cross_domain"
    run_notebook(NOTEBOOK_DIR / "20_cross_domain.ipynb", out, params)
    return out


def test_cross_domain_writes_tables_figures_and_records(cross_domain):
    names = {p.name for p in cross_domain.iterdir()}
    assert {"tidy.csv", "table_image_auroc.md", "table_pixel.md", "table_ablation.md", "auroc_vs_shots.png",
            "training_curve.png", "training_curve.csv", "runs",
            "environment.json", "parameters.json", "20_cross_domain.ipynb"} <= names
    assert any(n.startswith("maps_") and n.endswith(".png") for n in names)
    assert not _errors(cross_domain / "20_cross_domain.ipynb")
    pixel = (cross_domain / "table_pixel.md").read_text()
    assert "pixel_auroc" in pixel and "pixel_aupro" in pixel      # the synthetic target has masks
    curve = pd.read_csv(cross_domain / "training_curve.csv")
    assert curve["epoch"].tolist() == [1, 2]


def test_cross_domain_tables_come_from_the_tidy_rows(cross_domain):
    tidy = pd.read_csv(cross_domain / "tidy.csv")
    bar = f"best training-free: {BEST_TRAINING_FREE}"
    assert set(tidy["method"]) == {"knn", "resad", bar} and set(tidy["shots"]) == {1, 2}
    assert set(tidy["seed"]) == {0, 1, 2} and set(tidy["category"]) == {"leather"}
    expected = summary_table(tidy, "image_auroc")
    table_text = (cross_domain / "table_image_auroc.md").read_text()
    for cell in expected["shots=2"]:
        assert cell in table_text
    ablation = pd.read_csv(cross_domain / "ablation_tidy.csv")
    assert set(ablation["method"]) == {"ResAD (default)", "no constraintor", "transductive"}
    assert set(ablation["shots"]) == {2}
    # The default row of the ablation is the main ResAD run itself, not a re-run.
    main = tidy[(tidy["method"] == "resad") & (tidy["shots"] == 2)]["value"].sort_values().to_numpy()
    default = ablation[ablation["method"] == "ResAD (default)"]["value"].sort_values().to_numpy()
    assert (main == default).all()


def _guided_suite(tmp_path_factory, name: str) -> tuple[str, dict]:
    """Source categories (tile, wood_grain) and a target (leather), 64 px; and small training parameters."""
    from gadlib.data.synth import generate_suite

    root = tmp_path_factory.mktemp(name)
    generate_suite(root, categories=["tile", "wood_grain", "leather"], defects=["scratch", "hole"], n_train=6,
                   n_test_normal=4, n_test_per_defect=3, size=64, seed=5)
    return f"synth:{root}", dict(image_size=64, epochs=2, steps_per_epoch=3, simulated_per_category=4)


@pytest.fixture(scope="module")
def normal_abnormal(tmp_path_factory):
    """The normal-and-abnormal notebook on a tiny suite: kNN, InCTRL-vision and NAGL, m = 0 and 1."""
    spec, small = _guided_suite(tmp_path_factory, "guided_suite")
    params = dict(source=spec, source_categories=["tile", "wood_grain"], targets={spec: ["leather"]},
                  methods=["knn", "inctrl", "nagl"], method_params={"knn": {"image_size": 64}, "inctrl": small,
                                                                   "nagl": small},
                  shots=[1, 2], seeds=[0, 1, 2], abnormal_shots=[0, 1],
                  ablation={"normal map only": "normal_only", "NAGL (full)": "full"},
                  training_free_params={"image_size": 64}, n_overlays=2, progress=False)
    out = tmp_path_factory.mktemp("guided") / "normal_abnormal"
    run_notebook(NOTEBOOK_DIR / "25_normal_abnormal.ipynb", out, params)
    return out


def test_normal_abnormal_writes_tables_figures_and_records(normal_abnormal):
    names = {p.name for p in normal_abnormal.iterdir()}
    assert {"tidy.csv", "table_image_auroc.md", "table_pixel.md", "table_gain.md", "table_ablation.md",
            "table_published.md", "gain_vs_shots.png", "auroc_vs_shots.png", "maps_synth.png",
            "training_curve_nagl.png", "training_curve_inctrl.png", "parameters.json", "environment.json",
            "runs", "25_normal_abnormal.ipynb"} <= names
    assert not _errors(normal_abnormal / "25_normal_abnormal.ipynb")
    assert "NAGL" in (normal_abnormal / "table_published.md").read_text()


def test_normal_abnormal_tables_come_from_the_tidy_rows(normal_abnormal):
    from gadlib.results import paired_gain

    tidy = pd.read_csv(normal_abnormal / "tidy.csv")
    assert set(tidy["method"]) == {"kNN", "InCTRL-vision", "NAGL", "best training-free"}
    # the bar ignores abnormal references: scored at every m, label-free, on the same draws
    bar = tidy[tidy["method"] == "best training-free"]
    assert set(bar["abnormal_shots"]) == {0, 1} and set(bar["protocol"]) == {"label-free"}
    assert set(tidy["protocol"]) == {"label-free", "type-matched", "simulated"}
    assert set(tidy.loc[tidy["protocol"] == "type-matched", "method"]) == {"kNN", "NAGL"}
    assert set(tidy["abnormal_shots"]) == {0, 1}
    table = pd.read_csv(normal_abnormal / "table_image_auroc.csv", keep_default_na=False)
    expected = summary_table(tidy, "image_auroc", rows=("dataset", "protocol", "abnormal_shots", "method"))
    assert table["shots=2"].tolist() == expected["shots=2"].tolist()
    gain = paired_gain(tidy, {"method": "NAGL", "abnormal_shots": 1, "protocol": "label-free"},
                       {"method": "kNN", "abnormal_shots": 1, "protocol": "label-free"}, "g")
    cell = summary_table(gain, "image_auroc_gain", rows=("dataset", "method"))["shots=1"].iloc[0]
    assert f"| synth | NAGL m=1 − kNN (label-free) | {cell} |" in (normal_abnormal / "table_gain.md").read_text()
    ablation = pd.read_csv(normal_abnormal / "ablation_tidy.csv")
    assert set(ablation["method"]) == {"normal map only", "NAGL (full)"}
    full = ablation[(ablation["method"] == "NAGL (full)") & (ablation["metric"] == "image_auroc")]
    assert len(full) and set(full["abnormal_shots"]) == {1}
    # InCTRL's terms: one trained model scored five ways; the paper's final score is the mean of s_h and s_p
    terms = pd.read_csv(normal_abnormal / "inctrl_terms_tidy.csv")
    assert terms["method"].nunique() == 5 and set(terms["abnormal_shots"]) == {0}
    auroc = terms[terms["metric"] == "image_auroc"].set_index(["method", "shots", "seed"])["value"]
    paper = auroc.xs("final: (s_h + s_p) / 2 (paper)", level="method")
    inctrl = tidy[(tidy["method"] == "InCTRL-vision") & (tidy["abnormal_shots"] == 0) & (tidy["metric"] == "image_auroc")
                  & (tidy["protocol"] == "label-free") & ~tidy["domain"].isin(["mono", "poly"])]
    assert sorted(paper.round(6)) == sorted(inctrl["value"].round(6))
    assert "s_p: patch residual" in (normal_abnormal / "table_inctrl_terms.md").read_text()


@pytest.fixture(scope="module")
def three_gaps(tmp_path_factory):
    """The three-gap notebook on a tiny suite: a category gap and a held-out defect type."""
    spec, small = _guided_suite(tmp_path_factory, "gaps_suite")
    params = dict(
        sources={"tiny": {"spec": spec, "categories": ["tile", "wood_grain"]},
                 "tiny scratch": {"spec": spec, "categories": ["tile", "wood_grain"], "defects": ["scratch"]}},
        settings=[{"gap": "category", "target": "leather", "source": "tiny", "dataset": spec, "categories": ["leather"]},
                  {"gap": "defect type", "target": "leather: hole held out", "source": "tiny scratch", "dataset": spec,
                   "categories": ["leather"], "defects": ["hole"]}],
        variants={"kNN": ["knn", {"image_size": 64}], "kNN + A": ["knn", {"image_size": 64, "vod_channel": "gaussian"}],
                  "NAGL": ["nagl", small], "NAGL + B": ["nagl", dict(small, vod_position="magnitude")],
                  "VOD: no decomposition": ["vod", dict(small, vod_channel="none", vod_position="none")],
                  "VOD: A + B": ["vod", small]},
        main_source_only=[], reference_table_variants=["VOD: A + B"], reference_table_targets=["leather"],
        training_free_params={"image_size": 64},
        shots=[1, 2], seeds=[0, 1, 2], max_per_group=None, progress=False)
    out = tmp_path_factory.mktemp("gaps") / "three_gaps"
    run_notebook(NOTEBOOK_DIR / "30_three_gaps.ipynb", out, params)
    return out


def test_three_gaps_writes_tables_figures_and_records(three_gaps):
    names = {p.name for p in three_gaps.iterdir()}
    assert {"tidy.csv", "table_summary.md", "table_summary.csv", "table_gain.md", "gain_heatmap.png",
            "table_references.md", "auroc_vs_shots_category.png", "auroc_vs_shots_defect_type.png",
            "training.csv", "episodes", "parameters.json", "environment.json", "30_three_gaps.ipynb"} <= names
    assert not _errors(three_gaps / "30_three_gaps.ipynb")
    # Every variant of a setting saw the same episodes: one file per setting.
    assert len(list((three_gaps / "episodes").glob("*.jsonl.gz"))) == 2
    training = pd.read_csv(three_gaps / "training.csv")
    assert set(training["source"]) == {"tiny", "tiny scratch"} and "kNN" not in set(training["variant"])


def test_three_gaps_tables_come_from_the_tidy_rows(three_gaps):
    tidy = pd.read_csv(three_gaps / "tidy.csv")
    assert set(tidy["method"]) == {"kNN", "kNN + A", "NAGL", "NAGL + B", "VOD: no decomposition", "VOD: A + B",
                                   "best training-free"}
    held_out = tidy[tidy["target"] == "leather: hole held out"]
    assert set(held_out["abnormal_shots"]) == {1}
    table = pd.read_csv(three_gaps / "table_summary.csv", keep_default_na=False)
    expected = summary_table(tidy[tidy["shots"] == 2].assign(category="all"), "image_auroc",
                             rows=("gap", "target"), columns="method")
    assert table["kNN + A"].tolist() == expected["method=kNN + A"].tolist()
    assert table["best training-free"].tolist() == expected["method=best training-free"].tolist()
    gain = pd.read_csv(three_gaps / "gain_tidy.csv")
    assert set(gain["base"]) == {"kNN", "NAGL", "VOD: no decomposition"}
    auroc = tidy[tidy["metric"] == "image_auroc"].set_index(["target", "method", "shots", "seed"])["value"]
    row = gain[(gain["variant"] == "kNN + A")].iloc[0]
    key = (row["target"], row["shots"], row["seed"])
    expected_gain = 100 * (auroc[key[0], "kNN + A", key[1], key[2]] - auroc[key[0], "kNN", key[1], key[2]])
    assert row["gain"] == pytest.approx(expected_gain)


@pytest.fixture(scope="module")
def residual_space(tmp_path_factory):
    """The residual-space explorer on two tiny suites standing for two domains."""
    from gadlib.data.synth import generate_suite

    specs = []
    for name, categories in (("one", ["tile", "leather"]), ("two", ["wood_grain"])):
        root = tmp_path_factory.mktemp(name)
        generate_suite(root, categories=categories, defects=["scratch", "hole"], n_train=5, n_test_normal=4,
                       n_test_per_defect=3, size=64, seed=2)
        specs.append(f"synth:{root}")
    params = dict(datasets=specs, shots=2, per_group=4, normal_cells=6, embeddings=["pca", "tsne"],
                  max_points=300, progress=False)
    out = tmp_path_factory.mktemp("explorer") / "residual_space"
    run_notebook(NOTEBOOK_DIR / "10_residual_space.ipynb", out, params)
    return out, specs


def test_residual_space_writes_its_table_and_figures(residual_space):
    out, specs = residual_space
    names = {p.name for p in out.iterdir()}
    assert {"table_alignment.md", "table_alignment.csv", "alignment_heatmap.png", "embedding_pca.png",
            "embedding_tsne.png", "patch_counts.csv", "parameters.json", "10_residual_space.ipynb"} <= names
    assert not _errors(out / "10_residual_space.ipynb")
    table = pd.read_csv(out / "table_alignment.csv")
    assert table["space"].tolist() == ["features", "residual", "residual, VOD (A)", "residual, VOD (B)",
                                       "residual, VOD (A+B)"]
    auroc = table[["normal vs abnormal", "synthetic -> real"]].to_numpy()
    assert ((auroc >= 0) & (auroc <= 1)).all()
    counts = pd.read_csv(out / "patch_counts.csv", index_col=0)
    assert set(counts.index) == {"synth", specs[1]}            # a second suite named "synth" is keyed by its spec
    assert {"normal", "real", "synthetic"} <= set(counts.columns)
    # 3 categories x 4 normal test images x 6 sampled cells.
    assert counts["normal"].sum() == 3 * 4 * 6


@pytest.fixture(scope="module")
def baselines_nb(tmp_path_factory):
    """The baselines notebook on a tiny suite: two kNN candidates, two fusion rules, one target category."""
    spec, small = _guided_suite(tmp_path_factory, "baselines_suite")
    params = dict(source=spec, source_categories=["tile", "wood_grain"],
                  knn_candidates={"L2, max": ["knn", {"image_size": 64}],
                                  "cosine, top-1 %": ["knn", {"image_size": 64, "metric": "cosine", "reduction": "top1%"}]},
                  knn_question=["L2, max", "cosine, top-1 %"],
                  fusion_rules={"local score alone": None, "z sum": {"shrink": 0.0, "others": "z",
                                                                      "combine": "sum"},
                                "excess": {"shrink": 0.5, "others": "excess", "weight": 1.0, "combine": "sum"}},
                  fusion_shots=[2], targets={spec: ["leather"]}, baseline_params={"image_size": 64},
                  inctrl_params=small, shots=[1, 2], seeds=[0, 1], progress=False)
    out = tmp_path_factory.mktemp("baselines") / "baselines"
    run_notebook(NOTEBOOK_DIR / "12_baselines.ipynb", out, params)
    return out


def test_baselines_notebook_chooses_on_source_and_tables_its_rows(baselines_nb):
    from gadlib.baselines import BASELINES

    names = {p.name for p in baselines_nb.iterdir()}
    assert {"table_source_knn.md", "source_knn_tidy.csv", "table_source_fusion.md", "source_fusion.csv",
            "table_baselines.md", "table_baselines.csv", "tidy.csv", "auroc_vs_shots.png", "parameters.json",
            "environment.json", "12_baselines.ipynb"} <= names
    assert not _errors(baselines_nb / "12_baselines.ipynb")
    assert "Chosen: **" in (baselines_nb / "table_source_knn.md").read_text()
    fusion = pd.read_csv(baselines_nb / "source_fusion.csv")
    # the source check has both families: the tiny suite's local defects and the simulated global anomalies
    assert set(fusion["family"]) == {"local", "global"}
    assert set(fusion["method"]) == {"local score alone", "z sum", "excess"}
    tidy = pd.read_csv(baselines_nb / "tidy.csv")
    assert set(tidy["method"]) == set(BASELINES) | {"InCTRL s_i (trained image residual)"}
    table = pd.read_csv(baselines_nb / "table_baselines.csv", keep_default_na=False)
    expected = summary_table(tidy[~tidy["domain"].isin(["mono", "poly"])], "image_auroc")
    assert list(table.columns) == ["dataset", "view", "method", "shots=1", "shots=2"]
    assert sorted(table.loc[table["view"] == "all defects", "shots=2"]) == sorted(expected["shots=2"])


@pytest.fixture(scope="module")
def scaling_nb(tmp_path_factory):
    """The scaling notebook on tiny suites: InCTRL on 1 -> 2 categories, Lite0 -> Lite1, 1x -> 2x training."""
    spec, small = _guided_suite(tmp_path_factory, "scaling_suite")
    params = dict(methods={"inctrl": small}, method_axes={"inctrl": ["categories", "backbone", "length"]},
                  base_categories=1, base_images=24, category_counts=[1, 2], image_counts=[24], more_defects=False,
                  backbones=["efficientnet_lite0", "efficientnet_lite1"], lengths=[1, 2], real=[], suite_size=64,
                  targets={spec: "leather"}, target_categories={spec: ["leather"]}, held_out=True,
                  training_free_params={"image_size": 64}, shots=[2], seeds=[0, 1], study_shots=[1, 2],
                  max_per_group=3,
                  progress=False)
    out = tmp_path_factory.mktemp("scaling") / "scaling"
    run_notebook(NOTEBOOK_DIR / "40_scaling.ipynb", out, params)
    return out


def test_scaling_notebook_trains_along_each_axis_and_reads_it_against_the_bar(scaling_nb):
    names = {p.name for p in scaling_nb.iterdir()}
    assert {"sources.csv", "table_sources.md", "training.csv", "tidy.csv.gz", "bar_tidy.csv.gz", "table_verdict.md",
            "table_verdict.csv", "table_sources_auroc.md", "auroc_vs_categories.png", "auroc_vs_backbone.png",
            "auroc_vs_length.png", "source_sheet.jpg", "parameters.json", "environment.json",
            "40_scaling.ipynb"} <= names
    assert not _errors(scaling_nb / "40_scaling.ipynb")
    sources = pd.read_csv(scaling_nb / "sources.csv")
    assert list(sources["source_categories"]) == [1, 2, 1, 1]        # base, 2 categories, Lite1, 2x length
    assert sorted(sources["axis"]) == ["backbone", "categories", "default", "length"]
    training = pd.read_csv(scaling_nb / "training.csv")
    assert training["checkpoint"].nunique() == 4                       # four models, one per source
    tidy = pd.read_csv(scaling_nb / "tidy.csv.gz")
    assert set(tidy["target"]) == {"leather", "held-out photo categories"}
    assert set(tidy["backbone"]) == {"efficientnet_lite0", "efficientnet_lite1"}
    assert set(tidy["shots"]) == {2}            # the default source's model scored at study_shots, kept at shots
    bar = pd.read_csv(scaling_nb / "bar_tidy.csv.gz")
    # only the bar's run folders (they record the draws every model shares) are kept in the results
    assert {p.name for p in (scaling_nb / "runs").iterdir()} == {"bar_best_training_free",
                                                                "bar_best_training_free_efficientnet_lite1"}
    assert set(bar["label"]) == {"best training-free", "best training-free, efficientnet_lite1"}
    # the verdict's numbers are the tidy rows' means
    verdict = pd.read_csv(scaling_nb / "table_verdict.csv").set_index("target")
    rows = tidy[(tidy["metric"] == "image_auroc") & (tidy["axis"] == "default") & (tidy["target"] == "leather")]
    assert verdict.loc["leather", "default source"] == pytest.approx(round(100 * rows["value"].mean(), 1))
    bar_rows = bar[(bar["metric"] == "image_auroc") & (bar["label"] == "best training-free")
                   & (bar["target"] == "leather")]
    assert verdict.loc["leather", "best training-free"] == pytest.approx(round(100 * bar_rows["value"].mean(), 1))


def test_explorer_notebook_answers_a_click_on_a_tiny_suite(tiny_suite, tmp_path):
    root, _ = tiny_suite
    spec = f"synth:{root}"
    out = tmp_path / "explorer"
    run_notebook(NOTEBOOK_DIR / "15_explorer.ipynb", out,
                 dict(dataset=spec, datasets=[spec], category="tile", shots=2, max_queries=4, image_size=64,
                      backend="inline", method="kNN (L2, max)"))     # a named baseline's map under the click
    executed = nbformat.read(out / "15_explorer.ipynb", as_version=4)
    assert not _errors(out / "15_explorer.ipynb")
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs
                      if o.output_type == "stream" and o.get("name") == "stdout")
    # the demonstration click on the most anomalous cell answers with its nearest reference patch and numbers
    assert "-> reference" in printed and "distance" in printed and "after VOD (A)" in printed
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the static copy shows the explorer's figure"
