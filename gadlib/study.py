"""Run methods over datasets, categories, shots and seeded reference draws -> tidy result rows.

Every episode is drawn (and every mask checked against its image) *before* any scoring starts, so
bad input fails fast and nothing is half-computed. For one seed the normal references are nested
across k, and methods score all k in one call (:meth:`Method.predict_shots`).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gadlib.data.images import check_mask_sizes, load_masks
from gadlib.data.references import Episode, sample_episode
from gadlib.methods.base import Method, References
from gadlib.metrics import image_metrics, pixel_metrics
from gadlib.parallel import layout, method_from_payload, method_payload, pool, submit
from gadlib.progress import report
from gadlib.store import ResultStore, cell_key, default_store, frame_payload, method_identity, payload_frame

# The rows of a result; ``config`` names the method's variant (Method.config_label). A stored cell keeps the
# rest (CELL_COLUMNS): the label is added when the cell is read, so renaming a variant recomputes nothing.
TIDY_COLUMNS = ["dataset", "category", "domain", "method", "config", "shots", "abnormal_shots", "seed", "metric",
                "value"]
CELL_COLUMNS = [column for column in TIDY_COLUMNS if column != "config"]


@dataclass
class StudyResult:
    """What one evaluation produced: tidy metric rows, the episodes, and per-query scores."""

    tidy: pd.DataFrame
    episodes: list[Episode] = field(default_factory=list)
    scores: pd.DataFrame | None = None
    per_type: pd.DataFrame | None = None   # type-matched protocol: metrics of each defect type


def _domain_groups(queries: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """The whole category (domains joined by '+'), then each domain on its own if there are several."""
    domains = sorted(queries["domain"].unique())
    groups = [("+".join(domains), np.ones(len(queries), dtype=bool))]
    if len(domains) > 1:
        groups += [(d, (queries["domain"] == d).to_numpy()) for d in domains]
    return groups


def evaluate(frame: pd.DataFrame, method: Method, dataset: str, shots: Sequence[int] = (1, 2, 4, 8),
             seeds: Sequence[int] = (0, 1, 2), abnormal_shots: int = 0, abnormal_source: str = "real",
             categories: Sequence[str] | None = None, simulated_dir: str | Path | None = None,
             progress: bool = True, store: ResultStore | None | bool = None,
             workers: int | None = None) -> StudyResult:
    """Evaluate ``method`` on every category of ``frame`` for every k in ``shots`` and every seed.

    Each (category, seed) is one cell of the result store (:mod:`gadlib.store`): a cell computed
    before, by any notebook or command, is read back instead of computed.

    Args:
        frame: schema table of the target dataset.
        method: a fitted (or training-free) method.
        dataset: dataset name written into the rows.
        shots: numbers of normal references k.
        seeds: reference-draw seeds (at least 3 for reported numbers).
        abnormal_shots: m abnormal references per episode.
        abnormal_source: ``"real"`` or ``"simulated"`` (see :func:`sample_episode`).
        categories: subset of categories; default all.
        simulated_dir: where simulated abnormal references are written.
        progress: show progress bars.
        store: the result store; ``None`` = :func:`gadlib.store.default_store`, ``False`` = compute
            everything and store nothing.
        workers: processes for the missing cells (:func:`gadlib.parallel.layout`; 1 = this process).
    """
    request = dict(frame=frame, method=method, dataset=dataset, shots=shots, seeds=seeds,
                   abnormal_shots=abnormal_shots, abnormal_source=abnormal_source, categories=categories,
                   simulated_dir=simulated_dir)
    return evaluate_many([request], progress, store, workers)[0]


def evaluate_many(requests: Sequence[dict], progress: bool = True, store: ResultStore | None | bool = None,
                  workers: int | None = None, results: bool = True) -> list[StudyResult]:
    """:func:`evaluate` for several requests (dicts of its arguments) with one schedule of their cells.

    Every episode of every request is drawn first; then the missing cells of all requests are computed
    together, so a pool of workers stays busy across methods and targets (one request alone often has
    three cells: one per seed). ``results=False`` only fills the store (a notebook's prefetch) and
    returns an empty list.
    """
    store = default_store() if store is None else (store or None)
    jobs = [_plan(**request, store=store) for request in requests]
    # Without results the stored cells are not even read: the notebook's own calls read (and count) them.
    payloads = _score_cells(jobs, store, workers, progress, read=results)
    if not results:
        return []
    out = []
    for job, found in zip(jobs, payloads):
        # A shared cell of a method that ignores abnormal references may come from another m: rows say this m.
        tidy = pd.concat([payload_frame(p["tidy"], CELL_COLUMNS) for p in found], ignore_index=True)
        scores = pd.concat([payload_frame(p["scores"]) for p in found], ignore_index=True)
        tidy["abnormal_shots"] = job["abnormal_shots"]
        scores["abnormal_shots"] = job["abnormal_shots"]
        tidy.insert(tidy.columns.get_loc("method") + 1, "config", job["method"].config_label())
        episodes = [cell["episodes"][k] for cell in job["cells"] for k in job["shots"]]
        out.append(StudyResult(tidy=tidy.astype({"shots": int, "abnormal_shots": int, "seed": int}),
                               episodes=episodes, scores=scores))
    return out


def _plan(frame: pd.DataFrame, method: Method, dataset: str, shots: Sequence[int] = (1, 2, 4, 8),
          seeds: Sequence[int] = (0, 1, 2), abnormal_shots: int = 0, abnormal_source: str = "real",
          categories: Sequence[str] | None = None, simulated_dir: str | Path | None = None,
          store: ResultStore | None = None) -> dict:
    """Draw every episode of one request (errors come before any work) and name its cells."""
    categories = list(categories) if categories is not None else sorted(frame["category"].unique())
    shots = sorted(set(int(k) for k in shots))
    if not shots or not seeds:
        raise ValueError("evaluate needs at least one k in shots and one seed")
    plan = []  # (category, seed, episodes by k)
    for category in categories:
        for seed in seeds:
            episodes = {k: sample_episode(frame, category, k, int(seed), abnormal_shots, abnormal_source,
                                          dataset, simulated_dir) for k in shots}
            longest = episodes[shots[-1]]
            if any(ep.queries != longest.queries or ep.abnormal_refs != longest.abnormal_refs
                   for ep in episodes.values()):
                raise RuntimeError(f"{dataset}/{category}: queries or abnormal references differ across k; "
                                   "one predict_shots call cannot score them")
            plan.append((category, int(seed), episodes))
    lookup = frame.set_index("image_path")
    test = frame[frame["category"].isin(categories) & (frame["split"] == "test")]
    check_mask_sizes(test)
    categories_with_masks = set(test.loc[test["mask_path"].notna(), "category"])
    identity = method_identity(method) if store is not None else None
    cells = []
    for category, seed, episodes in plan:
        queries = lookup.loc[episodes[shots[-1]].queries]
        with_pixel = category in categories_with_masks
        key = cell_key(identity, dataset, [episodes[k] for k in shots], queries, with_pixel) if store else None
        cells.append(dict(key=key, category=category, seed=seed, episodes=episodes, queries=queries,
                          with_pixel=with_pixel))
    return dict(method=method, dataset=dataset, shots=shots, abnormal_shots=abnormal_shots, cells=cells)


def _score_cells(jobs: list[dict], store, workers, progress, read: bool = True) -> list[list[dict]]:
    """Payloads of every cell of every job, in order: read from the store, else computed here or in a pool.

    ``read=False``: a stored cell is only checked for (its payload stays ``None`` and it is not counted).
    """
    payloads = [[store.get(c["key"]) if store and read else None for c in job["cells"]] for job in jobs]
    missing, twins = [], {}        # (job index, cell index) to compute; cells of the same key share one
    for j, job in enumerate(jobs):
        for i, (cell, payload) in enumerate(zip(job["cells"], payloads[j])):
            if payload is not None:
                report("cell", _cell_label(job, cell), 0.0, reused=True)
            elif not read and store and store.path(cell["key"]).is_file():
                continue                  # stored: the notebook's own call reads it
            elif cell["key"] is not None and cell["key"] in twins:
                twins[cell["key"]].append((j, i))
            else:
                missing.append((j, i))
                twins.setdefault(cell["key"] or f"{j}/{i}", [])
    # Largest cells first: the pool's last tasks are then short, and no worker waits long for the other.
    missing.sort(key=lambda ji: -len(jobs[ji[0]]["cells"][ji[1]]["queries"]))
    total = sum(len(job["cells"]) for job in jobs)
    desc = f"{jobs[0]['dataset']} {jobs[0]['method'].name}" if len(jobs) == 1 else f"{len(jobs)} evaluations"
    bar = tqdm(total=total, initial=total - len(missing), desc=desc, unit="draw", disable=not progress)
    n_workers, threads = layout(workers)
    if n_workers > 1 and len(missing) > 1:
        _prepare_features(jobs, missing, n_workers)
        executor = pool(n_workers, threads)
        descriptions = {j: (method_payload(jobs[j]["method"]), uuid.uuid4().hex) for j in {j for j, _ in missing}}
        futures = {}
        for j, i in missing:
            job, (description, memo) = jobs[j], descriptions[j]
            futures[submit(executor, _score_remote, description, memo, job["dataset"], job["shots"],
                           job["abnormal_shots"], _portable(job["cells"][i]))] = (j, i)
        from concurrent.futures import as_completed

        for future in as_completed(futures):
            j, i = futures[future]
            payload, seconds = future.result()
            payloads[j][i] = _keep(store, jobs[j], jobs[j]["cells"][i], payload, seconds)
            bar.update()
    else:
        masks_for: dict[str, tuple[list[str], np.ndarray]] = {}
        for j, i in missing:
            job = jobs[j]
            started = time.perf_counter()
            payload = score_cell(job["method"], job["dataset"], job["shots"], job["abnormal_shots"], job["cells"][i],
                                 masks_for)
            payloads[j][i] = _keep(store, job, job["cells"][i], payload, time.perf_counter() - started)
            bar.update()
    bar.close()
    for key, copies in twins.items():
        if copies:
            source = next(payloads[j][i] for j, job in enumerate(jobs) for i, c in enumerate(job["cells"])
                          if c["key"] == key and payloads[j][i] is not None)
            for j, i in copies:
                payloads[j][i] = source
                if read:
                    report("cell", _cell_label(jobs[j], jobs[j]["cells"][i]), 0.0, reused=True)
    return payloads


def _prepare_features(jobs, missing, workers: int | None = None) -> None:
    """Features of every image the missing cells read, extracted first, each image once, shared out over
    the workers (:func:`gadlib.cache.ensure_on_pool`): two cells' workers must not extract the same image."""
    from gadlib.cache import ensure_on_pool

    paths: dict[int, tuple] = {}
    for j, i in missing:
        cache = getattr(jobs[j]["method"], "feature_cache", None)
        if cache is None:
            continue
        found = cache()
        images = {p for ep in jobs[j]["cells"][i]["episodes"].values()
                  for p in ep.queries + ep.normal_refs + ep.abnormal_refs}
        paths.setdefault(id(found), (found, set()))[1].update(images)
    ensure_on_pool([(found, sorted(images)) for found, images in paths.values()], workers)


def _keep(store, job, cell, payload, seconds) -> dict:
    if store is not None:
        store.put(cell["key"], payload)
    report("cell", _cell_label(job, cell), seconds, reused=False)
    return payload


def _cell_label(job, cell) -> str:
    m = f", m={job['abnormal_shots']}" if job["abnormal_shots"] else ""
    return (f"{job['method'].name} on {job['dataset']}/{cell['category']}, seed {cell['seed']}{m} "
            f"({len(cell['queries'])} queries)")


def _portable(cell: dict) -> dict:
    return {k: v for k, v in cell.items() if k != "key"}


def _score_remote(description: dict, memo: str, dataset, shots, abnormal_shots, cell) -> tuple[dict, float]:
    """Pool task: re-create the method (once per worker) and score one cell."""
    method = method_from_payload(description, memo)
    started = time.perf_counter()
    payload = score_cell(method, dataset, shots, abnormal_shots, cell, {})
    return payload, time.perf_counter() - started


def score_cell(method: Method, dataset: str, shots: Sequence[int], abnormal_shots: int, cell: dict,
               masks_for: dict) -> dict:
    """Score one (category, seed) draw for every k; tidy rows and per-query scores as JSON-ready columns.

    ``masks_for`` keeps the last category's query masks at the last map size: queries repeat across seeds
    (references come from the pool), so their masks are read once per size.
    """
    category, seed, episodes, queries = cell["category"], cell["seed"], cell["episodes"], cell["queries"]
    longest = episodes[shots[-1]]
    scores_by_k = method.predict_shots(longest.queries, References.from_episode(longest), shots, cell["with_pixel"])
    masks = None
    if cell["with_pixel"]:
        size = next(iter(scores_by_k.values())).pixel.shape[-1]
        if masks_for.get(category, (None,))[0] != (longest.queries, size):      # maps of another size: reload
            masks_for[category] = ((longest.queries, size),
                                   load_masks(queries["mask_path"].tolist(), longest.queries, size))
        masks = masks_for[category][1]
    labels = queries["label"].to_numpy()
    tidy_rows, score_parts = [], []
    for k, scores in scores_by_k.items():
        for domain, keep in _domain_groups(queries):
            if len(np.unique(labels[keep])) < 2:
                continue  # AUROC is undefined without both normal and anomalous queries
            values = image_metrics(labels[keep], scores.image[keep])
            if masks is not None and masks[keep].any():
                values.update(pixel_metrics(masks[keep], scores.pixel[keep]))
            base = dict(dataset=dataset, category=category, domain=domain, method=method.name, shots=k,
                        abnormal_shots=abnormal_shots, seed=seed)
            tidy_rows += [dict(base, metric=name, value=float(v)) for name, v in values.items()]
        score_parts.append(pd.DataFrame(dict(
            dataset=dataset, category=category, domain=queries["domain"].to_numpy(), method=method.name,
            shots=k, abnormal_shots=abnormal_shots, seed=seed, image_path=longest.queries,
            label=labels, defect=queries["defect"].to_numpy(), score=scores.image)))
    tidy = pd.DataFrame(tidy_rows, columns=CELL_COLUMNS)
    return dict(tidy=frame_payload(tidy), scores=frame_payload(pd.concat(score_parts, ignore_index=True)))


PROTOCOLS = ("label-free", "type-matched")


def evaluate_type_matched(frame: pd.DataFrame, method: Method, dataset: str, shots: Sequence[int] = (1, 2, 4, 8),
                          seeds: Sequence[int] = (0, 1, 2), abnormal_shots: int = 1,
                          categories: Sequence[str] | None = None, progress: bool = True) -> StudyResult:
    """NAGL's protocol: the abnormal references share the queries' defect type.

    For each category and each of its defect types, real abnormal references of that type guide the
    queries made of the category's normal test images and that type's anomalies (references
    excluded); the normal references are the same draw as in :func:`evaluate` (same seed, same
    pool). Metrics are computed per defect type and averaged over types; ``scores`` and
    ``per_type`` keep each type.

    This protocol uses the queries' defect labels to pick the references: it measures what a
    matching abnormal example is worth, not what a user without labels would get (the default,
    label-free protocol of :func:`evaluate`).
    """
    parts, scores, episodes = [], [], []
    for category, defect, view in tqdm(list(type_matched_views(frame, categories)), unit="type",
                                       desc=f"{dataset} {method.name} type-matched", disable=not progress):
        result = evaluate(view, method, dataset, shots, seeds, abnormal_shots, "real", [category], progress=False)
        parts.append(result.tidy.assign(defect=defect))
        scores.append(result.scores.assign(reference_defect=defect))
        episodes += result.episodes
    per_type = pd.concat(parts, ignore_index=True)
    tidy = per_type.groupby(TIDY_COLUMNS[:-1], as_index=False, sort=False)["value"].mean()[TIDY_COLUMNS]
    return StudyResult(tidy=tidy, episodes=episodes, scores=pd.concat(scores, ignore_index=True), per_type=per_type)


def type_matched_views(frame: pd.DataFrame, categories: Sequence[str] | None = None):
    """``(category, defect type, view)``: the category's normal images and that type's anomalies."""
    categories = list(categories) if categories is not None else sorted(frame["category"].unique())
    for category in categories:
        rows = frame[frame["category"] == category]
        types = sorted(rows.loc[(rows["split"] == "test") & (rows["label"] == 1), "defect"].astype(str).unique())
        for defect in types:
            keep = (frame["category"] == category) & ((frame["label"] == 0) | (frame["defect"].astype(str) == defect))
            yield category, defect, frame[keep]


def prefetch(requests: Sequence[dict], progress: bool = True, workers: int | None = None) -> None:
    """Compute every missing cell of several :func:`run_evaluation` calls at once (one schedule), so that
    the calls themselves then read their cells from the store.

    Args:
        requests: keyword arguments of :func:`run_evaluation` (``dataset``, ``method``, ``shots``,
            ``seeds``, ``abnormal_shots``, ``abnormal_source``, ``categories``, ``max_per_group``,
            ``protocol``, ``method_params``); ``method`` must be a ready Method or a name.
    """
    from gadlib.data.load import load_dataset, subsample
    from gadlib.methods import create_method

    evaluations, loaded = [], {}
    for request in requests:
        request = dict(request)
        where = (request["dataset"], request.get("max_per_group"))
        if where not in loaded:           # a notebook asks for the same few targets many times
            name, frame = load_dataset(request["dataset"])
            loaded[where] = name, subsample(frame, request.get("max_per_group"))
        name, frame = loaded[where]
        method = request.get("method", "knn")
        if isinstance(method, str):
            method = create_method(method, **dict(request.get("method_params") or {}, progress=False))
        common = dict(method=method, dataset=name, shots=request.get("shots", (1, 2, 4, 8)),
                      seeds=request.get("seeds", (0, 1, 2)), abnormal_shots=request.get("abnormal_shots", 0))
        if request.get("protocol", "label-free") == "type-matched":
            evaluations += [dict(common, frame=view, categories=[category])
                            for category, _, view in type_matched_views(frame, request.get("categories"))]
        else:
            evaluations.append(dict(common, frame=frame, categories=request.get("categories"),
                                    abnormal_source=request.get("abnormal_source", "real")))
    evaluate_many(evaluations, progress, workers=workers, results=False)


def run_evaluation(dataset: str, method: str | Method = "knn", shots: Sequence[int] = (1, 2, 4, 8),
                   seeds: Sequence[int] = (0, 1, 2), out: str | Path | None = None,
                   method_params: dict | None = None, checkpoint: str | Path | None = None,
                   abnormal_shots: int = 0, abnormal_source: str = "real",
                   categories: Sequence[str] | None = None, max_per_group: int | None = None,
                   protocol: str = "label-free", progress: bool = True, write_scores: bool = True) -> StudyResult:
    """Load a dataset, build (or load) a method, evaluate it and write a run folder.

    This is what ``gad evaluate`` and the notebooks call, so both give the same numbers.

    Args:
        dataset: a dataset spec (see :func:`gadlib.data.load.load_dataset`).
        method: registered method name, or a ready Method.
        shots, seeds, abnormal_shots, abnormal_source, categories: see :func:`evaluate`.
        protocol: ``"label-free"`` (:func:`evaluate`) or ``"type-matched"`` (:func:`evaluate_type_matched`;
            real abnormal references only).
        out: run folder to write (atomically); ``None`` writes nothing.
        method_params: hyper-parameters for a method given by name.
        checkpoint: a saved method to load instead of creating one.
        max_per_group: subsample to at most this many images per (category, split, label) — for
            previews and tests only, never for reported numbers.
        progress: show progress bars.
        write_scores: also write the per-query scores (``scores.csv.gz``) into ``out``; the study's
            notebooks leave them out of ``results/`` (the result store keeps them).
    """
    from gadlib.data.load import load_dataset, subsample
    from gadlib.methods import create_method
    from gadlib.methods.base import Method as MethodBase
    from gadlib.results import atomic_folder, write_run

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got '{protocol}'")
    if protocol == "type-matched" and abnormal_source != "real":
        raise ValueError("the type-matched protocol draws real abnormal references of the query's defect type; "
                         "use abnormal_source='real' (or the label-free protocol for simulated references)")
    name, frame = load_dataset(dataset)
    frame = subsample(frame, max_per_group)
    params = dict(method_params or {}, progress=progress)
    if checkpoint is not None:
        model = MethodBase.load(checkpoint, **params)  # e.g. normalization=...; a backbone change is refused
    elif isinstance(method, str):
        model = create_method(method, **params)
    else:
        model = method
    record = dict(dataset=dataset, dataset_name=name, method=model.name, config=model.config_label(),
                  method_params=model.get_params(), checkpoint=str(checkpoint) if checkpoint else None,
                  shots=list(shots), seeds=list(seeds),
                  abnormal_shots=abnormal_shots, abnormal_source=abnormal_source,
                  categories=list(categories) if categories else None, max_per_group=max_per_group,
                  protocol=protocol)

    def run() -> StudyResult:
        if protocol == "type-matched":
            return evaluate_type_matched(frame, model, name, shots, seeds, abnormal_shots, categories, progress)
        return evaluate(frame, model, name, shots, seeds, abnormal_shots, abnormal_source, categories, None, progress)

    if out is None:
        return run()
    with atomic_folder(out) as folder:
        result = run()
        cache = getattr(model, "feature_cache", None)
        if cache is not None:
            record["backbone_key"] = cache().backbone.key()
        write_run(folder, result, record, write_scores)
    return result
