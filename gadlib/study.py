"""Run methods over datasets, categories, shots and seeded reference draws -> tidy result rows.

Every episode is drawn (and every mask checked against its image) *before* any scoring starts, so
bad input fails fast and nothing is half-computed. For one seed the normal references are nested
across k, and methods score all k in one call (:meth:`Method.predict_shots`).
"""
from __future__ import annotations

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

TIDY_COLUMNS = ["dataset", "category", "domain", "method", "shots", "abnormal_shots", "seed", "metric", "value"]


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
             progress: bool = True) -> StudyResult:
    """Evaluate ``method`` on every category of ``frame`` for every k in ``shots`` and every seed.

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
    """
    categories = list(categories) if categories is not None else sorted(frame["category"].unique())
    shots = sorted(set(int(k) for k in shots))
    if not shots or not seeds:
        raise ValueError("evaluate needs at least one k in shots and one seed")
    plan = []  # (category, seed, episodes by k), all drawn up front so errors come before work
    for category in categories:
        for seed in seeds:
            episodes = {k: sample_episode(frame, category, k, int(seed), abnormal_shots, abnormal_source,
                                          dataset, simulated_dir) for k in shots}
            plan.append((category, int(seed), episodes))
    lookup = frame.set_index("image_path")
    test = frame[frame["category"].isin(categories) & (frame["split"] == "test")]
    check_mask_sizes(test)
    categories_with_masks = set(test.loc[test["mask_path"].notna(), "category"])
    tidy_rows, score_rows, all_episodes = [], [], []
    masks_for: dict[str, tuple[list[str], np.ndarray]] = {}
    for category, seed, episodes in tqdm(plan, desc=f"{dataset} {method.name}", unit="draw", disable=not progress):
        longest = episodes[shots[-1]]
        if any(ep.queries != longest.queries or ep.abnormal_refs != longest.abnormal_refs for ep in episodes.values()):
            raise RuntimeError(f"{dataset}/{category}: queries or abnormal references differ across k; "
                               "one predict_shots call cannot score them")
        queries = lookup.loc[longest.queries]
        with_pixel = category in categories_with_masks
        scores_by_k = method.predict_shots(longest.queries, References.from_episode(longest), shots, with_pixel)
        masks = None
        if with_pixel:
            # Queries repeat across seeds (references come from the pool): read their masks once.
            if masks_for.get(category, (None,))[0] != longest.queries:
                size = next(iter(scores_by_k.values())).pixel.shape[-1]
                masks_for[category] = (longest.queries, load_masks(queries["mask_path"].tolist(), longest.queries, size))
            masks = masks_for[category][1]
        labels = queries["label"].to_numpy()
        for k, scores in scores_by_k.items():
            all_episodes.append(episodes[k])
            for domain, keep in _domain_groups(queries):
                if len(np.unique(labels[keep])) < 2:
                    continue  # AUROC is undefined without both normal and anomalous queries
                values = image_metrics(labels[keep], scores.image[keep])
                if masks is not None and masks[keep].any():
                    values.update(pixel_metrics(masks[keep], scores.pixel[keep]))
                base = dict(dataset=dataset, category=category, domain=domain, method=method.name, shots=k,
                            abnormal_shots=abnormal_shots, seed=seed)
                tidy_rows += [dict(base, metric=name, value=float(v)) for name, v in values.items()]
            score_rows.append(pd.DataFrame(dict(
                dataset=dataset, category=category, domain=queries["domain"].to_numpy(), method=method.name,
                shots=k, abnormal_shots=abnormal_shots, seed=seed, image_path=longest.queries,
                label=labels, defect=queries["defect"].to_numpy(), score=scores.image)))
    return StudyResult(tidy=pd.DataFrame(tidy_rows, columns=TIDY_COLUMNS), episodes=all_episodes,
                       scores=pd.concat(score_rows, ignore_index=True))


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
    categories = list(categories) if categories is not None else sorted(frame["category"].unique())
    parts, scores, episodes = [], [], []
    for category in categories:
        rows = frame[frame["category"] == category]
        types = sorted(rows.loc[(rows["split"] == "test") & (rows["label"] == 1), "defect"].astype(str).unique())
        for defect in tqdm(types, desc=f"{dataset}/{category} {method.name} type-matched", unit="type",
                           disable=not progress):
            keep = (frame["category"] == category) & ((frame["label"] == 0) | (frame["defect"].astype(str) == defect))
            result = evaluate(frame[keep], method, dataset, shots, seeds, abnormal_shots, "real", [category],
                              progress=False)
            parts.append(result.tidy.assign(defect=defect))
            scores.append(result.scores.assign(reference_defect=defect))
            episodes += result.episodes
    per_type = pd.concat(parts, ignore_index=True)
    tidy = per_type.groupby(TIDY_COLUMNS[:-1], as_index=False, sort=False)["value"].mean()[TIDY_COLUMNS]
    return StudyResult(tidy=tidy, episodes=episodes, scores=pd.concat(scores, ignore_index=True), per_type=per_type)


def run_evaluation(dataset: str, method: str | Method = "knn", shots: Sequence[int] = (1, 2, 4, 8),
                   seeds: Sequence[int] = (0, 1, 2), out: str | Path | None = None,
                   method_params: dict | None = None, checkpoint: str | Path | None = None,
                   abnormal_shots: int = 0, abnormal_source: str = "real",
                   categories: Sequence[str] | None = None, max_per_group: int | None = None,
                   protocol: str = "label-free", progress: bool = True) -> StudyResult:
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
    record = dict(dataset=dataset, dataset_name=name, method=model.name, method_params=model.get_params(),
                  checkpoint=str(checkpoint) if checkpoint else None, shots=list(shots), seeds=list(seeds),
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
        write_run(folder, result, record)
    return result
