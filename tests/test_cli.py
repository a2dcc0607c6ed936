"""The `gad` command: what it prints equals what it writes; bad input exits with a clear message."""
from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from gadlib.cli import app
from gadlib.results import read_tidy, summary_table, to_markdown

runner = CliRunner()


def test_evaluate_prints_the_table_it_writes(tiny_suite, tmp_path):
    root, _ = tiny_suite
    out = tmp_path / "run"
    result = runner.invoke(app, ["evaluate", "--dataset", f"folder:{root}", "--shots", "1,2", "--seeds", "0,1,2",
                                 "--image-size", "64", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    expected = to_markdown(summary_table(read_tidy(out), "image_auroc"))
    assert expected in result.output
    tidy = read_tidy(out)
    assert sorted(tidy["shots"].unique()) == [1, 2] and sorted(tidy["seed"].unique()) == [0, 1, 2]


def test_evaluate_bad_shots_and_unknown_dataset(tmp_path):
    bad = runner.invoke(app, ["evaluate", "--dataset", "elpv", "--shots", "two", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output
    unknown = runner.invoke(app, ["evaluate", "--dataset", "no_such_set", "--out", str(tmp_path / "y")])
    assert unknown.exit_code == 2 and "unknown dataset 'no_such_set'" in unknown.output
    assert not (tmp_path / "y").exists()


def test_evaluate_unknown_method(tiny_suite, tmp_path):
    root, _ = tiny_suite
    res = runner.invoke(app, ["evaluate", "--dataset", f"folder:{root}", "--method", "nope", "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "registered methods" in res.output


def test_methods_and_data_list():
    assert "knn" in runner.invoke(app, ["methods"]).output.split()
    listing = runner.invoke(app, ["data", "list"]).output
    assert "mvtec_ad" in listing and "elpv" in listing


def test_data_verify_reports_missing_copy(tmp_path):
    res = runner.invoke(app, ["data", "verify", "mvtec_ad", str(tmp_path / "nowhere")])
    assert res.exit_code == 1
    assert "nowhere" in res.output


def test_data_verify_elpv_matches_manifest():
    res = runner.invoke(app, ["data", "verify", "elpv"])
    assert res.exit_code == 0, res.output


def test_method_param_reaches_the_method(tiny_suite, tmp_path):
    import json

    root, _ = tiny_suite
    out = tmp_path / "run"
    res = runner.invoke(app, ["evaluate", "--dataset", f"folder:{root}", "--shots", "1", "--seeds", "0",
                              "--image-size", "64", "-m", "grid=finest", "-m", "sigma=2", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    params = json.loads((out / "params.json").read_text())["method_params"]
    assert params["grid"] == "finest" and params["sigma"] == 2 and params["image_size"] == 64
    bad = runner.invoke(app, ["evaluate", "--dataset", f"folder:{root}", "-m", "oops", "--out", str(out)])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_embed_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t:start -->\nold\n<!-- t:end -->\noutro\n")
    table = tmp_path / "table.md"
    table.write_text("| a |\n|---|\n| 1 |\n")
    res = runner.invoke(app, ["embed", str(table), str(readme), "--marker", "t"])
    assert res.exit_code == 0 and "updated" in res.output
    assert readme.read_text() == "intro\n<!-- t:start -->\n| a |\n|---|\n| 1 |\n<!-- t:end -->\noutro\n"
    again = runner.invoke(app, ["embed", str(table), str(readme), "--marker", "t"])
    assert "unchanged" in again.output
    missing = runner.invoke(app, ["embed", str(table), str(readme), "--marker", "nope"])
    assert missing.exit_code == 2 and "markers" in missing.output


TRAIN_SMALL = ["-m", "image_size=64", "-m", "epochs=1", "-m", "steps_per_epoch=3", "-m", "batch_size=4",
               "-m", "train_shots=2", "-m", "flow_blocks=2", "-m", "position_dim=8", "-m", "simulated_per_category=2"]


def test_train_writes_a_checkpoint_that_evaluate_loads_and_reuses_it(tiny_suite, tmp_path, monkeypatch):
    import json

    from gadlib.methods.resad import ResAD

    root, _ = tiny_suite
    ckpt = tmp_path / "resad_tile"
    args = ["train", "--method", "resad", "--source", f"folder:{root}", "--source-categories", "tile",
            "--out", str(ckpt), "--quiet", *TRAIN_SMALL]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert meta["method"] == "resad" and meta["params"]["epochs"] == 1
    assert meta["fit"]["source_categories"] == ["tile"] and len(meta["fit"]["history"]) == 1
    assert "efficientnet_lite0" in meta["fit"]["backbone_key"]
    # Same configuration again: the cached checkpoint is loaded, nothing is trained.
    monkeypatch.setattr(ResAD, "fit", lambda self, source: (_ for _ in ()).throw(AssertionError("retrained")))
    again = runner.invoke(app, args[:-len(TRAIN_SMALL) - 3] + ["--out", str(tmp_path / "again"), "--quiet", *TRAIN_SMALL])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text())["fit"] == meta["fit"]

    out = tmp_path / "run"
    evaluated = runner.invoke(app, ["evaluate", "--dataset", f"folder:{root}", "--checkpoint", str(ckpt),
                                    "--shots", "1,2", "--seeds", "0,1,2", "--out", str(out), "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output
    tidy = read_tidy(out)
    assert set(tidy["method"]) == {"resad"} and set(tidy["category"]) == {"tile", "screw"}
    assert to_markdown(summary_table(tidy, "image_auroc")) in evaluated.output

    mismatch = runner.invoke(app, ["evaluate", "--dataset", f"folder:{root}", "--checkpoint", str(ckpt),
                                   "--image-size", "96", "--out", str(tmp_path / "bad"), "--quiet"])
    assert mismatch.exit_code == 2 and "checkpoint was trained on backbone features" in mismatch.output
    assert not (tmp_path / "bad").exists()


def test_train_bad_input_exits_2(tiny_suite, tmp_path):
    root, _ = tiny_suite
    unknown = runner.invoke(app, ["train", "--source", f"folder:{root}", "--out", str(tmp_path / "c"),
                                  "-m", "no_such_option=1", "--quiet"])
    assert unknown.exit_code == 2 and "no_such_option" in unknown.output
    empty = runner.invoke(app, ["train", "--source", f"folder:{root}", "--source-categories", "carpet",
                                "--out", str(tmp_path / "d"), "--quiet"])
    assert empty.exit_code == 2 and "known: ['screw', 'tile']" in empty.output
    assert not (tmp_path / "d.json").exists()


def test_nagl_trains_and_evaluates_with_abnormal_references_under_both_protocols(tiny_suite, tmp_path):
    root, _ = tiny_suite
    ckpt = tmp_path / "nagl"
    small = ["-m", "image_size=64", "-m", "epochs=1", "-m", "steps_per_epoch=2", "-m", "simulated_per_category=2"]
    trained = runner.invoke(app, ["train", "--method", "nagl", "--source", f"folder:{root}", "--source-categories",
                                  "tile", "--out", str(ckpt), "--quiet", *small])
    assert trained.exit_code == 0, trained.output
    base = ["evaluate", "--dataset", f"folder:{root}", "--checkpoint", str(ckpt), "--shots", "1,2",
            "--seeds", "0,1,2", "--abnormal-shots", "1", "--quiet"]
    for protocol in ("label-free", "type-matched"):
        out = tmp_path / protocol
        result = runner.invoke(app, base + ["--protocol", protocol, "--out", str(out)])
        assert result.exit_code == 0, result.output
        tidy = read_tidy(out)
        assert set(tidy["method"]) == {"nagl"} and set(tidy["abnormal_shots"]) == {1}
        assert (out / "tidy_per_defect_type.csv.gz").is_file() == (protocol == "type-matched")
    bad = runner.invoke(app, base + ["--protocol", "peeking", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "protocol must be one of" in bad.output
    simulated = runner.invoke(app, base + ["--protocol", "type-matched", "--abnormal-source", "simulated",
                                           "--out", str(tmp_path / "bad2")])
    assert simulated.exit_code == 2 and "type-matched protocol draws real abnormal references" in simulated.output


def test_grid_runs_resumable_cells_and_prints_what_it_wrote(tiny_suite, tmp_path):
    root, _ = tiny_suite
    out = tmp_path / "grid"
    command = ["grid", "--datasets", f"folder:{root}", "--methods", "knn", "--shots", "1,2", "--seeds", "0,1",
               "-m", "image_size=64", "--out", str(out), "--quiet"]
    first = runner.invoke(app, command)
    assert first.exit_code == 0, first.output
    assert "2 cells, 2 to run" in first.output
    tidy = pd.read_csv(out / "tidy.csv")
    assert to_markdown(summary_table(tidy, "image_auroc")) in first.output
    assert sorted(tidy["seed"].unique()) == [0, 1] and len(list((out / "cells").glob("*.csv"))) == 2
    again = runner.invoke(app, command)
    assert again.exit_code == 0 and "2 cells, 0 to run" in again.output
    pd.testing.assert_frame_equal(pd.read_csv(out / "tidy.csv"), tidy)


def test_grid_refuses_unknown_and_untrained_methods(tmp_path):
    unknown = runner.invoke(app, ["grid", "--datasets", "elpv", "--methods", "knn,nope", "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown method 'nope'" in unknown.output
    untrained = runner.invoke(app, ["grid", "--datasets", "elpv", "--methods", "resad", "--out", str(tmp_path)])
    assert untrained.exit_code == 2 and "--checkpoint resad=PATH" in untrained.output
    missing = runner.invoke(app, ["grid", "--datasets", "elpv", "--methods", "resad", "--checkpoint",
                                  f"resad={tmp_path / 'none'}", "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "METHOD=PATH" in missing.output
    assert not (tmp_path / "cells").exists()


def test_method_params_read_numbers_as_python_does():
    # YAML 1.1 reads 1e-5 as a string: the papers' `-m lr=1e-5` reached AdamW as "1e-5" and training failed
    # ("'<=' not supported between float and str"), found by running the documented commands
    from gadlib.cli import _key_values

    params = _key_values(["lr=1e-5", "a=1", "b=2.5E+3", "c=-.5", "levels=[1, 2, 3]", "name=1e-5x", "d=null"], "-m")
    assert params == {"lr": 1e-5, "a": 1, "b": 2500.0, "c": -0.5, "levels": [1, 2, 3], "name": "1e-5x", "d": None}
    assert isinstance(params["a"], int) and isinstance(params["lr"], float)
