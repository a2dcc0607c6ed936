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


# -- training-free baselines and fusion: chosen on the six source categories -------------------------------
SOURCE_CATEGORIES = TRAIN_CATEGORIES + HELD_OUT_CATEGORIES      # training-free: nothing is trained on them


def with_global_anomalies(frame: pd.DataFrame, categories: Sequence[str], out_dir=None,
                          kinds: Sequence[str] | None = None) -> pd.DataFrame:
    """``frame`` restricted to ``categories``, plus one globally changed copy of each normal test image per
    kind (:func:`gadlib.data.simulate.global_change`; label 1, defect ``"global: <kind>"``, no mask).

    The copies are written once to ``out_dir`` (default ``<feature cache>/global_anomalies``), named by a
    digest of the source file and the kind, so re-runs write nothing and cached features stay valid.
    """
    import hashlib
    import os
    from pathlib import Path

    from PIL import Image

    from gadlib.cache import default_cache_dir
    from gadlib.data.images import load_rgb
    from gadlib.data.simulate import GLOBAL_CHANGES, global_change

    kinds = list(GLOBAL_CHANGES if kinds is None else kinds)
    out = Path(out_dir) if out_dir is not None else default_cache_dir() / "global_anomalies"
    out.mkdir(parents=True, exist_ok=True)
    kept = frame[frame["category"].isin(list(categories))]
    if kept.empty:
        raise ValueError(f"with_global_anomalies: no rows for categories {list(categories)}")
    rows = []
    for _, row in kept[(kept["split"] == "test") & (kept["label"] == 0)].iterrows():
        source = Path(row["image_path"])
        for kind in kinds:
            stem = hashlib.sha256(source.read_bytes() + f"|{kind}".encode()).hexdigest()[:20]
            target = out / f"{stem}.png"
            if not target.is_file():
                scratch = target.with_name(f".{stem}.tmp{os.getpid()}.png")
                Image.fromarray(global_change(load_rgb(source), kind)).save(scratch)
                os.replace(scratch, target)
            rows.append(dict(row, image_path=str(target), mask_path=None, label=1, defect=f"global: {kind}"))
    return pd.concat([kept, pd.DataFrame(rows)], ignore_index=True)


def validate_training_free(configs: Mapping[str, tuple[str, dict]], frame: pd.DataFrame, dataset: str,
                           categories: Sequence[str] = SOURCE_CATEGORIES, shots: Sequence[int] = (1, 2, 4, 8),
                           seeds: Sequence[int] = (0, 1, 2), progress: bool = True,
                           workers: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training-free configurations (label -> (method, hyper-parameters)) on the same draws of ``categories``:
    tidy rows and per-query scores, ``config`` / ``method`` naming each configuration's label."""
    from gadlib.methods import create_method, needs_training
    from gadlib.study import evaluate_many

    trained = [label for label, (name, _) in configs.items() if needs_training(name)]
    if trained:
        raise ValueError(f"validate_training_free: {trained} need training; use validate()")
    requests = [dict(frame=frame, method=create_method(name, **params, progress=progress), dataset=dataset,
                     shots=list(shots), seeds=list(seeds), categories=list(categories))
                for name, params in configs.values()]
    results = evaluate_many(requests, progress=progress, workers=workers)
    tidy = pd.concat([r.tidy.assign(config=label) for label, r in zip(configs, results)], ignore_index=True)
    scores = pd.concat([r.scores.assign(method=label) for label, r in zip(configs, results)], ignore_index=True)
    return tidy, scores


def defect_family(defect: pd.Series) -> pd.Series:
    """``"global"`` for the simulated global anomalies, ``"local"`` for every other defect (normal: ``"good"``)."""
    return defect.where(defect == "good", defect.astype(str).str.startswith("global").map({True: "global",
                                                                                           False: "local"}))


def fusion_validation(method, frame: pd.DataFrame, dataset: str, rules: Mapping[str, dict],
                      categories: Sequence[str] | None = None, shots: Sequence[int] = (2, 4, 8),
                      seeds: Sequence[int] = (0, 1, 2), progress: bool = True) -> pd.DataFrame:
    """Per-query fused scores of ``method`` under each fusion rule (label -> :func:`gadlib.kernels.fusion.fuse`
    keyword arguments; ``None`` = the method's own score), with the study's score columns (``method`` = the
    rule's label), for :func:`gadlib.results.defect_auroc`. The channels are computed once per draw
    (:meth:`~gadlib.methods.features.BackboneFeatures.fusion_channels`) and every rule reuses them.
    """
    from tqdm.auto import tqdm

    from gadlib.data.references import sample_episode
    from gadlib.kernels.fusion import fuse
    from gadlib.methods.base import References

    shots = sorted(set(int(k) for k in shots))
    if shots[0] < 2:
        raise ValueError(f"fusion needs k >= 2 (leave-one-out), got shots {shots}")
    categories = sorted(frame["category"].unique()) if categories is None else list(categories)
    by_path = frame.set_index("image_path")
    parts = []
    draws = [(c, s) for c in categories for s in seeds]
    for category, seed in tqdm(draws, desc="fusion channels", disable=not progress, leave=False):
        episode = sample_episode(frame, category, shots[-1], seed, dataset=dataset)
        queries = list(episode.queries)
        references = References.from_episode(episode)
        own = method.with_params(fusion="none", progress=False)
        channels = own.fusion_channels(queries, references, own.predict_shots(queries, references, shots, False))
        info = by_path.loc[queries]
        for k in shots:
            for label, rule in rules.items():
                score = channels[k][0][0] if rule is None else fuse(channels[k], **rule)
                parts.append(pd.DataFrame(dict(dataset=dataset, category=category, domain=info["domain"].to_numpy(),
                                               method=label, shots=k, seed=seed, image_path=queries,
                                               label=info["label"].to_numpy(), defect=info["defect"].to_numpy(),
                                               score=score.numpy())))
    return pd.concat(parts, ignore_index=True)


def family_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Image AUROC (x100) per rule (``method``), defect family (local / global, :func:`defect_family`) and k:
    each family's anomalies against all normal queries of a draw, macro over categories, mean over seeds."""
    from sklearn.metrics import roc_auc_score

    scores = scores.assign(family=defect_family(scores["defect"]))
    rows = []
    for (method, k, seed, category), group in scores.groupby(["method", "shots", "seed", "category"], sort=False):
        normal = group[group["label"] == 0]
        for family, anomalous in group[group["label"] == 1].groupby("family"):
            both = pd.concat([normal, anomalous])
            rows.append(dict(method=method, shots=k, seed=seed, category=category, family=family,
                             value=100 * roc_auc_score(both["label"], both["score"])))
    table = pd.DataFrame(rows).groupby(["method", "family", "shots", "seed"], sort=False)["value"].mean()
    return table.groupby(["method", "family", "shots"], sort=False).mean().unstack("shots").round(1)


def choose_fusion(table: pd.DataFrame, candidates: Sequence[str], alone: str = "local score alone",
                  tolerance: float = 1.0) -> str:
    """The fusion rule to keep, from :func:`family_table` rows: first, do no harm -- among ``candidates`` whose
    local-defect AUROC is within ``tolerance`` points of ``alone`` (the local score without fusion) at every
    k, the one with the best mean AUROC on the global anomalies (ties: the first); ``alone`` when none is.

    Local evidence is what every method here is built on; the global channel may only add to it.
    """
    missing = [c for c in [alone, *candidates] if (c, "local") not in table.index or (c, "global") not in table.index]
    if missing:
        raise ValueError(f"choose_fusion: no local and global rows for {missing}")
    floor = table.loc[(alone, "local")] - tolerance
    harmless = [c for c in candidates if (table.loc[(c, "local")] >= floor).all()]
    if not harmless:
        return alone
    best = max(table.loc[(c, "global")].mean() for c in harmless)
    return next(c for c in harmless if table.loc[(c, "global")].mean() >= best)
