"""Published figures, for clearly labelled reference columns only — never used in any computation.

Each entry records where the number comes from. Values are fractions (0.839 = 83.9 %).
"""
from __future__ import annotations

import pandas as pd

_NAGL = ("NAGL (NeurIPS 2025), DINOv2 ViT-S/14 at 448 px, one abnormal reference of the query's defect type "
         "(type-matched protocol)")

_RESAD = ("Yao et al., ResAD: A Simple Framework for Class Generalizable Anomaly Detection, NeurIPS 2024, Table 1, "
          "WideResNet50-2 layers 1-3 at 224 px")

# (method, dataset, metric) -> {"source": ..., "values": {shots: value}}
PUBLISHED: dict[tuple[str, str, str], dict] = {
    ("InCTRL", "elpv", "image_auroc"): {
        "source": "Zhu & Pang, Toward Generalist Anomaly Detection via In-context Residual Learning "
                  "with Few-shot Sample Prompts, CVPR 2024, image AUROC on ELPV (trained on MVTec AD)",
        "values": {2: 0.839, 4: 0.846, 8: 0.872},
    },
    ("NAGL", "mvtec_ad", "image_auroc"): {"source": _NAGL + ", N^k + A^1, MVTec AD", "values": {1: 0.958, 4: 0.971}},
    ("NAGL", "mvtec_ad", "pixel_auroc"): {"source": _NAGL + ", N^k + A^1, MVTec AD", "values": {1: 0.966, 4: 0.970}},
    ("NAGL", "visa", "image_auroc"): {"source": _NAGL + ", N^k + A^1, VisA", "values": {1: 0.885, 4: 0.912}},
    ("NAGL", "visa", "pixel_auroc"): {"source": _NAGL + ", N^k + A^1, VisA", "values": {1: 0.975, 4: 0.978}},
    ("NAGL", "brats", "image_auroc"): {"source": _NAGL + ", N^k + A^1, BraTS", "values": {4: 0.849}},
    ("NAGL", "brats", "pixel_auroc"): {"source": _NAGL + ", N^k + A^1, BraTS", "values": {4: 0.971}},
    ("ResAD", "mvtec_ad", "image_auroc"): {"source": _RESAD + ", trained on VisA, MVTec AD", "values": {2: 0.856, 4: 0.905}},
    ("ResAD", "mvtec_ad", "pixel_auroc"): {"source": _RESAD + ", trained on VisA, MVTec AD", "values": {2: 0.941, 4: 0.957}},
    ("ResAD", "visa", "image_auroc"): {"source": _RESAD + ", trained on MVTec AD, VisA", "values": {2: 0.799, 4: 0.862}},
    ("ResAD", "visa", "pixel_auroc"): {"source": _RESAD + ", trained on MVTec AD, VisA", "values": {2: 0.964, 4: 0.974}},
}


def published_table() -> pd.DataFrame:
    """Every published figure as rows: method, dataset, metric, shots, value (%), source."""
    rows = [dict(method=method, dataset=dataset, metric=metric, shots=k, value=round(100 * v, 1), source=entry["source"])
            for (method, dataset, metric), entry in PUBLISHED.items() for k, v in entry["values"].items()]
    return pd.DataFrame(rows)


def published(method: str, dataset: str, metric: str = "image_auroc") -> pd.DataFrame:
    """Published values as a table with columns ``shots``, ``value``, ``label``, ``source``."""
    key = (method, dataset, metric)
    if key not in PUBLISHED:
        known = [" / ".join(k) for k in PUBLISHED]
        raise KeyError(f"no published figure for {key}; known: {known}")
    entry = PUBLISHED[key]
    return pd.DataFrame({"shots": list(entry["values"]), "value": list(entry["values"].values()),
                         "label": f"{method} (published)", "source": entry["source"]})


def with_published(table: pd.DataFrame, method: str, dataset: str, metric: str = "image_auroc") -> pd.DataFrame:
    """``table`` (a :func:`gadlib.results.summary_table`) plus one labelled column per published k.

    Values are filled only on the rows of ``dataset`` over its whole test set (domain joined with
    '+', or its single domain), in percent, never mixed into the measured columns.
    """
    if "dataset" not in table.columns or "domain" not in table.columns:
        raise ValueError("with_published needs a table with 'dataset' and 'domain' columns")
    reference = published(method, dataset, metric)
    table = table.copy()
    rows = table["dataset"] == dataset
    if table.loc[rows, "domain"].nunique() > 1:  # per-domain rows sit beside the whole-set row
        rows &= table["domain"].str.contains(r"\+", regex=True)
    for k, value in zip(reference["shots"], reference["value"]):
        column = f"{method} published, k={k}"
        table[column] = ""
        table.loc[rows, column] = f"{100 * value:.1f}"
    return table
