"""A study as a grid of independent, resumable cells: methods x targets x seeds (all k of a seed in one cell).

* Every cell writes its own result file atomically (a temporary file, then ``os.replace``), named by a
  hash of everything that defines it; a re-run skips the cells whose file exists, so an interrupted study
  loses at most the cells in flight.
* Cells run one after another, on a local process pool (``workers``), or on a Dask distributed cluster
  (``scheduler``: an address such as ``tcp://host:8786``, or a ``distributed.Client``).
* A cell is one seed with every k: the references are nested across k and methods score all k in one
  pass, exactly as :func:`gadlib.study.evaluate` does, so a grid's rows equal a single run's rows.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Cell:
    """One independent unit of a study (see :func:`gadlib.study.run_evaluation` for the fields)."""

    method: str
    dataset: str
    seed: int
    shots: tuple[int, ...] = (1, 2, 4, 8)
    params: tuple[tuple[str, object], ...] = ()
    categories: tuple[str, ...] | None = None
    abnormal_shots: int = 0
    abnormal_source: str = "real"
    protocol: str = "label-free"
    checkpoint: str | None = None
    max_per_group: int | None = None
    label: str = field(default="", compare=False)

    def key(self) -> str:
        """A stable name of the cell's configuration (its result file's name)."""
        config = {k: v for k, v in asdict(self).items() if k != "label"}
        return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:20]


def make_grid(methods: dict[str, tuple[str, dict]], datasets: dict[str, Sequence[str] | None],
              seeds: Sequence[int] = (0, 1, 2), shots: Sequence[int] = (1, 2, 4, 8), **common) -> list[Cell]:
    """Cells for every method x dataset x seed.

    Args:
        methods: label -> (registered method name, hyper-parameters).
        datasets: dataset spec -> categories (``None`` = all).
        seeds, shots: reference draws and numbers of normal references.
        common: other :class:`Cell` fields shared by all cells (abnormal_shots, protocol, ...).
    """
    return [Cell(method=name, dataset=spec, seed=int(seed), shots=tuple(sorted(set(int(k) for k in shots))),
                 params=tuple(sorted(params.items())), categories=tuple(categories) if categories else None,
                 label=label, **common)
            for label, (name, params) in methods.items() for spec, categories in datasets.items() for seed in seeds]


def cell_file(out: str | Path, cell: Cell) -> Path:
    return Path(out) / "cells" / f"{cell.key()}.csv"


def run_cell(cell: Cell, out: str | Path) -> Path:
    """Evaluate one cell and write its tidy rows atomically; an existing file means done (skipped)."""
    from gadlib.study import run_evaluation

    target = cell_file(out, cell)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    result = run_evaluation(cell.dataset, cell.method, cell.shots, [cell.seed], None, method_params=dict(cell.params),
                            checkpoint=cell.checkpoint, abnormal_shots=cell.abnormal_shots,
                            abnormal_source=cell.abnormal_source, categories=cell.categories,
                            max_per_group=cell.max_per_group, protocol=cell.protocol, progress=False)
    tidy = result.tidy.assign(method=cell.label or cell.method, cell=cell.key())
    scratch = target.with_name(f".{target.stem}.{os.getpid()}.tmp")
    tidy.to_csv(scratch, index=False)
    os.replace(scratch, target)          # the file appears complete or not at all
    return target


def pending(cells: Iterable[Cell], out: str | Path) -> list[Cell]:
    """The cells without a result file yet."""
    return [cell for cell in cells if not cell_file(out, cell).exists()]


def run_grid(cells: Sequence[Cell], out: str | Path, workers: int = 1, scheduler=None,
             progress: bool = True) -> pd.DataFrame:
    """Run the cells that are not done yet, then return the tidy rows of all cells (in cell order).

    Args:
        cells: the study (see :func:`make_grid`).
        out: study folder; results go to ``out/cells/<key>.csv``, the cell list to ``out/grid.json``.
        workers: local processes (1 = in this process).
        scheduler: a Dask distributed scheduler address or ``distributed.Client``; overrides ``workers``.
        progress: show a progress bar over cells.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [cell.key() for cell in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("the grid lists the same cell twice")
    record = out / "grid.json"
    scratch = record.with_name(f".grid.{os.getpid()}.tmp")
    scratch.write_text(json.dumps([dict(asdict(c), key=c.key()) for c in cells], indent=1, default=str))
    os.replace(scratch, record)
    todo = pending(cells, out)
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="grid cells", unit="cell", disable=not progress)
    if scheduler is not None:
        from distributed import Client
        from distributed import as_completed as dask_completed

        client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
        try:
            for future in dask_completed(client.map(run_cell, todo, out=str(out), pure=False)):
                future.result()
                bar.update()
        finally:
            if client is not scheduler:
                client.close()
    elif workers > 1 and len(todo) > 1:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(run_cell, cell, out) for cell in todo]):
                future.result()
                bar.update()
    else:
        for cell in todo:
            run_cell(cell, out)
            bar.update()
    bar.close()
    return collect(cells, out)


def collect(cells: Sequence[Cell], out: str | Path) -> pd.DataFrame:
    """The tidy rows of every finished cell, in cell order."""
    parts = [pd.read_csv(cell_file(out, cell)) for cell in cells if cell_file(out, cell).exists()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
