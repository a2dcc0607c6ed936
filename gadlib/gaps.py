"""Views of schema tables that open one generalisation gap at a time (the three-gap study).

* **category gap**: train on some categories, test on others (``categories`` of the source and target);
* **defect-type gap**: :func:`keep_defects` -- a table whose anomalies are only some defect types
  (train on local defects, test on global ones; hold defect families out of training);
* **domain gap**: :func:`cross_domain` -- normal references from one domain, queries from another
  (ELPV mono <-> poly), or a source and a target from different datasets.

Each view is a plain schema table, so every loader, sampler and method works on it unchanged.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd


def keep_defects(frame: pd.DataFrame, defects: Sequence[str] | None) -> pd.DataFrame:
    """Keep every normal image and only the anomalies of ``defects`` (``None`` keeps all)."""
    if defects is None:
        return frame
    defects = list(defects)
    known = set(frame.loc[frame["label"] == 1, "defect"].astype(str))
    unknown = sorted(set(defects) - known)
    if unknown:
        raise ValueError(f"defect types {unknown} are not in this table; known: {sorted(known)}")
    keep = (frame["label"] == 0) | frame["defect"].astype(str).isin(defects)
    return frame[keep].reset_index(drop=True)


def normal_splits(frame: pd.DataFrame, splits: Sequence[str] | None) -> pd.DataFrame:
    """Keep the anomalies and only the normal images of ``splits`` (``None`` keeps all).

    A source trained on ``["train"]`` normals never sees the normal *test* images a target view of
    the same dataset scores as queries.
    """
    if splits is None:
        return frame
    keep = (frame["label"] == 1) | frame["split"].isin(list(splits))
    return frame[keep].reset_index(drop=True)


def cross_domain(frame: pd.DataFrame, reference_domain: str, query_domain: str) -> pd.DataFrame:
    """Normal references (the ``train`` pool) from ``reference_domain``, queries (``test``) from ``query_domain``."""
    domains = sorted(frame["domain"].unique())
    for domain in (reference_domain, query_domain):
        if domain not in domains:
            raise ValueError(f"domain '{domain}' is not in this table; known: {domains}")
    keep = (((frame["split"] == "train") & (frame["domain"] == reference_domain))
            | ((frame["split"] == "test") & (frame["domain"] == query_domain)))
    view = frame[keep].reset_index(drop=True)
    if not ((view["split"] == "train") & (view["label"] == 0)).any():
        raise ValueError(f"no normal train images in domain '{reference_domain}' to draw references from")
    return view
