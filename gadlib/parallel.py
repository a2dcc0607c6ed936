"""Deliberate parallelism: worker processes x torch threads never exceed the cores.

Independent study cells (and independent trainings) can run in ``workers`` processes with
``threads = cores // workers`` torch threads each, or in this process with every core. On the 2-core CPU
this kit is developed on, two torch jobs with two threads each slowed training 4-8x (oversubscription).
Both layouts are measured by ``gad bench --layouts`` (:func:`gadlib.bench.bench_layouts`, written to
``results/bench/layouts.csv``) and ``gad study`` sets the faster one through ``$GADLIB_WORKERS``
(1 = no pool, the library's default: a pool needs the calling script's top level behind
``if __name__ == "__main__"``, as every spawn pool does).

A method crosses to a worker as its hyper-parameters and learned tensors (:func:`method_payload`), so
a worker scores exactly the model the notebook holds, not a re-trained or re-loaded one.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

WORKERS_ENV = "GADLIB_WORKERS"
# The library's default is one process (safe in any script); `gad study` sets the measured layout.
DEFAULT_WORKERS = 1
# The faster layout on the 2-core CPU this study is run on (results/bench/layouts.md): one process per core.
STUDY_WORKERS = 2


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


def layout(workers: int | None = None) -> tuple[int, int]:
    """``(workers, threads per worker)`` with ``workers * threads <= cores``.

    ``workers=None`` reads ``$GADLIB_WORKERS``, else :data:`DEFAULT_WORKERS`; never more workers than cores.
    """
    if workers is None:
        workers = int(os.environ.get(WORKERS_ENV, DEFAULT_WORKERS))
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers} (${WORKERS_ENV}?)")
    workers = min(workers, cores())
    return workers, max(1, cores() // workers)


def _init_worker(threads: int) -> None:
    # Jupyter interrupts the kernel's whole process group when it shuts down: the pool is stopped by its
    # owner (shutdown at exit), so a worker ignores that Ctrl-C instead of printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ[WORKERS_ENV] = "1"     # a worker never starts a pool of its own


_POOLS: dict[tuple[int, int], ProcessPoolExecutor] = {}


def pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """A process pool kept for this process's lifetime (its workers keep backbones loaded between tasks)."""
    key = (workers, threads)
    if key not in _POOLS:
        _POOLS[key] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_init_worker, initargs=(threads,))
    return _POOLS[key]


def submit(executor: ProcessPoolExecutor, function, *args):
    """``executor.submit`` with this process's cache folder: a worker spawned earlier, under another
    ``$GADLIB_CACHE``, still reads and writes where the caller does."""
    from gadlib.cache import default_cache_dir

    return executor.submit(_in_cache, str(default_cache_dir()), function, *args)


def starmap(function, calls, workers: int | None = None) -> list:
    """``[function(*call) for call in calls]``, on the pool when :func:`layout` gives it two or more workers and
    there are two or more calls (``function`` must then be picklable: a module-level function), else here."""
    calls = list(calls)
    n_workers, threads = layout(workers)
    if n_workers < 2 or len(calls) < 2:
        return [function(*call) for call in calls]
    executor = pool(n_workers, threads)
    return [future.result() for future in [submit(executor, function, *call) for call in calls]]


def _in_cache(root: str, function, *args):
    os.environ["GADLIB_CACHE"] = root
    return function(*args)


@atexit.register
def shutdown() -> None:
    """Stop every pool of this process (also run at exit)."""
    while _POOLS:
        _, executor = _POOLS.popitem()
        executor.shutdown(wait=True, cancel_futures=True)


def method_payload(method) -> dict:
    """A picklable description of a method and its learned state (numpy arrays, no live modules)."""
    return dict(name=method.name, params={**method.get_params(), "progress": False},
                state={k: v.detach().cpu().numpy() for k, v in method.fitted_state().items()},
                fit=getattr(method, "fit_record_", None))


_METHODS: dict[str, object] = {}


def method_from_payload(payload: dict, memo_key: str | None = None):
    """Re-create the method of :func:`method_payload` (memoised per worker by ``memo_key``)."""
    from gadlib.methods import create_method

    if memo_key is not None and memo_key in _METHODS:
        return _METHODS[memo_key]
    method = create_method(payload["name"], **payload["params"])
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in payload["state"].items()}
    method.load_fitted_state(state, {"fit": payload["fit"]})
    if memo_key is not None:
        if len(_METHODS) >= 4:      # a batch moves from method to method: keep the last few
            _METHODS.pop(next(iter(_METHODS)))
        _METHODS[memo_key] = method
    return method

