"""Published figures, for clearly labelled reference columns only — never used in any computation.

Each entry records where the number comes from. Values are fractions (0.839 = 83.9 %).
"""
from __future__ import annotations

import pandas as pd

# (method, dataset, metric) -> {"source": ..., "values": {shots: value}}
PUBLISHED: dict[tuple[str, str, str], dict] = {
    ("InCTRL", "elpv", "image_auroc"): {
        "source": "Zhu & Pang, Toward Generalist Anomaly Detection via In-context Residual Learning "
                  "with Few-shot Sample Prompts, CVPR 2024, image AUROC on ELPV (trained on MVTec AD)",
        "values": {2: 0.839, 4: 0.846, 8: 0.872},
    },
}


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
