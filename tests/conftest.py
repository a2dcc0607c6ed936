"""Shared fixtures: every test run uses its own feature cache, never ~/.cache/gadlib."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    previous = os.environ.get("GADLIB_CACHE")
    os.environ["GADLIB_CACHE"] = str(tmp_path_factory.mktemp("gadlib_cache"))
    yield
    if previous is None:
        os.environ.pop("GADLIB_CACHE", None)
    else:
        os.environ["GADLIB_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory):
    """A small synthetic suite in MVTec layout: 2 categories x 2 defects, 64 px, with masks."""
    from gadlib.data.synth import generate_suite

    root = tmp_path_factory.mktemp("suite")
    frame = generate_suite(root, categories=["tile", "screw"], defects=["scratch", "hole"], n_train=4,
                           n_test_normal=3, n_test_per_defect=2, size=64, seed=0)
    return root, frame
