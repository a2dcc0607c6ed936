"""The residual-space explorer behind ``notebooks/15_explorer.ipynb``: one episode, computed once, asked per click.

A :class:`PatchExplorer` draws one seeded episode of a dataset's category (k normal references, nested for
every smaller k, and a few queries), reads the patch features of all its images from the feature cache,
and then answers the questions of a person clicking around, each in well under a second on a CPU:

* :meth:`~PatchExplorer.nearest`: which reference patch is nearest to a query patch, how far, the residual's
  size, and what VOD's two readings make of it (:mod:`gadlib.kernels.vod`);
* :meth:`~PatchExplorer.score_map`: the nearest-normal map of a query for any k up to the drawn one, and
  :meth:`~PatchExplorer.method_map` the map of any named baseline or cached trained model (:func:`map_methods`);
* :meth:`~PatchExplorer.embedding`: a 2-D PCA of patches of the references and queries, with labels and
  where each came from, and :meth:`~PatchExplorer.thumbnail` to show one.

The notebook is only widgets on top of these methods; tests call them directly.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
import torch

from gadlib.data.images import load_masks, load_rgb
from gadlib.data.load import load_dataset
from gadlib.data.references import sample_episode
from gadlib.kernels.vod import channel_vod_grid, position_vod_any
from gadlib.methods import create_method

METRICS = ("cosine", "l2")
TRAINED = ("resad", "inctrl", "nagl", "vod")
STUDY_SOURCE = ("synth", ["brushed_metal", "woven_fabric", "wood_grain", "tile", "washer", "bottle_top"])


def map_methods(trained: bool = True) -> dict[str, tuple[str, dict]]:
    """The maps the explorer can show: every named training-free baseline, and each trained method whose
    default checkpoint on the study's source is already in the cache (never trained here)."""
    from gadlib.baselines import BASELINES
    from gadlib.training import checkpoint_path

    methods = {name: (method, dict(params)) for name, (method, params) in BASELINES.items()}
    if trained:
        for name in TRAINED:
            model = create_method(name, progress=False)
            path = checkpoint_path(name, model.get_params(), STUDY_SOURCE[0], STUDY_SOURCE[1],
                                   model.feature_cache().backbone.key())
            if path.with_suffix(".safetensors").is_file():
                methods[f"{name} (trained on the study's source)"] = (name, {})
    return methods


class PatchExplorer:
    """One episode of ``dataset``/``category`` in residual space.

    Args:
        dataset: dataset spec (:func:`gadlib.data.load.load_dataset`), e.g. ``"synth"`` or ``"elpv"``.
        category: one of its categories.
        shots: k, the most normal references (smaller k use the first ones: the draws are nested).
        seed: the draw.
        max_queries: queries kept, half normal and half anomalous where the category has both.
        metric: ``"cosine"`` (the study's best training-free kNN) or ``"l2"`` (the first round's).
        image_size: backbone input size (EfficientNet-Lite0, strides 8 and 16, on the coarser grid).
    """

    def __init__(self, dataset: str = "synth", category: str = "leather", shots: int = 4, seed: int = 0,
                 max_queries: int = 12, metric: str = "cosine", image_size: int = 224, progress: bool = False):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        self.dataset, self.category, self.shots, self.seed, self.metric = dataset, category, shots, seed, metric
        name, frame = load_dataset(dataset)
        episode = sample_episode(frame, category, shots, seed, dataset=name)
        labels = frame.set_index("image_path")
        queries = pd.DataFrame({"path": episode.queries})
        queries["label"] = labels.loc[queries["path"], "label"].to_numpy()
        queries["mask"] = labels.loc[queries["path"], "mask_path"].to_numpy()
        picked = queries.groupby("label").head(max(1, max_queries // queries["label"].nunique()))
        picked = picked.sort_values("label", ascending=False, kind="stable")       # anomalies first
        self.queries = picked.head(max_queries).reset_index(drop=True)
        self.references = list(episode.normal_refs)
        self.method = create_method("knn", metric=metric, image_size=image_size, progress=progress)
        grids = self.method.patch_features(self.references + list(self.queries["path"])).float()
        self.reference_grid, self.query_grid = grids[:shots], grids[shots:]
        self.side = grids.shape[-1]
        self.image_size = image_size

    # -- geometry --------------------------------------------------------------------------------------------
    def cell_of(self, x: float, y: float) -> tuple[int, int]:
        """The grid cell ``(row, col)`` under pixel ``(x, y)`` of an ``image_size`` view."""
        step = self.image_size / self.side
        return (int(np.clip(y // step, 0, self.side - 1)), int(np.clip(x // step, 0, self.side - 1)))

    def cell_box(self, row: int, col: int) -> tuple[float, float, float]:
        """``(x0, y0, side)`` of a cell in pixels of an ``image_size`` view (for drawing its box)."""
        step = self.image_size / self.side
        return col * step, row * step, step

    # -- distances -------------------------------------------------------------------------------------------
    def _bank(self, shots: int, grid: torch.Tensor | None = None) -> torch.Tensor:
        grid = self.reference_grid if grid is None else grid
        if not 1 <= shots <= self.shots:
            raise ValueError(f"shots must be 1..{self.shots} (the drawn references), got {shots}")
        return grid[:shots].permute(0, 2, 3, 1).reshape(-1, grid.shape[1])     # (k*H*W, D)

    def _distances(self, patches: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        if self.metric == "cosine":
            return 1 - torch.nn.functional.normalize(patches, dim=-1) @ torch.nn.functional.normalize(bank, dim=-1).T
        return torch.cdist(patches, bank)

    def score_map(self, query: int, shots: int | None = None) -> np.ndarray:
        """``(side, side)``: each patch of query ``query``'s distance to its nearest patch among the first
        ``shots`` references (the drawn k when ``None``)."""
        patches = self.query_grid[query].permute(1, 2, 0).reshape(-1, self.query_grid.shape[1])
        distances = self._distances(patches, self._bank(shots or self.shots)).min(dim=1).values
        return distances.reshape(self.side, self.side).numpy()

    def image_score(self, query: int, shots: int | None = None) -> float:
        """The query's image score: the mean of the top 1 % of its map (at least one cell)."""
        values = np.sort(self.score_map(query, shots).ravel())[::-1]
        return float(values[: max(1, int(round(0.01 * values.size)))].mean())

    def nearest(self, query: int, row: int, col: int, shots: int | None = None) -> dict:
        """The nearest reference patch to patch ``(row, col)`` of query ``query``, and its residual.

        Returns a dict: ``reference`` (index into :attr:`references`), ``ref_row``, ``ref_col``,
        ``distance`` (the map's value there), ``residual_norm`` (L2 norm of query minus nearest, in feature
        units), ``vod_a_norm`` (the same after reading (A): each image's channels replaced by Gaussian
        quantiles in their rank order, nearest patch searched again), ``vod_b`` (reading (B): the residual's
        magnitudes sorted across channels, largest first: how much the patch deviates, not in which channels).
        """
        shots = shots or self.shots
        if not (0 <= row < self.side and 0 <= col < self.side):
            raise ValueError(f"cell ({row}, {col}) is outside the {self.side} x {self.side} grid")
        patch = self.query_grid[query, :, row, col][None]
        bank = self._bank(shots)
        distances = self._distances(patch, bank)[0]
        index = int(distances.argmin())
        reference, rest = divmod(index, self.side * self.side)
        residual = patch[0] - bank[index]
        a_query = channel_vod_grid(self.query_grid[query][None], "gaussian")[0, :, row, col][None]
        a_bank = self._bank(shots, channel_vod_grid(self.reference_grid, "gaussian"))
        a_index = int(self._distances(a_query, a_bank)[0].argmin())
        vod_b = position_vod_any(residual[None], "magnitude")[0].abs().sort(descending=True).values
        return dict(reference=reference, ref_row=rest // self.side, ref_col=rest % self.side,
                    distance=float(distances[index]), residual_norm=float(residual.norm()),
                    vod_a_norm=float((a_query[0] - a_bank[a_index]).norm()), vod_b=vod_b.numpy())

    def method_map(self, name: str, query: int, shots: int | None = None) -> np.ndarray:
        """Query ``query``'s pixel map (``image_size`` square) by ``name`` of :func:`map_methods` with the first
        ``shots`` references; the method is built (or its checkpoint loaded) once."""
        from gadlib.methods.base import References

        methods = getattr(self, "_methods", None)
        if methods is None:
            methods = self._methods = {}
        if name not in methods:
            known = map_methods()
            if name not in known:
                raise ValueError(f"unknown map {name!r}; known: {list(known)}")
            method, params = known[name]
            if method in TRAINED:
                from gadlib.training import train_or_load

                methods[name] = train_or_load(method, STUDY_SOURCE[0], STUDY_SOURCE[1], progress=False)[0]
            else:
                methods[name] = create_method(method, **dict(params, image_size=self.image_size), progress=False)
        shots = shots or self.shots
        self._bank(shots)                                          # checks shots
        scores = methods[name].predict([self.queries["path"][query]], References(self.references[:shots]))
        return np.asarray(scores.pixel[0])

    # -- patches in 2-D --------------------------------------------------------------------------------------
    @cached_property
    def _query_coverage(self) -> np.ndarray:
        masks = load_masks(list(self.queries["mask"]), list(self.queries["path"]), self.image_size)
        cells = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(masks, dtype=torch.float32)[:, None],
                                                        self.side)[:, 0]
        return cells.numpy()

    def embedding(self, per_image: int = 24, seed: int = 0) -> pd.DataFrame:
        """A 2-D PCA of patches: ``per_image`` cells of every reference and query (all abnormal cells of a query
        with a mask first). Columns: ``x, y, role`` (reference / query), ``status`` (normal / abnormal: the
        defect's mask touches the cell), ``image`` (index in its role), ``path, row, col``."""
        rng = np.random.default_rng(seed)
        rows, vectors = [], []
        for role, grid, paths in (("reference", self.reference_grid, self.references),
                                  ("query", self.query_grid, list(self.queries["path"]))):
            for i, path in enumerate(paths):
                coverage = self._query_coverage[i] if role == "query" else np.zeros((self.side, self.side))
                abnormal = np.argwhere(coverage > 0)
                others = rng.permutation(np.argwhere(coverage == 0))
                for r, c in list(abnormal[:per_image]) + list(others[: max(0, per_image - len(abnormal))]):
                    vectors.append(grid[i, :, r, c])
                    rows.append(dict(role=role, status="abnormal" if coverage[r, c] > 0 else "normal",
                                     image=i, path=path, row=int(r), col=int(c)))
        points = torch.stack(vectors)
        if self.metric == "cosine":
            points = torch.nn.functional.normalize(points, dim=-1)
        centred = points - points.mean(dim=0)
        _, _, basis = torch.linalg.svd(centred, full_matrices=False)
        xy = (centred @ basis[:2].T).numpy()
        return pd.DataFrame(rows).assign(x=xy[:, 0], y=xy[:, 1])

    def thumbnail(self, path: str, row: int, col: int, context: int = 1) -> np.ndarray:
        """The pixels of cell ``(row, col)`` of ``path`` with ``context`` cells around it, ``(h, w, 3)`` uint8."""
        image = load_rgb(path, self.image_size)
        x0, y0, step = self.cell_box(row, col)
        top, left = int(max(0, y0 - context * step)), int(max(0, x0 - context * step))
        bottom = int(min(self.image_size, y0 + (context + 1) * step))
        right = int(min(self.image_size, x0 + (context + 1) * step))
        return np.asarray(image)[top:bottom, left:right]

    def image(self, path: str) -> np.ndarray:
        """The image as the backbone sees it (``image_size`` square), uint8."""
        return np.asarray(load_rgb(path, self.image_size))
