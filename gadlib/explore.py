"""Residual feature spaces, measured: patch samples in several spaces, and how well they align.

Used by ``notebooks/10_residual_space.ipynb``. Three steps:

1. :func:`patch_spaces` -- for query images of several datasets, every patch in five spaces: the initial
   features, the residual (patch minus its nearest patch among k normal references of its own category),
   and the residual after VOD reading (A), (B), and both. Each patch carries its dataset, category,
   domain and a label: normal (a patch of a normal image) or abnormal (a cell its defect mask covers
   at least half); the other patches of anomalous images are left out as ambiguous.
2. :func:`separability` -- how well a linear classifier tells groups apart, cross-validated *by image*
   (patches of one image are never split between training and test).
3. :func:`alignment_table` -- per space: category and domain separability among normal patches and among
   abnormal patches (lower = better aligned), normal-vs-abnormal separability (higher = better), and
   the transfer of a normal-vs-abnormal classifier from one domain to the others (VOD's claim, directly).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

SPACES = ("features", "residual", "residual, VOD (A)", "residual, VOD (B)", "residual, VOD (A+B)")
# What a cached sample, embedding or table depends on (gadlib.store.code_digest parts).
EXPLORE_CODE = ("explore.py", "backbones.py", "cache.py", "data", "kernels", "methods")


@dataclass
class PatchSample:
    """Patches in several spaces: ``spaces[name]`` is ``(P, D)``; ``patches`` has one row per patch."""

    spaces: dict[str, np.ndarray]
    patches: pd.DataFrame


def patch_spaces(frames: dict[str, pd.DataFrame], method, shots: int = 4, per_group: int = 8,
                 normal_cells: int = 12, synthetic: bool = True, seed: int = 0, abnormal_coverage: float = 0.5,
                 channel_values: str = "gaussian", position_mode: str = "magnitude", cache: bool = True) -> PatchSample:
    """Patches of sampled query images of every dataset in :data:`SPACES`.

    Args:
        frames: name -> schema table (the name becomes the patch's ``dataset``).
        method: a backbone-feature method giving ``patch_features(paths)`` (e.g. ``knn``); its own VOD
            settings must be off.
        shots: normal references per category (drawn from its normal ``train`` images).
        per_group: test images sampled per (category, label); anomalous images without a mask are
            skipped (their abnormal patches cannot be told from the normal ones).
        normal_cells: cells sampled per normal image (all abnormal cells are kept).
        synthetic: also make one cut-and-paste anomaly on each sampled normal image (``kind``
            ``"synthetic"``), so every dataset has abnormal patches, real ones or not.
        seed: sampling seed.
        abnormal_coverage: a cell of an anomalous image is abnormal when its mask covers at least this.
        channel_values, position_mode: the VOD readings (A) and (B) (see ``gadlib.kernels.vod``).
        cache: keep the sample in the cache (:func:`gadlib.store.memoized`), addressed by the frames, the bytes
            of their images and masks, the method's identity, these arguments and the code, so a re-run
            of the residual-space notebook reads it back instead of recomputing it.

    Returns:
        A :class:`PatchSample`; ``patches`` columns: dataset, category, domain, image, kind
        (``normal`` / ``real`` / ``synthetic``), status (``normal`` / ``abnormal``).
    """
    arguments = dict(shots=shots, per_group=per_group, normal_cells=normal_cells, synthetic=synthetic, seed=seed,
                     abnormal_coverage=abnormal_coverage, channel_values=channel_values, position_mode=position_mode)
    if cache:
        from gadlib.store import files_digest, memoized, method_identity

        config = dict(arguments, method=method_identity(method), frames={
            name: dict(rows=frame.astype(str).to_numpy().tolist(), columns=list(frame.columns),
                       files=files_digest(frame["image_path"].tolist() + frame["mask_path"].tolist()))
            for name, frame in frames.items()})
        return memoized("patch_spaces", config, lambda: patch_spaces(frames, method, **arguments, cache=False),
                        code=EXPLORE_CODE)
    from gadlib.cache import default_cache_dir
    from gadlib.data.references import simulate_references
    from gadlib.methods.features import mask_coverage
    from gadlib.kernels.patches import to_patches
    from gadlib.kernels.residual import nearest_neighbour
    from gadlib.kernels.vod import channel_vod_grid, position_vod_any

    if getattr(method, "vod_channel", "none") != "none":
        raise ValueError("patch_spaces applies the readings itself: give it a method with vod_channel='none'")
    rng = np.random.default_rng(seed)
    spaces: dict[str, list[np.ndarray]] = {name: [] for name in SPACES}
    rows = []
    for dataset, frame in frames.items():
        for category, rows_of in frame.groupby("category", sort=True):
            pool = sorted(rows_of.loc[(rows_of["split"] == "train") & (rows_of["label"] == 0), "image_path"])
            if len(pool) < shots:
                raise ValueError(f"{dataset}/{category}: {shots} references asked for, the pool holds {len(pool)}")
            refs = [pool[i] for i in rng.permutation(len(pool))[:shots]]
            test = rows_of[(rows_of["split"] == "test") & ((rows_of["label"] == 0) | rows_of["mask_path"].notna())]
            picks = pd.concat([group.iloc[rng.permutation(len(group))[:per_group]]
                               for _, group in test.groupby("label", sort=True)])
            paths, masks = picks["image_path"].tolist(), picks["mask_path"].tolist()
            kinds = np.where(picks["label"].to_numpy() == 0, "normal", "real").tolist()
            if synthetic:
                normal = [p for p, k in zip(paths, kinds) if k == "normal"]
                made, made_masks = simulate_references(normal, seed, f"explore/{dataset}/{category}",
                                                       default_cache_dir() / "simulated" / "explore")
                paths, masks, kinds = paths + made, masks + made_masks, kinds + ["synthetic"] * len(made)
            method.feature_cache().ensure(refs + paths)
            raw_refs, raw = method.patch_features(refs), method.patch_features(paths)
            side = raw.shape[-2:]
            cells = side[0] * side[1]
            coverage = mask_coverage(masks, paths, method.image_size, side, method.cell_offset(side[-1]))
            coverage = coverage.numpy()
            keep = np.zeros((len(paths), cells), dtype=bool)
            for i, kind in enumerate(kinds):
                if kind == "normal":
                    keep[i, rng.permutation(cells)[:normal_cells]] = True
                else:
                    keep[i] = coverage[i] >= min(abnormal_coverage, coverage[i].max())
            keep = keep.flatten()
            residual = {}
            for a in (False, True):
                query = channel_vod_grid(raw, channel_values) if a else raw
                bank = to_patches(channel_vod_grid(raw_refs, channel_values) if a else raw_refs)
                patches = to_patches(query)[keep]
                residual[a] = patches - bank[nearest_neighbour(patches, bank, "l2")[1]]
            per_space = {"features": to_patches(raw)[keep], "residual": residual[False],
                         "residual, VOD (A)": residual[True],
                         "residual, VOD (B)": position_vod_any(residual[False], position_mode),
                         "residual, VOD (A+B)": position_vod_any(residual[True], position_mode)}
            for name, values in per_space.items():
                spaces[name].append(values.cpu().numpy())
            image = np.repeat(np.arange(len(paths)), cells)[keep]
            domain = dict(zip(picks["image_path"], picks["domain"].astype(str)))
            default_domain = str(picks["domain"].iloc[0])
            rows.append(pd.DataFrame(dict(dataset=dataset, category=category,
                                          domain=[domain.get(paths[i], default_domain) for i in image],
                                          image=[paths[i] for i in image], kind=[kinds[i] for i in image])))
    patches = pd.concat(rows, ignore_index=True)
    patches["status"] = np.where(patches["kind"] == "normal", "normal", "abnormal")
    return PatchSample({name: np.concatenate(parts) for name, parts in spaces.items()}, patches)


def separability(x: np.ndarray, y: Sequence, groups: Sequence, folds: int = 5, seed: int = 0,
                 metric: str = "balanced_accuracy") -> float:
    """Cross-validated score of a standardised logistic regression predicting ``y`` from ``x``.

    Folds never split a group (an image's patches stay together). ``metric``: ``"balanced_accuracy"``
    (1 / classes = chance) or ``"auroc"`` (two classes; 0.5 = chance). ``nan`` with fewer than two
    classes or fewer groups than needed.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y, groups = np.asarray(y), np.asarray(groups)
    if len(x) != len(y) or len(y) != len(groups):
        raise ValueError(f"x, y and groups differ in length: {len(x)}, {len(y)}, {len(groups)}")
    classes = np.unique(y)
    if len(classes) < 2:
        return float("nan")
    per_class_groups = min(len(np.unique(groups[y == c])) for c in classes)
    folds = min(folds, per_class_groups)
    if folds < 2:
        return float("nan")
    if metric == "auroc" and len(classes) != 2:
        raise ValueError("metric='auroc' needs exactly two classes")
    predictions = np.zeros(len(y), dtype=float if metric == "auroc" else y.dtype)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(x[train], y[train])
        predictions[test] = model.predict_proba(x[test])[:, 1] if metric == "auroc" else model.predict(x[test])
    if metric == "auroc":
        return float(roc_auc_score(y == classes[1], predictions))
    return float(balanced_accuracy_score(y, predictions))


def transfer_auroc(x: np.ndarray, label: np.ndarray, train: np.ndarray) -> float:
    """AUROC on the ``~train`` patches of a normal-vs-abnormal classifier fitted on the ``train`` ones."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    test = ~train
    if len(np.unique(label[train])) < 2 or len(np.unique(label[test])) < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], label[train])
    return float(roc_auc_score(label[test], model.predict_proba(x[test])[:, 1]))


def alignment_table(sample: PatchSample, seed: int = 0, cache: bool = True) -> pd.DataFrame:
    """One row per space: the alignment measurements of the module docstring.

    Columns (balanced accuracy, chance = 1 / groups; lower = better aligned):
    ``category, normal`` and ``dataset, normal`` -- telling categories / datasets apart among normal
    patches; the same ``, abnormal``. Columns (AUROC, 0.5 = chance): ``real vs synthetic, abnormal``
    (lower = a synthetic anomaly stands in better for a real one), ``normal vs abnormal`` (higher =
    better), ``synthetic -> real`` (a normal-vs-abnormal classifier fitted with synthetic anomalies,
    tested on real ones) and ``<dataset> -> rest`` (fitted on one dataset's patches, tested on the others').
    ``cache``: keep the table in the cache, addressed by the sample's bytes, the seed and the code.
    """
    if cache:
        from gadlib.store import memoized

        return memoized("alignment_table", dict(sample=_sample_digest(sample), seed=seed, sklearn=_sklearn()),
                        lambda: alignment_table(sample, seed, cache=False), code=EXPLORE_CODE)
    p = sample.patches
    image = p["image"].to_numpy()
    status = (p["status"] == "abnormal").to_numpy().astype(int)
    # Synthetic -> real: fit on the synthetic anomalies + the normal patches of every other image (by
    # path), test on the real anomalies + the normal patches of the remaining images.
    normal_half = _half(image)
    kind = p["kind"].to_numpy()
    fit = (kind == "synthetic") | ((kind == "normal") & normal_half)
    test = (kind == "real") | ((kind == "normal") & ~normal_half)
    out = []
    for name, x in sample.spaces.items():
        row = {"space": name}
        for which in ("normal", "abnormal"):
            part = (p["status"] == which).to_numpy()
            row[f"category, {which}"] = separability(x[part], (p["dataset"] + "/" + p["category"])[part].to_numpy(),
                                                      image[part], seed=seed)
            row[f"dataset, {which}"] = separability(x[part], p["dataset"][part].to_numpy(), image[part], seed=seed)
        abnormal = status == 1
        row["real vs synthetic, abnormal"] = separability(x[abnormal], (p["kind"][abnormal] == "real").to_numpy(),
                                                           image[abnormal], seed=seed, metric="auroc")
        row["normal vs abnormal"] = separability(x, status, image, seed=seed, metric="auroc")
        row["synthetic -> real"] = transfer_auroc(x[fit | test], status[fit | test], fit[fit | test])
        for dataset in sorted(p["dataset"].unique()):
            row[f"{dataset} -> rest"] = transfer_auroc(x, status, (p["dataset"] == dataset).to_numpy())
        out.append(row)
    return pd.DataFrame(out)


def _sklearn() -> str:
    import sklearn

    return sklearn.__version__


def _sample_digest(sample: PatchSample) -> str:
    from gadlib.store import array_digest

    return array_digest(*[sample.spaces[name] for name in sorted(sample.spaces)],
                        sample.patches.astype(str).to_numpy())


def _half(images: np.ndarray) -> np.ndarray:
    """A fixed half of the images (every other distinct image, sorted by path), per patch."""
    names = sorted(set(images))
    first = {name: i % 2 == 0 for i, name in enumerate(names)}
    return np.array([first[i] for i in images])


def embed(x: np.ndarray, how: str = "pca", seed: int = 0, cache: bool = True) -> np.ndarray:
    """``(P, D)`` -> ``(P, 2)``: ``"pca"``, ``"tsne"`` or ``"umap"`` (if umap-learn is installed), on
    standardised features. ``cache``: keep the result in the cache, addressed by the bytes of ``x``,
    ``how``, ``seed`` and the code (a t-SNE takes tens of seconds)."""
    if how not in ("pca", "tsne", "umap"):
        raise ValueError(f"how must be 'pca', 'tsne' or 'umap', got '{how}'")
    if cache:
        from gadlib.store import array_digest, memoized

        return memoized(f"embed_{how}", dict(x=array_digest(x), seed=seed, sklearn=_sklearn()),
                        lambda: embed(x, how, seed, cache=False), code=EXPLORE_CODE)
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(x)
    if how == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(z)
    if how == "tsne":
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        z = PCA(n_components=min(50, z.shape[1], len(z)), random_state=seed).fit_transform(z)
        return TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(z) - 1) / 3), random_state=seed).fit_transform(z)
    if how == "umap":
        try:
            import umap
        except ImportError as error:
            raise ImportError("embed(how='umap') needs umap-learn: pip install umap-learn") from error
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(z)
    raise ValueError(f"how must be 'pca', 'tsne' or 'umap', got '{how}'")
