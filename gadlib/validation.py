"""Choosing defaults on source data held out of training, never on a target.

A trained method's hyper-parameters (training length, residual form, ...) are chosen here: each
configuration is trained on some of the procedural source categories (:data:`TRAIN_CATEGORIES`) and
evaluated on the others (:data:`HELD_OUT_CATEGORIES`), which no configuration ever saw, with the same
reference draws for every configuration and for the best training-free baseline. The targets of the
study (ELPV, textile, the unseen synthetic categories) are not touched.

:func:`validate` returns tidy rows (the study's columns, ``config`` naming the configuration);
:func:`validation_table` the mean ± std over seeds per configuration and k, with each configuration's
paired difference to the first one (the current default). :func:`choose` applies a rule stated before
the numbers are seen: the cheaper candidate is kept unless it loses more than ``tolerance`` of mean
image AUROC. ``notebooks/05_source_validation.ipynb`` runs the committed checks (``make validate``).
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import pandas as pd

from gadlib.results import format_mean_std

# The study's six source categories, split in two: four textures/objects to train on and one texture and
# one object held out (the split used since the first round for vod's and NAGL's source checks).
TRAIN_CATEGORIES = ("brushed_metal", "wood_grain", "tile", "bottle_top")
HELD_OUT_CATEGORIES = ("woven_fabric", "washer")
BASELINE = "kNN (training-free)"


def validate(method: str, configs: Mapping[str, dict], shots: Sequence[int] = (1, 4), seeds: Sequence[int] = (0, 1, 2),
             source: str = "synth", train_categories: Sequence[str] = TRAIN_CATEGORIES,
             held_out: Sequence[str] = HELD_OUT_CATEGORIES, baseline: Mapping[str, dict] | None = None,
             progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Train every configuration on ``train_categories`` and evaluate it on ``held_out``.

    Args:
        method: registered name of a trained method.
        configs: label -> hyper-parameters (``{}`` = the defaults). The first is the reference of the
            paired differences in :func:`validation_table`. Configurations that differ only in the method's
            ``scoring_params`` share one trained model.
        shots, seeds: k and reference draws; the draws are the same for every configuration.
        source: dataset spec of the source (its categories are split, never mixed).
        baseline: label -> kNN parameters of training-free baselines scored on the same draws
            (default: kNN with its defaults, :data:`BASELINE`).
        workers: processes for trainings and cells (:func:`gadlib.parallel.layout`).
    Returns:
        Tidy rows with ``config`` = the label of each configuration (and of each baseline).
    """
    from gadlib.data.load import load_dataset
    from gadlib.methods import create_method
    from gadlib.methods.base import method_class
    from gadlib.study import evaluate_many
    from gadlib.training import train_all

    if not configs:
        raise ValueError("validate: give at least one configuration")
    overlap = set(train_categories) & set(held_out)
    if overlap:
        raise ValueError(f"validate: categories both trained on and held out: {sorted(overlap)}")
    name, frame = load_dataset(source)
    missing = sorted((set(train_categories) | set(held_out)) - set(frame["category"]))
    if missing:
        raise ValueError(f"validate: {source} has no categories {missing}")
    # Configurations that differ only in scoring rules share one trained model.
    scoring = set(getattr(method_class(method), "scoring_params", ()))
    trained = {json.dumps({k: v for k, v in sorted(params.items()) if k not in scoring}, default=str): None
               for params in configs.values()}
    jobs = [dict(method=method, source=source, categories=list(train_categories), params=json.loads(key))
            for key in trained]
    for key, (model, _) in zip(trained, train_all(jobs, progress=progress, workers=workers)):
        trained[key] = model
    models = []
    for params in configs.values():
        model = trained[json.dumps({k: v for k, v in sorted(params.items()) if k not in scoring}, default=str)]
        models.append(model.with_params(**{k: v for k, v in params.items() if k in scoring}))
    baseline = {BASELINE: {}} if baseline is None else dict(baseline)
    models += [create_method("knn", **params, progress=progress) for params in baseline.values()]
    labels = list(configs) + list(baseline)
    requests = [dict(frame=frame, method=model, dataset=name, shots=list(shots), seeds=list(seeds),
                     categories=list(held_out)) for model in models]
    results = evaluate_many(requests, progress=progress, workers=workers)
    return pd.concat([result.tidy.assign(config=label) for label, result in zip(labels, results)],
                     ignore_index=True)


def validation_table(tidy: pd.DataFrame, metric: str = "image_auroc") -> pd.DataFrame:
    """Per configuration (rows, in first-seen order) and k: mean ± std over seeds of ``metric`` (macro over
    held-out categories), and the paired difference to the first configuration (same draws), in points."""
    rows = tidy[tidy["metric"] == metric]
    if rows.empty:
        raise ValueError(f"no rows for metric '{metric}'")
    per_seed = rows.groupby(["config", "shots", "seed"], sort=False)["value"].mean().reset_index()
    order = list(dict.fromkeys(rows["config"]))
    reference = per_seed[per_seed["config"] == order[0]].set_index(["shots", "seed"])["value"]
    table = []
    for config in order:
        mine = per_seed[per_seed["config"] == config]
        line = {"configuration": config}
        for k, group in mine.groupby("shots"):
            values = group.set_index(["shots", "seed"])["value"]
            line[f"k={k}"] = format_mean_std(values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0)
            gain = (values - reference).dropna()
            line[f"Δ k={k}"] = f"{100 * gain.mean():+.1f}" if config != order[0] and len(gain) else ""
        table.append(line)
    return pd.DataFrame(table)


def choose(tidy: pd.DataFrame, candidates: Sequence[str], tolerance: float = 0.01,
           metric: str = "image_auroc") -> str:
    """The first (cheapest) of ``candidates`` whose mean ``metric`` over k and seeds is within ``tolerance``
    of the best candidate's: the rule that picks a default, fixed before the numbers are read."""
    rows = tidy[(tidy["metric"] == metric) & tidy["config"].isin(candidates)]
    means = rows.groupby("config")["value"].mean()
    absent = [c for c in candidates if c not in means.index]
    if absent:
        raise ValueError(f"choose: no '{metric}' rows for {absent}")
    best = means.max()
    return next(c for c in candidates if means[c] >= best - tolerance)
