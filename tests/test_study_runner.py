"""`gad study`: the time-left estimate, study_time.json's rules, and what a run prints, on tiny notebooks."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from typer.testing import CliRunner

from gadlib import study_runner
from gadlib.cli import app
from gadlib.study_runner import (COLD, PARTIAL, RERUN, WARM, StudyError, StudyNotebook, Tally, cache_is_empty,
                                 estimate_left, format_duration, record_times, run_kind, run_study, select,
                                 status_line, tally)

# A stand-in for a study notebook: it reports its cells (computed unless its own mark is in the cache's
# results folder, as a real result store would), a model and some features, then writes a table.
TOY_CODE = """
import os, pathlib, time
from gadlib.progress import report

results = pathlib.Path(os.environ["GADLIB_CACHE"]) / "results"
mark = results / f"{name}.done"
reused = mark.is_file()
report("train", f"toy model for {name}", 0.0, reused=reused)
if not reused:
    report("features", "toy features", 0.1, count=5)
for seed in range(cells):
    time.sleep(pause)
    report("cell", f"toy on {name}, seed {seed}", 0.01, reused=reused)
results.mkdir(parents=True, exist_ok=True)
mark.write_text("done")
pathlib.Path(out_dir, "table.md").write_text(f"| {name} | {cells} |\\n")
"""


def _toy(folder: Path, name: str, cells: int, fail: bool = False, pause: float = 0.0) -> StudyNotebook:
    parameters = new_code_cell(f"name = {name!r}\ncells = {cells}\npause = {pause}\nout_dir = None")
    parameters.metadata["tags"] = ["parameters"]
    code = [parameters, new_code_cell(TOY_CODE)]
    if fail:
        code.append(new_code_cell("raise ValueError('toy failure: the reference pool is empty')"))
    notebook = new_notebook(cells=code, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}})
    path = folder / f"{name}.ipynb"
    nbformat.write(notebook, path)
    return StudyNotebook(name, path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("GADLIB_CACHE", str(root))
    return root


@pytest.fixture
def toys(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    return [_toy(folder, "alpha", 3, pause=0.3), _toy(folder, "beta", 2)]


# --- pure pieces -------------------------------------------------------------------------------------------

def test_estimate_left_known_answers():
    assert estimate_left(20, 0, None, None) is None                  # no history: no guess
    assert estimate_left(20, 0, 100, 10) == 80                       # no cell yet: the previous time, less elapsed
    assert estimate_left(120, 0, 100, 10) == 0
    assert estimate_left(10, 8, 100, 10) == pytest.approx(20)        # faster than last time: the work share wins
    assert estimate_left(70, 1, 100, 10) == pytest.approx(30)        # training took most of it: time wins
    assert estimate_left(150, 5, 100, 10) == pytest.approx(50)       # slower than last time: work share only
    assert estimate_left(50, 12, 100, 10) == 0                       # more cells than last time: done
    assert estimate_left(30, 4, 100, 0) == 70                        # a notebook without cells: time only


def test_status_line_says_what_ran_and_what_is_left():
    counts = Tally(cells_computed=3, cells_reused=1, models_trained=1, images=40, last_label="knn on elpv, seed 2")
    line = status_line("[2/5] cross_domain", 95, 400, counts, dict(seconds=200, cells=8), [60, 30])
    assert line == ("[2/5] cross_domain: 1m35s (study 6m40s) | cells 3 computed / 1 reused, models 1 trained / "
                    "0 loaded, 40 images featurised | last: knn on elpv, seed 2 | ~1m40s left here, "
                    "~3m10s in the study")
    assert status_line("[1/2] a", 5, 5, Tally(), None, [60]).endswith("| last: - | no estimate yet (first run)")
    assert status_line("[1/2] a", 5, 5, Tally(), None, [60], "warm run").endswith("no estimate yet (first warm run)")
    # one later notebook never recorded: the study's total is unknown
    assert status_line("[1/2] a", 5, 5, Tally(), dict(seconds=60, cells=2), [None]).endswith("(first run)")
    assert "slower than last time (1m00s), then ~30s in the study" in status_line(
        "[1/2] a", 90, 90, Tally(), dict(seconds=60, cells=0), [30])


def test_tally_and_durations():
    events = [dict(kind="cell", label="c1", reused=False), dict(kind="cell", label="c2", reused=True),
              dict(kind="train", label="t", reused=False), dict(kind="train", label="t2", reused=True),
              dict(kind="features", label="f", reused=False, count=7), dict(kind="cell", label="c3", reused=True)]
    counts = tally(events)
    assert (counts.cells_computed, counts.cells_reused, counts.models_trained, counts.models_loaded,
            counts.images, counts.last_label) == (1, 2, 1, 1, 7, "c3")
    assert counts.cells == 3
    assert tally([dict(kind="features", label="f", reused=True, count=9)]).images == 0   # nothing extracted
    assert [format_duration(s) for s in (9, 75, 3725)] == ["9s", "1m15s", "1h02m"]


def test_work_breakdown_sums_what_was_computed_by_kind_and_method(tmp_path):
    from gadlib.study_runner import times_table, work_breakdown

    events = [dict(kind="train", label="resad on synth", seconds=300.0, reused=False),
              dict(kind="train", label="resad on synth {'residual': 'none'}", seconds=200.0, reused=False),
              dict(kind="train", label="nagl on synth", seconds=40.0, reused=True),          # loaded: no work
              dict(kind="cell", label="knn on elpv/elpv, seed 0 (1092 queries)", seconds=12.5, reused=False),
              dict(kind="cell", label="resad on elpv/elpv, seed 0 (1092 queries)", seconds=60.0, reused=False),
              dict(kind="cell", label="resad on elpv/elpv, seed 1 (1092 queries)", seconds=0.0, reused=True),
              dict(kind="features", label="efficientnet_lite0 features", seconds=58.0, reused=False, count=540)]
    work = work_breakdown(events)
    assert (work["training_s"], work["scoring_s"], work["features_s"]) == (500.0, 72.5, 58.0)
    assert list(work["by_method"].items()) == [("resad (training)", 500.0), ("resad (scoring)", 60.0),
                                               ("knn (scoring)", 12.5)]      # costliest first
    table = times_table({COLD: dict(seconds=700, notebooks=dict(nb=dict(seconds=650, work=work)))})
    assert "| nb | 10m50s | 8.3 | 1.2 | 1.0 | resad (training) 8.3, resad (scoring) 1.0, knn (scoring) 0.2 |" in table
    assert "Where the cold run" not in times_table({WARM: dict(seconds=5, notebooks=dict(nb=dict(seconds=5)))})
    # without a cold run (the extended study after `make study`), the run that computed part of its work
    partial = times_table({PARTIAL: dict(seconds=700, notebooks=dict(nb=dict(seconds=650, work=work)))},
                          "make study-extended")
    assert "Where the partial run's computing went" in partial and "| nb | 10m50s | 8.3 | 1.2 | 1.0 |" in partial
    assert "Wall time of `make study-extended` on this machine" in partial


def test_cache_is_empty_ignores_weights_and_datasets(tmp_path):
    assert cache_is_empty(tmp_path / "missing")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "backbone.safetensors").write_text("w")
    (tmp_path / "features" / "abc").mkdir(parents=True)        # an empty folder holds nothing to reuse
    assert cache_is_empty(tmp_path)
    (tmp_path / "features" / "abc" / "img.safetensors").write_text("f")
    assert not cache_is_empty(tmp_path)


def test_run_kind_and_record_keeps_the_other_entries(tmp_path):
    computed = dict(a=dict(cells_computed=0, models_trained=0, images=3))
    nothing = dict(a=dict(cells_computed=0, models_trained=0, images=0), b=dict(cells_computed=0, models_trained=0,
                                                                                images=0))
    assert run_kind(True, nothing) == COLD         # an empty cache at the start decides, whatever was computed
    assert run_kind(False, nothing) == RERUN       # nothing computed, but the notebooks ran again
    assert run_kind(False, {n: dict(e, skipped=True) for n, e in nothing.items()}) == WARM   # all up to date
    assert run_kind(False, dict(nothing, b=dict(nothing["b"], skipped=True))) == RERUN
    assert run_kind(False, computed) == PARTIAL
    path = tmp_path / "study_time.json"
    record_times(path, COLD, dict(seconds=100))
    record_times(path, WARM, dict(seconds=10))
    record_times(path, COLD, dict(seconds=90))
    recorded = json.loads(path.read_text())
    assert recorded["runs"] == {COLD: dict(seconds=90), WARM: dict(seconds=10)}
    assert (recorded["cold_seconds"], recorded["warm_seconds"]) == (90, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study_time.json", "study_time.md"]  # no scratch file
    # The first format (one dict per kind at the top) is read, and rewritten in the current one.
    path.write_text(json.dumps({"cold_seconds": dict(seconds=70), "last_partial": dict(seconds=5)}))
    record_times(path, WARM, dict(seconds=3, cores=2, commit="abc"))
    recorded = json.loads(path.read_text())
    assert recorded["runs"] == {COLD: dict(seconds=70), PARTIAL: dict(seconds=5), WARM: dict(seconds=3, cores=2,
                                                                                            commit="abc")}
    assert (recorded["cold_seconds"], recorded["warm_seconds"]) == (70, 3)
    table = path.with_suffix(".md").read_text()
    assert "| cold | 1m10s |" in table and "| warm | 3s |" in table and "| partial | 5s |" in table


def test_select_keeps_study_order_and_names_the_choices(toys):
    assert [n.name for n in select(toys, ["beta", "alpha"])] == ["alpha", "beta"]
    with pytest.raises(ValueError, match="alpha, beta; got 'gamma'"):
        select(toys, ["gamma"])


def test_the_study_list_lives_here_in_order():
    assert [n.name for n in study_runner.STUDY_NOTEBOOKS] == ["quickstart", "explorer", "baselines", "cross_domain",
                                                               "normal_abnormal", "residual_space", "three_gaps"]
    assert [n.name for n in study_runner.EXTENDED_NOTEBOOKS] == ["three_gaps_readings", "scaling"]
    explorer = next(n for n in study_runner.STUDY_NOTEBOOKS if n.name == "explorer")
    assert dict(explorer.parameters) == {"backend": "inline"}          # a static copy for the report
    both = study_runner.STUDY_NOTEBOOKS + study_runner.EXTENDED_NOTEBOOKS
    assert all(n.path.is_file() for n in both)
    assert len({n.name for n in both}) == len(both)                      # one results folder each
    # the three-gap notebook runs twice, one part in each study
    parts = {n.name: dict(n.parameters).get("part") for n in both if n.path.name == "30_three_gaps.ipynb"}
    assert parts == {"three_gaps": "pipeline", "three_gaps_readings": "readings"}


def test_three_gap_parts_split_the_variants_and_share_the_plain_methods():
    from gadlib.study_runner import three_gap_part

    variants = {label: (label.split()[0].lower(), {}) for label in [
        "kNN", "kNN + A", "ResAD", "ResAD + A", "ResAD + B", "NAGL", "NAGL + B", "VOD: no decomposition",
        "VOD: A", "VOD: A + B", "best training-free"]}
    pipeline, readings = three_gap_part(variants, "pipeline"), three_gap_part(variants, "readings")
    assert list(pipeline) == ["kNN", "ResAD", "NAGL", "VOD: no decomposition", "VOD: A", "VOD: A + B",
                              "best training-free"]
    assert list(readings) == ["kNN", "kNN + A", "ResAD", "ResAD + A", "ResAD + B", "NAGL", "NAGL + B",
                              "best training-free"]
    assert set(pipeline) | set(readings) == set(variants)                # nothing is dropped by the split
    assert set(pipeline) & set(readings) == {"kNN", "ResAD", "NAGL", "best training-free"}
    assert three_gap_part(variants, "all") == variants and readings["kNN + A"] is variants["kNN + A"]
    with pytest.raises(ValueError, match="part must be one of all, pipeline, readings; got 'both'"):
        three_gap_part(variants, "both")


# --- runs of tiny notebooks ----------------------------------------------------------------------------------

def test_cold_warm_partial_runs_print_progress_and_record_times(toys, cache, tmp_path, capfd):
    out = tmp_path / "embedded"
    times = out / "study_time.json"

    cold = run_study(out, interval=0.2, notebooks=toys)
    printed = capfd.readouterr()
    lines = printed.out.splitlines()
    assert cold["kind"] == COLD and "empty: a cold run" in lines[0]
    assert "[1/2] alpha: started" in lines and "[2/2] beta: started" in lines
    done = [line for line in lines if line.startswith("[") and ": done in " in line]
    assert len(done) == 2 and ("cells 3 computed / 0 reused, models 1 trained / 0 loaded, 5 images featurised"
                               in done[0])
    status = [line for line in lines if line.startswith("[1/2] alpha: ") and " | " in line]
    assert status and all(line.endswith("no estimate yet (first run)") for line in status)
    assert re.search(r"^  alpha +\d+s  cells 3 computed", printed.out, re.M)
    assert (out / "alpha" / "table.md").read_text() == "| alpha | 3 |\n"
    # what the kernels must not put on the terminal
    assert "without encryption" not in printed.err and "frozen modules" not in printed.err
    recorded = json.loads(times.read_text())["runs"]
    assert set(recorded) == {COLD}
    entry = recorded[COLD]
    assert entry["notebooks"]["alpha"]["cells"] == 3 and entry["notebooks"]["beta"]["cells_computed"] == 2
    assert entry["notebooks"]["alpha"]["images"] == 5 and entry["seconds"] >= entry["notebooks"]["alpha"]["seconds"]
    assert {"date", "cores", "cpu", "torch_threads", "commit"} <= set(entry)

    warm = run_study(out, interval=0.2, notebooks=toys, force=True)     # run although up to date
    assert warm["kind"] == RERUN and warm["notebooks"]["alpha"]["cells_reused"] == 3
    lines = capfd.readouterr().out.splitlines()
    assert "holds earlier work: a warm run" in lines[0]
    assert any(line.endswith("no estimate yet (first warm run)") for line in lines)  # cold times do not apply

    (cache / "results" / "alpha.done").unlink()        # alpha recomputes, beta reuses: neither cold nor warm
    partial = run_study(out, interval=0.2, notebooks=toys, force=True)
    lines = capfd.readouterr().out.splitlines()
    assert partial["kind"] == PARTIAL
    assert any(line.startswith("[1/2] alpha: started (last time ") for line in lines)
    status = [line for line in lines if line.startswith("[1/2] alpha: ") and " | " in line]
    guess = r"(~\S+ left here|slower than last time \(\S+\)), (then )?~\S+ in the study$"
    assert status and all(re.search(guess, line) for line in status)
    recorded = json.loads(times.read_text())["runs"]
    assert recorded[COLD] == entry                          # the cold run is kept as it was
    assert recorded[RERUN]["notebooks"]["beta"]["cells_reused"] == 2
    assert recorded[PARTIAL]["notebooks"]["alpha"]["cells_computed"] == 3


def test_an_up_to_date_notebook_is_not_run_again_until_something_it_follows_from_changes(toys, cache, tmp_path,
                                                                                          capsys):
    out = tmp_path / "embedded"
    assert run_study(out, interval=5, notebooks=toys)["kind"] == COLD
    assert len(list((cache / study_runner.STAMPS).glob("*.json"))) == 2
    written = {name: study_runner.output_digests(out / name) for name in ("alpha", "beta")}
    capsys.readouterr()

    warm = run_study(out, interval=5, notebooks=toys)
    lines = capsys.readouterr().out.splitlines()
    assert warm["kind"] == WARM and all(warm["notebooks"][n]["skipped"] for n in ("alpha", "beta"))
    assert any(line.startswith("[1/2] alpha: up to date, not run") for line in lines)
    assert not any(": started" in line for line in lines)
    assert {name: study_runner.output_digests(out / name) for name in ("alpha", "beta")} == written
    table = (out / "study_time.md").read_text()
    assert re.search(r"^\| warm \| \d+s \| up to date \| up to date \|", table, re.M) and '"up to date": the' in table

    def started(**kwargs) -> list[str]:
        run_study(out, interval=5, notebooks=toys, **kwargs)
        return [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if line.endswith(": started")
                or ": started (last time" in line]

    (out / "beta" / "table.md").write_text("edited by hand\n")          # a touched output: beta runs again
    assert started() == ["[2/2] beta"]
    assert (out / "beta" / "table.md").read_text() == "| beta | 2 |\n"
    (out / "alpha" / "extra.csv").write_text("x\n")                      # a file it did not write: alpha runs
    assert started() == ["[1/2] alpha"] and not (out / "alpha" / "extra.csv").exists()
    _toy(toys[0].path.parent, "alpha", 4)                                # the notebook itself changed
    assert started() == ["[1/2] alpha"]
    assert (out / "alpha" / "table.md").read_text() == "| alpha | 4 |\n"
    assert started() == []
    assert started(force=True) == ["[1/2] alpha", "[2/2] beta"]
    assert started(parameters={"pause": 0.01}) == ["[1/2] alpha", "[2/2] beta"]    # other parameters
    for folder in study_runner.REUSABLE:                                 # an empty cache: cold, nothing skipped
        for path in sorted((cache / folder).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    assert started() == ["[1/2] alpha", "[2/2] beta"]
    # another output folder has stamps of its own
    assert run_study(tmp_path / "elsewhere", interval=5, notebooks=toys)["notebooks"]["alpha"].get("skipped") is None


def test_notebook_inputs_follow_the_notebook_parameters_library_and_layout(tmp_path):
    from gadlib.study_runner import library_digest, notebook_inputs

    code = tmp_path / "lib"
    (code / "__pycache__").mkdir(parents=True)
    (code / "kernel.py").write_text("A = 1\n")
    library = library_digest([code])
    assert library == library_digest([code])
    (code / "__pycache__" / "kernel.cpython-311.pyc").write_bytes(b"\0")   # byte code is not an input
    assert library_digest([code]) == library
    (code / "kernel.py").write_text("A = 2\n")
    assert library_digest([code]) != library
    (code / "kernel.py").write_text("A = 1\n")
    (code / "new.py").write_text("")
    assert library_digest([code]) != library
    notebook = tmp_path / "nb.ipynb"
    notebook.write_text("{}")
    base = notebook_inputs(notebook, {"a": 1, "b": [1, 2]}, "lib", (2, 1))
    assert base == notebook_inputs(notebook, {"b": [1, 2], "a": 1}, "lib", (2, 1))      # order does not matter
    assert len({base, notebook_inputs(notebook, {"a": 2, "b": [1, 2]}, "lib", (2, 1)),
                notebook_inputs(notebook, {"a": 1, "b": [1, 2]}, "lib2", (2, 1)),
                notebook_inputs(notebook, {"a": 1, "b": [1, 2]}, "lib", (1, 2))}) == 4
    notebook.write_text("{ }")
    assert notebook_inputs(notebook, {"a": 1, "b": [1, 2]}, "lib", (2, 1)) != base


def test_only_runs_a_subset_and_records_nothing(toys, cache, tmp_path, capsys):
    out = tmp_path / "embedded"
    result = run_study(out, only=["beta"], interval=5, notebooks=toys)
    lines = capsys.readouterr().out.splitlines()
    assert "[1/1] beta: started" in lines and "kind" not in result
    assert not (out / "study_time.json").exists() and not (out / "alpha").exists()


def test_a_failing_notebook_names_itself_its_cell_and_the_error(tmp_path, cache, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    toys = [_toy(folder, "alpha", 1), _toy(folder, "broken", 1, fail=True), _toy(folder, "gamma", 1)]
    out = tmp_path / "embedded"
    with pytest.raises(StudyError) as failure:
        run_study(out, interval=5, notebooks=toys)
    message = str(failure.value)
    assert str(folder / "broken.ipynb") in message and "raised ValueError: toy failure" in message
    assert re.search(r"cell In \[\d+\] \(starting `raise ValueError\('toy failure", message)
    assert "\x1b[" not in message                             # colour codes stripped
    assert "gad study --only broken" in message
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[2/3] broken: FAILED after ") for line in lines)
    assert not any("gamma" in line for line in lines)       # the study stops at the failure
    assert not (out / "broken").exists() and not (out / "study_time.json").exists()


def test_cli_exits_non_zero_on_failure_and_on_bad_names(tmp_path, cache, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(study_runner, "STUDY_NOTEBOOKS", (_toy(folder, "broken", 1, fail=True),))
    runner = CliRunner()
    failed = runner.invoke(app, ["study", "--out", str(tmp_path / "embedded"), "--interval", "5"])
    assert failed.exit_code == 1 and "broken.ipynb: cell In [" in failed.output
    assert "toy failure: the reference pool is empty" in failed.output
    unknown = runner.invoke(app, ["study", "--only", "nope"])
    assert unknown.exit_code == 2 and "--only takes notebook names from broken; got 'nope'" in unknown.output
    bad = runner.invoke(app, ["study", "--interval", "0"])
    assert bad.exit_code == 2 and "--interval must be a positive number" in bad.output
    both = runner.invoke(app, ["study", "--validation", "--extended"])
    assert both.exit_code == 2 and "two different runs" in both.output
    elsewhere = runner.invoke(app, ["study", "--only", "scaling"])
    assert elsewhere.exit_code == 2 and "scaling: run by `gad study --extended`" in elsewhere.output


def test_the_extended_study_records_its_times_in_its_own_file(toys, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(study_runner, "EXTENDED_NOTEBOOKS", toys[:1])
    out = tmp_path / "embedded"
    result = CliRunner().invoke(app, ["study", "--extended", "--out", str(out), "--interval", "5"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"alpha", "study_extended_time.json", "study_extended_time.md"}
    recorded = json.loads((out / "study_extended_time.json").read_text())["runs"]
    assert list(recorded) == [COLD] and list(recorded[COLD]["notebooks"]) == ["alpha"]
    assert "Wall time of `make study-extended` on this machine" in (out / "study_extended_time.md").read_text()
