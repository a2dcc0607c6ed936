"""The result store under every notebook: cells keyed by what determines them, reused across notebooks,
resumed after a kill, and the same numbers whether computed here, in a pool, or read back."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gadlib.baselines import BEST_TRAINING_FREE
from gadlib.data.load import load_dataset
from gadlib.methods import create_method
from gadlib.progress import read_events
from gadlib.store import ResultStore, cell_key, code_digest, method_identity
from gadlib.study import evaluate

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from gadlib.data.synth import generate_suite

    root = tmp_path_factory.mktemp("store_suite")
    generate_suite(root, categories=["tile", "wood_grain", "leather"], defects=["scratch", "hole"], n_train=6,
                   n_test_normal=4, n_test_per_defect=3, size=64, seed=5)
    return f"synth:{root}"


def _knn(**params):
    return create_method("knn", image_size=64, progress=False, **params)


def test_a_second_evaluation_reads_every_cell_back_with_the_same_numbers(suite, tmp_path):
    name, frame = load_dataset(suite)
    store = ResultStore(tmp_path / "results")
    first = evaluate(frame, _knn(), name, [1, 2], [0, 1], categories=["leather"], store=store, progress=False)
    assert (store.computed, store.reused) == (2, 0)
    again = evaluate(frame, _knn(), name, [1, 2], [0, 1], categories=["leather"], store=store, progress=False)
    assert (store.computed, store.reused) == (2, 2)
    fresh = evaluate(frame, _knn(), name, [1, 2], [0, 1], categories=["leather"], store=False, progress=False)
    for result in (again, fresh):
        pd.testing.assert_frame_equal(first.tidy, result.tidy, check_dtype=False)
        pd.testing.assert_frame_equal(first.scores, result.scores, check_dtype=False)
    assert [e.normal_refs for e in again.episodes] == [e.normal_refs for e in first.episodes]
    assert len((tmp_path / "results" / "computed.log").read_text().split()) == 2


def test_a_prefetch_neither_reads_nor_counts_stored_cells_the_evaluation_after_it_does(suite, tmp_path):
    from gadlib.study import evaluate_many

    name, frame = load_dataset(suite)
    store = ResultStore(tmp_path / "results")
    request = dict(frame=frame, method=_knn(), dataset=name, shots=[1, 2], seeds=[0, 1], categories=["leather"])
    evaluate(**request, store=store, progress=False)
    assert (store.computed, store.reused) == (2, 0)
    newer = dict(request, seeds=[0, 1, 2])                  # one cell more than stored
    assert evaluate_many([newer], progress=False, store=store, results=False) == []
    assert (store.computed, store.reused) == (3, 0)         # the missing cell computed; the two others untouched
    result = evaluate(**newer, store=store, progress=False)
    assert (store.computed, store.reused) == (3, 3)         # each cell counted once, when it is read
    assert sorted(set(result.tidy["seed"])) == [0, 1, 2]


def test_the_key_follows_what_determines_the_numbers(suite, tmp_path):
    from gadlib.data.references import sample_episode

    name, frame = load_dataset(suite)
    episodes = [sample_episode(frame, "leather", k, 0, dataset=name) for k in (1, 2)]
    queries = frame.set_index("image_path").loc[episodes[-1].queries]
    base = cell_key(method_identity(_knn()), name, episodes, queries, True)
    # Speed and printing do not change a cell; the metric, the draw and the queries' labels do.
    assert cell_key(method_identity(_knn(query_batch=3)), name, episodes, queries, True) == base
    assert cell_key(method_identity(_knn(metric="cosine")), name, episodes, queries, True) != base
    other_seed = [sample_episode(frame, "leather", k, 1, dataset=name) for k in (1, 2)]
    assert cell_key(method_identity(_knn()), name, other_seed, queries, True) != base
    relabelled = queries.assign(label=1 - queries["label"])
    assert cell_key(method_identity(_knn()), name, episodes, relabelled, True) != base
    # A learned tensor that changes (a retrained checkpoint) is another cell.
    import torch

    model = _knn()
    model.bias_ = torch.zeros(3)
    one = method_identity(model)["state"]
    model.bias_ = torch.ones(3)
    assert method_identity(model)["state"] != one


def test_the_key_changes_when_an_image_changes_on_disk(suite, tmp_path):
    import shutil

    from gadlib.data.references import sample_episode

    root = Path(suite.split(":", 1)[1])
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    name, frame = load_dataset(f"synth:{copy}")
    episodes = [sample_episode(frame, "leather", 1, 0, dataset=name)]
    queries = frame.set_index("image_path").loc[episodes[0].queries]
    before = cell_key(method_identity(_knn()), name, episodes, queries, True)
    target = Path(episodes[0].normal_refs[0])
    target.write_bytes(Path(queries.index[0]).read_bytes())          # same path, other bytes
    assert cell_key(method_identity(_knn()), name, episodes, queries, True) != before


def test_training_code_digest_is_part_of_the_checkpoint_key(monkeypatch):
    from gadlib import store, training

    params = dict(method="resad", params={}, source="synth", categories=None, backbone_key="b")
    first = training.checkpoint_path(**params)
    monkeypatch.setattr(training, "code_digest", lambda parts: "edited-code")
    assert training.checkpoint_path(**params) != first
    assert len(code_digest(store.TRAINING_CODE)) == 16 and code_digest(store.TRAINING_CODE) != code_digest()


def test_a_methods_cells_and_checkpoints_are_keyed_by_its_own_file_not_the_other_methods(monkeypatch):
    from gadlib import store, training
    from gadlib.methods.base import method_class

    knn, resad = store.method_code(method_class("knn")), store.method_code(method_class("resad"))
    assert "methods/knn.py" in knn and "methods/resad.py" not in knn and "methods" not in knn
    assert "methods/resad.py" in resad and "methods/base.py" in resad and "kernels" in resad
    assert code_digest(knn) != code_digest(resad)
    assert method_identity(_knn())["code"] == code_digest(knn)

    class Outside:                          # a method defined outside the package keeps the whole folder
        pass
    Outside.__module__ = "elsewhere"
    monkeypatch.setattr("inspect.getfile", lambda obj: "/elsewhere/plugin.py")
    assert store.method_code(Outside) == store.EVALUATION_CODE
    monkeypatch.undo()

    seen = []
    monkeypatch.setattr(training, "code_digest", lambda parts: seen.append(parts) or "digest")
    training.checkpoint_path("nagl", {}, "synth", None, "b")
    assert "methods/nagl.py" in seen[0] and "methods/vod.py" not in seen[0] and "study.py" not in seen[0]


def test_a_pool_of_two_workers_gives_the_rows_of_one_process(suite, tmp_path):
    name, frame = load_dataset(suite)
    one = evaluate(frame, _knn(), name, [1, 2], [0, 1, 2], categories=["leather", "tile"], store=False,
                   workers=1, progress=False)
    two = evaluate(frame, _knn(), name, [1, 2], [0, 1, 2], categories=["leather", "tile"], store=False,
                   workers=2, progress=False)
    pd.testing.assert_frame_equal(one.tidy, two.tidy, check_dtype=False)
    pd.testing.assert_frame_equal(one.scores, two.scores, check_dtype=False)


# A sitecustomize for the killed notebook's kernel: every computed cell takes a second longer, so that
# the notebook can be killed in the middle of its scoring.
SLOW_CELLS = """
import time
import gadlib.study as study
_score = study.score_cell
def _slow(*args, **kwargs):
    result = _score(*args, **kwargs)
    time.sleep(1.0)
    return result
study.score_cell = _slow
"""


def _wait_until_group_dead(pgid: int, timeout: float = 30.0) -> None:
    """SIGKILL is delivered asynchronously: the kernel of a killed papermill may still write a line after
    papermill itself has been reaped. Wait until no live (non-zombie) process is left in the group."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":       # fields: state, ppid, pgrp, ...
                alive.append(stat.parent.name)
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of group {pgid} still alive after SIGKILL")


def _computed(log: Path) -> list[str]:
    return log.read_text().split() if log.is_file() else []


def test_a_killed_notebook_resumes_with_only_the_missing_cells_and_reuses_another_notebooks(suite, tmp_path):
    """Quickstart (kNN) first; then the cross-domain notebook reuses its kNN cells, is killed midway
    through its ResAD cells, and a re-run computes exactly the cells that were missing."""
    from gadlib.notebooks import run_notebook

    cache = tmp_path / "cache"
    env = dict(os.environ, GADLIB_CACHE=str(cache), GADLIB_WORKERS="1")
    log = cache / "results" / "computed.log"
    quick = dict(datasets=[suite], method_params={"image_size": 64}, shots=[1, 2], seeds=[0, 1, 2], n_overlays=1,
                 progress=False)
    small = dict(image_size=64, epochs=1, steps_per_epoch=2, batch_size=4, train_shots=2, flow_blocks=2,
                 position_dim=8, simulated_per_category=2)
    cross = dict(source=suite, source_categories=["tile", "wood_grain"], targets={suite: ["leather"]},
                 resad_params=small, knn_params={"image_size": 64}, training_free_params={"image_size": 64},
                 shots=[1, 2], seeds=[0, 1, 2], ablations={"transductive": {"normalization": "transductive"}},
                 ablation_shots=[2],
                 ablation_targets=[suite], n_overlays=1, progress=False)
    previous = os.environ.get("GADLIB_CACHE")
    os.environ["GADLIB_CACHE"] = str(cache)
    try:
        run_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", tmp_path / "quickstart", quick)
    finally:
        os.environ["GADLIB_CACHE"] = previous
    after_quickstart = _computed(log)
    assert len(after_quickstart) == 3 * 3                     # 3 categories x 3 seeds of kNN

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_CELLS)
    events = tmp_path / "killed.jsonl"
    (tmp_path / "params.json").write_text(json.dumps(cross))
    script = (f"import json; from gadlib.notebooks import run_notebook; "
              f"run_notebook({str(NOTEBOOK_DIR / '20_cross_domain.ipynb')!r}, {str(tmp_path / 'cross')!r}, "
              f"json.load(open({str(tmp_path / 'params.json')!r})))")
    killed_env = dict(env, GADLIB_PROGRESS=str(events),
                      PYTHONPATH=os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    process = subprocess.Popen([sys.executable, "-c", script], env=killed_env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if any(e["kind"] == "cell" and not e["reused"] for e in read_events(events)):
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)                # papermill and its kernel
    process.wait()
    _wait_until_group_dead(process.pid)
    before_kill = read_events(events)
    computed_before = [e for e in before_kill if e["kind"] == "cell" and not e["reused"]]
    assert computed_before, "the notebook ended before it computed a cell"
    assert not (tmp_path / "cross" / "20_cross_domain.ipynb").exists(), "the notebook should have been killed midway"
    assert all(e["label"].startswith("resad") for e in computed_before)
    # the quickstart's leather kNN cells were not recomputed (the prefetch found them stored; they are read later)
    assert not [e for e in before_kill if e["kind"] == "cell" and e["label"].startswith("knn") and not e["reused"]]
    after_kill = _computed(log)

    rerun_events = tmp_path / "rerun.jsonl"
    os.environ.update(GADLIB_CACHE=str(cache), GADLIB_PROGRESS=str(rerun_events))
    try:
        run_notebook(NOTEBOOK_DIR / "20_cross_domain.ipynb", tmp_path / "cross", cross)
    finally:
        os.environ["GADLIB_CACHE"] = previous
        os.environ.pop("GADLIB_PROGRESS")
    new = _computed(log)[len(after_kill):]
    assert not set(new) & set(after_kill)                 # nothing computed twice
    # ResAD: 3 seeds (k = 1, 2) + the transductive ablation's 3 seeds (k = 2); the training-free bar: 3 seeds;
    # kNN: all reused.
    assert len(after_kill) - len(after_quickstart) + len(new) == 9
    rerun = [e for e in read_events(rerun_events) if e["kind"] == "cell"]
    assert sum(not e["reused"] for e in rerun) == len(new) and len(new) < 9
    # kNN-based cells: the quickstart's 3 seeds of leather, read once each; the bar's 3 (a cosine kNN), which
    # nothing had computed before the kill (only ResAD had): computed by the prefetch, then read
    knn = [e for e in rerun if e["label"].startswith("knn")]
    assert len(knn) == 9 and sum(not e["reused"] for e in knn) == 3
    trained = [e for e in read_events(rerun_events) if e["kind"] == "train"]
    assert trained and all(e["reused"] for e in trained)   # the checkpoint outlived the kill
    tidy = pd.read_csv(tmp_path / "cross" / "tidy.csv")
    assert set(tidy["method"]) == {"knn", "resad", f"best training-free: {BEST_TRAINING_FREE}"}
    assert set(tidy["seed"]) == {0, 1, 2}


def test_methods_that_ignore_abnormal_references_share_cells_across_m(suite, tmp_path):
    name, frame = load_dataset(suite)
    store = ResultStore(tmp_path / "results")
    plain = evaluate(frame, _knn(), name, [1, 2], [0, 1], categories=["leather"], store=store, progress=False)
    simulated = evaluate(frame, _knn(), name, [1, 2], [0, 1], abnormal_shots=1, abnormal_source="simulated",
                         categories=["leather"], simulated_dir=tmp_path / "sim", store=store, progress=False)
    assert (store.computed, store.reused) == (2, 2)
    assert set(simulated.tidy["abnormal_shots"]) == {1} and set(plain.tidy["abnormal_shots"]) == {0}
    pd.testing.assert_frame_equal(plain.tidy.drop(columns="abnormal_shots"),
                                  simulated.tidy.drop(columns="abnormal_shots"), check_dtype=False)
    # A method that reads them gets its own cell for each set of abnormal references.
    from gadlib.data.references import sample_episode

    zero = [sample_episode(frame, "leather", 2, 0, dataset=name)]
    one = [sample_episode(frame, "leather", 2, 0, 1, "simulated", name, tmp_path / "sim")]
    queries = frame.set_index("image_path").loc[zero[0].queries]
    reads = dict(method_identity(_knn()), reads_abnormal=True)
    ignores = method_identity(_knn())
    assert cell_key(ignores, name, zero, queries, True) == cell_key(ignores, name, one, queries, True)
    assert cell_key(reads, name, zero, queries, True) != cell_key(reads, name, one, queries, True)


def test_train_all_in_a_pool_gives_the_models_trained_one_after_another(suite, tmp_path, monkeypatch):
    import torch

    from gadlib.training import train_all

    threads_before = torch.get_num_threads()
    small = dict(image_size=64, epochs=1, steps_per_epoch=2, simulated_per_category=2)
    jobs = [dict(method="nagl", source=suite, categories=["tile", "wood_grain"], params=dict(small, seed=seed))
            for seed in (0, 1)]
    fitted = {}
    # One feature cache for both (features extracted with another thread count round differently too); the
    # checkpoints of the first layout are removed so that the second trains its own.
    monkeypatch.setenv("GADLIB_CACHE", str(tmp_path / "cache"))
    for workers in (1, 2):
        shutil.rmtree(tmp_path / "cache" / "checkpoints", ignore_errors=True)
        fitted[workers] = train_all(jobs, progress=False, workers=workers)
        assert all(path.with_suffix(".safetensors").is_file() for _, path in fitted[workers])
    for (one, _), (two, _) in zip(fitted[1], fitted[2]):
        a, b = one.fitted_state(), two.fitted_state()
        assert a.keys() == b.keys()
        for name in a:            # trained with one thread in a worker and here (TRAINING_THREADS): bit for bit
            assert torch.equal(a[name], b[name]), name
    first, second = (model.fitted_state() for model, _ in fitted[2])
    assert any(not torch.equal(first[n], second[n]) for n in first)      # two seeds, two models
    assert torch.get_num_threads() == threads_before                       # the process's own count restored


def test_train_all_starts_the_longest_trainings_first(tmp_path, monkeypatch):
    from concurrent.futures import Future

    from gadlib import parallel, training

    monkeypatch.setenv("GADLIB_CACHE", str(tmp_path / "cache"))
    submitted = []

    def submit(executor, function, job):
        submitted.append(job["method"])
        done = Future()
        done.set_result(None)
        return done

    monkeypatch.setattr(parallel, "cores", lambda: 2)
    monkeypatch.setattr(parallel, "pool", lambda workers, threads: None)
    monkeypatch.setattr(parallel, "submit", submit)
    monkeypatch.setattr(training, "_prepare_sources", lambda missing, workers: None)
    monkeypatch.setattr(training, "train_or_load", lambda **job: (job["method"], None))
    jobs = [dict(method=name, source="synth", params=dict(image_size=64)) for name in ("vod", "inctrl", "resad", "nagl")]
    assert [m for m, _ in training.train_all(jobs, progress=False, workers=2)] == ["vod", "inctrl", "resad", "nagl"]
    assert submitted == ["resad", "nagl", "inctrl", "vod"]       # Method.training_seconds, longest first


def test_result_rows_name_the_configuration_not_only_the_method(suite, tmp_path):
    assert create_method("resad", progress=False, query_batch=4).config_label() == "resad"   # speed: not named
    assert create_method("resad", residual="none", constraintor=False).config_label() == \
        "resad(constraintor=False, residual=none)"
    name, frame = load_dataset(suite)
    store = ResultStore(tmp_path / "results")
    rows = {metric: evaluate(frame, _knn(metric=metric), name, [1], [0], categories=["leather"], store=store,
                             progress=False).tidy for metric in ("l2", "cosine")}
    assert set(rows["l2"]["config"]) == {"knn(image_size=64)"}
    assert set(rows["cosine"]["config"]) == {"knn(image_size=64, metric=cosine)"}
    assert list(rows["l2"].columns[:5]) == ["dataset", "category", "domain", "method", "config"]
