"""The reproduction page (issue 19): one section per published figure, with commands that reproduce exactly it."""
from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from gadlib.published import PUBLISHED
from gadlib.reproduce import REPRODUCTIONS, check_covers_published, reproduction_page

ROOT = Path(__file__).resolve().parents[1]
DATASET_SPEC = {"elpv": "elpv", "mvtec_ad": "mvtec_ad", "visa": "visa", "brats": "brats_bmad"}


def _argv(command: str) -> list[str]:
    return shlex.split(command.replace("\\\n", " "))


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_committed_page_is_the_generated_one():
    assert (ROOT / "docs/reproduce.md").read_text() == reproduction_page(), "run .venv/bin/gad reproduction"


def test_every_published_figure_has_exactly_one_reproduction():
    check_covers_published()
    with pytest.raises(ValueError, match="do not match"):
        check_covers_published(REPRODUCTIONS[1:])
    with pytest.raises(ValueError, match="do not match"):
        check_covers_published(REPRODUCTIONS + REPRODUCTIONS[:1])


def test_figures_read_the_published_values():
    inctrl = next(r for r in REPRODUCTIONS if (r.method, r.dataset) == ("InCTRL", "elpv"))
    assert inctrl.figures == "image AUROC 83.9 / 84.6 / 87.2 (k = 2 / 4 / 8)"
    nagl = next(r for r in REPRODUCTIONS if (r.method, r.dataset) == ("NAGL", "brats"))
    assert nagl.figures == "image AUROC 84.9 (k = 4); pixel AUROC 97.1 (k = 4)"
    assert replace(nagl, dataset="nowhere").figures == ""


@pytest.mark.parametrize("reproduction", REPRODUCTIONS, ids=lambda r: r.anchor)
def test_commands_train_the_method_then_score_the_published_dataset_at_the_published_shots(reproduction):
    train, evaluate = (_argv(c) for c in reproduction.commands)
    assert train[1] == "train" and _option(train, "--method") == reproduction.method.lower()
    assert evaluate[1] == "evaluate" and _option(evaluate, "--checkpoint") == _option(train, "--out")
    assert _option(evaluate, "--dataset").split(":")[0] == DATASET_SPEC[reproduction.dataset]
    published_shots = {k for (method, dataset, _), entry in PUBLISHED.items()
                       if (method, dataset) == (reproduction.method, reproduction.dataset) for k in entry["values"]}
    assert {int(k) for k in _option(evaluate, "--shots").split(",")} == published_shots
    # trained on another dataset than the one it is scored on (the generalist protocol)
    assert _option(train, "--source").split(":")[0] != _option(evaluate, "--dataset").split(":")[0]
    if reproduction.method == "NAGL":
        assert _option(evaluate, "--abnormal-shots") == "1" and _option(evaluate, "--protocol") == "type-matched"
