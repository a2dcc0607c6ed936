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
