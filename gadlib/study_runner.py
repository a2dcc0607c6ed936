"""``gad study``: run the study's notebooks one after another and say, while they run, how far along they are.

Each notebook runs in its own kernel (:func:`gadlib.notebooks.run_notebook`), so nothing it prints reaches the
terminal. The library inside the kernel appends progress events to the file named by ``$GADLIB_PROGRESS``
(:mod:`gadlib.progress`); this runner points that variable at a fresh file per notebook and, every
``interval`` seconds, prints a status line from it: elapsed times, cells computed / reused, models trained /
loaded, images featurised, the last event, and the time left.

The time left comes from the previous run of the same kind, recorded in ``<out>/study_time.json``:

* ``cold_seconds``: the wall time of the last full run that started from an empty cache (no features,
  results or checkpoints), with its ``cores`` and ``commit`` at the top level;
* ``warm_seconds``: the last full run with nothing changed: every notebook up to date (see below), nothing
  computed;
* ``rerun_seconds``: the last full run that computed nothing but ran its notebooks again from stored cells,
  models and features (after an edit of the library, or with ``--force``);
* ``runs``: the ``cold``, ``warm``, ``rerun`` and ``partial`` (something computed) runs in detail: total and
  per-notebook seconds, cell counts, date, cores, torch threads, workers and the git commit of that run.

``<out>/study_time.md`` shows the same as a table. Only runs of the whole notebook list are recorded (not
``--only``). What `make study` leaves out to fit 45 minutes (:data:`EXTENDED_NOTEBOOKS`) runs with
``gad study --extended`` (`make study-extended`), whose runs go to ``<out>/study_extended_time.json`` the same way.

A notebook that is **up to date** is not run again, as ``make`` skips a target newer than its sources: after
each successful run a stamp in the cache (``<cache>/study-stamps/``) records a digest of everything the
notebook's outputs follow from (:func:`notebook_inputs`: the notebook file, its parameters, every file of the
library and of the dataset manifests, the installed packages, Python, the workers x threads layout) and a digest
of each file it wrote. The next run skips it when both still match; any edit, a new package, another layout or
a touched output runs it again, and so does ``--force``. A run from an empty cache (cold) never skips.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from gadlib.progress import PROGRESS_ENV, read_events

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMES_FILE = "study_time.json"
COLD, WARM, RERUN, PARTIAL = "cold", "warm", "rerun", "partial"
KINDS = (COLD, WARM, RERUN, PARTIAL)
LEGACY = {"cold_seconds": COLD, "warm_seconds": WARM, "last_partial": PARTIAL}   # the first format's entries
# The cache folders whose contents a run can reuse; weights and generated datasets do not make a run warm.
REUSABLE = ("features", "results", "checkpoints")
# On Python 3.11+ a kernel started without -Xfrozen_modules=off (a python3 kernelspec other than the one
# `make venv` installs) warns that the debugger may miss breakpoints; no one debugs a papermill kernel, so
# on the study's terminal that warning is noise.
KERNEL_ENV = {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}
# Where a notebook's last successful run is stamped, under the cache root: a stamp belongs with the cells it read.
STAMPS = "study-stamps"


@dataclass(frozen=True)
class StudyNotebook:
    """One notebook of the study and the results folder (under the output root) it writes."""

    name: str
    path: Path
    parameters: tuple[tuple[str, object], ...] = ()     # papermill parameters of this notebook in the study


# The study, in the order `make study` runs it: the one place this list lives.
STUDY_NOTEBOOKS: tuple[StudyNotebook, ...] = tuple(
    StudyNotebook(name, REPO_ROOT / "notebooks" / file, tuple(parameters.items())) for file, name, parameters in (
        ("00_quickstart.ipynb", "quickstart", {}),
        ("15_explorer.ipynb", "explorer", {"backend": "inline"}),     # a static copy: one demonstration click
        ("12_baselines.ipynb", "baselines", {}),
        ("20_cross_domain.ipynb", "cross_domain", {}),
        ("25_normal_abnormal.ipynb", "normal_abnormal", {}),
        ("10_residual_space.ipynb", "residual_space", {}),
        ("30_three_gaps.ipynb", "three_gaps", {"part": "pipeline"}),
    ))
# What `make study` leaves out to finish in 45 minutes on two cores, run by `make study-extended` (`gad study
# --extended`) into the same results root and from the same cache: the three-gap notebook's VOD readings inside
# kNN, ResAD, InCTRL-vision and NAGL ("+ A", "+ B"; 18.5 minutes after `make study`, of the 28 the notebook took
# whole) and the scaling study (14.5 minutes). Nothing is subsampled; the README says what and why.
EXTENDED_NOTEBOOKS: tuple[StudyNotebook, ...] = tuple(
    StudyNotebook(name, REPO_ROOT / "notebooks" / file, tuple(parameters.items())) for file, name, parameters in (
        ("30_three_gaps.ipynb", "three_gaps_readings", {"part": "readings"}),
        ("40_scaling.ipynb", "scaling", {}),
    ))
EXTENDED_TIMES_FILE = "study_extended_time.json"
#: The three-gap notebook's parts: which of its method variants each runs (:func:`three_gap_part`).
THREE_GAP_PARTS = ("all", "pipeline", "readings")


def three_gap_part(variants: dict, part: str) -> dict:
    """The three-gap notebook's variants that its ``part`` runs, in their order.

    ``"pipeline"`` (`make study`): the plain methods and every ``vod`` pipeline variant (``"VOD: ..."``);
    ``"readings"`` (`make study-extended`): the plain methods and their VOD readings (``"kNN + A"``, ...), so
    that each reading is paired with its base on the same draws (the plain methods' cells are the pipeline
    part's, reused from the result store); ``"all"``: every variant.
    """
    if part not in THREE_GAP_PARTS:
        raise ValueError(f"part must be one of {', '.join(THREE_GAP_PARTS)}; got {part!r}")

    def is_pipeline(label):
        return label.startswith("VOD: ")

    def is_reading(label):
        return " + " in label and not is_pipeline(label)

    keep = {"all": lambda label: True,
            "pipeline": lambda label: not is_reading(label),
            "readings": lambda label: not is_pipeline(label)}[part]
    return {label: value for label, value in variants.items() if keep(label)}


# Checks that chose the trained methods' defaults on held-out source categories (`make validate`): not part
# of the study's time; re-run them when a default is in question.
VALIDATION_NOTEBOOKS: tuple[StudyNotebook, ...] = (
    StudyNotebook("source_validation", REPO_ROOT / "notebooks" / "05_source_validation.ipynb"),
)


class StudyError(RuntimeError):
    """A notebook of the study failed; the message names it, the cell and the exception."""


@dataclass
class Tally:
    """What one notebook's progress events add up to."""

    cells_computed: int = 0
    cells_reused: int = 0
    models_trained: int = 0
    models_loaded: int = 0
    images: int = 0
    last_label: str | None = None

    @property
    def cells(self) -> int:
        return self.cells_computed + self.cells_reused


COUNTS = ("cells_computed", "cells_reused", "models_trained", "models_loaded", "images")


def tally(events: Sequence[dict]) -> Tally:
    """Count the events of :mod:`gadlib.progress` (cells, models, images) and keep the last label."""
    counts = Tally()
    for event in events:
        kind, reused = event.get("kind"), bool(event.get("reused"))
        if kind == "cell":
            if reused:
                counts.cells_reused += 1
            else:
                counts.cells_computed += 1
        elif kind == "train":
            if reused:
                counts.models_loaded += 1
            else:
                counts.models_trained += 1
        elif kind == "features" and not reused:
            counts.images += int(event.get("count", 0))
        counts.last_label = event.get("label", counts.last_label)
    return counts


def work_breakdown(events: Sequence[dict]) -> dict:
    """Where a notebook's computing went: seconds of the work it did (found work costs nothing), by kind and by method.

    Seconds are summed over processes, so with two workers they can add up to twice the wall time. The
    method is the first word of an event's label (``resad``, ``knn``, ``patch_spaces``, ...).
    """
    kinds = {"train": "training_s", "cell": "scoring_s", "features": "features_s"}
    work = {name: 0.0 for name in kinds.values()}
    by_method: dict[str, float] = {}
    for event in events:
        if event.get("reused") or event.get("kind") not in kinds:
            continue
        seconds = float(event.get("seconds", 0.0))
        work[kinds[event["kind"]]] += seconds
        if event["kind"] != "features":
            method = f"{str(event.get('label', '?')).split(' ')[0]} ({'training' if event['kind'] == 'train' else 'scoring'})"
            by_method[method] = by_method.get(method, 0.0) + seconds
    work = {name: round(value, 1) for name, value in work.items()}
    work["by_method"] = {name: round(value, 1) for name, value in sorted(by_method.items(), key=lambda kv: -kv[1])}
    return work


def estimate_left(elapsed: float, cells_done: int, previous_seconds: float | None,
                  previous_cells: int | None) -> float | None:
    """Seconds a notebook still needs, judged from its previous run of the same kind.

    Two readings of the previous run: by time (it took ``previous_seconds``, ``elapsed`` have passed) and by
    work (``cells_done`` of its ``previous_cells`` are done, so that share of its time is left). Training and
    feature extraction come before the cells, so the time reading is right while no cell is done; once cells
    arrive the smaller reading wins, which follows a run that goes faster than the last one. When the time
    reading is spent (this run is slower) only the work reading is left.

    Returns:
        ``None`` without a previous run; otherwise seconds, ``>= 0``.
    """
    if previous_seconds is None:
        return None
    by_time = max(previous_seconds - elapsed, 0.0)
    if not previous_cells or cells_done <= 0:
        return by_time
    by_work = previous_seconds * (1.0 - min(cells_done / previous_cells, 1.0))
    return min(by_time, by_work) if by_time > 0 else by_work


def cache_is_empty(cache_root: str | Path) -> bool:
    """Whether ``cache_root`` holds no features, result cells or checkpoints (a cold run starts there)."""
    root = Path(cache_root)
    return not any(path.is_file() for folder in REUSABLE for path in (root / folder).rglob("*"))


def _hash_files(digest, root: Path) -> None:
    """Feed every file under ``root`` (relative name and bytes, in name order) to ``digest``; skip byte code."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")


def library_digest(roots: Sequence[Path] | None = None) -> str:
    """SHA-256 of the code and data descriptions every notebook runs on: each file under ``roots`` (default:
    the ``gadlib`` package and the dataset manifests in use), the installed packages and their versions, and
    the Python version."""
    from importlib import metadata

    from gadlib.data.manifests import manifests_dir

    digest = hashlib.sha256()
    for root in roots if roots is not None else (REPO_ROOT / "gadlib", manifests_dir()):
        digest.update(f"root {Path(root).name}\0".encode())
        if Path(root).is_dir():
            _hash_files(digest, Path(root))
    packages = sorted({f"{d.metadata['Name']}=={d.version}".lower() for d in metadata.distributions()
                       if d.metadata["Name"]})
    digest.update("\n".join(packages + [sys.version]).encode())
    return digest.hexdigest()


def notebook_inputs(notebook: Path, parameters: dict, library: str, layout: tuple[int, int]) -> str:
    """SHA-256 of what one notebook's outputs follow from: its file, its parameters, ``library``
    (:func:`library_digest`) and the ``(workers, threads)`` layout (features extracted in another layout can
    round differently in float16)."""
    digest = hashlib.sha256(Path(notebook).read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    digest.update(f"{library} {layout[0]}x{layout[1]}".encode())
    return digest.hexdigest()


def output_digests(folder: str | Path) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file under ``folder`` (``{}`` when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def stamp_path(cache_root: str | Path, name: str, out_folder: str | Path) -> Path:
    """The stamp of notebook ``name`` writing ``out_folder`` (one per output folder: tests and previews write
    elsewhere than the study)."""
    where = hashlib.sha256(str(Path(out_folder).resolve()).encode()).hexdigest()[:12]
    return Path(cache_root) / STAMPS / f"{name}-{where}.json"


def write_stamp(path: Path, inputs: str, out_folder: Path, seconds: float) -> None:
    """Record a successful run: its inputs' digest, its outputs' digests, when and how long (atomically)."""
    stamp = dict(inputs=inputs, outputs=output_digests(out_folder), out=str(Path(out_folder).resolve()),
                 seconds=round(seconds, 1), date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _write_atomically(Path(path), json.dumps(stamp, indent=1) + "\n")


def up_to_date(path: Path, inputs: str, out_folder: Path) -> dict | None:
    """The stamp at ``path`` when it has these ``inputs`` and ``out_folder`` holds exactly the files it wrote
    (none added, removed or changed); otherwise ``None``."""
    try:
        stamp = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(stamp, dict) or stamp.get("inputs") != inputs or not stamp.get("outputs"):
        return None
    return stamp if output_digests(out_folder) == stamp["outputs"] else None


def read_times(path: str | Path) -> dict:
    """The recorded runs by kind (``{}`` when the file is missing or unreadable, with a warning for the latter)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        times = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"warning: {path}: not readable JSON ({err}); estimates start over and the next full run "
              "rewrites it", file=sys.stderr, flush=True)
        return {}
    if not isinstance(times, dict):
        return {}
    if isinstance(times.get("runs"), dict):
        return times["runs"]
    return {LEGACY[k]: v for k, v in times.items() if k in LEGACY and isinstance(v, dict)}


def run_kind(started_cold: bool, notebooks: dict[str, dict]) -> str:
    """The study_time.json entry a finished full run goes to: cold (from an empty cache), warm (every notebook up
    to date), rerun (nothing computed, notebooks run again from stored work) or partial (something computed)."""
    if started_cold:
        return COLD
    if any(n["cells_computed"] or n["models_trained"] or n["images"] for n in notebooks.values()):
        return PARTIAL
    return WARM if all(n.get("skipped") for n in notebooks.values()) else RERUN


def record_times(path: str | Path, kind: str, entry: dict, command: str = "make study") -> dict:
    """Set run ``kind`` in the JSON at ``path`` to ``entry``, keeping the other runs; write it atomically,
    and its table beside it (``.md``, which names the run's ``command``). Returns the whole record."""
    path = Path(path)
    runs = read_times(path)
    runs[kind] = entry
    headline = runs.get(COLD) or entry
    times = {"cold_seconds": runs.get(COLD, {}).get("seconds"), "warm_seconds": runs.get(WARM, {}).get("seconds"),
             "rerun_seconds": runs.get(RERUN, {}).get("seconds"),
             "cores": headline.get("cores"), "commit": headline.get("commit"), "runs": runs}
    _write_atomically(path, json.dumps(times, indent=1) + "\n")
    _write_atomically(path.with_suffix(".md"), times_table(runs, command))
    return times


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(scratch, path)


def times_table(runs: dict, command: str = "make study") -> str:
    """The recorded runs of ``command`` as a Markdown table: one row per run kind, one column per notebook."""
    names = list(dict.fromkeys(n for entry in runs.values() for n in entry.get("notebooks", {})))
    header = ["run", "total"] + names + ["cells computed / reused", "models trained", "workers x threads",
                                         "cores, CPU", "commit", "date"]
    rows = []
    for kind in KINDS:
        entry = runs.get(kind)
        if not entry:
            continue
        notebooks = entry.get("notebooks", {})
        total = lambda key: sum(n.get(key, 0) for n in notebooks.values())   # noqa: E731
        rows.append([kind, format_duration(entry.get("seconds", 0))]
                    + [_notebook_time(notebooks[n]) if n in notebooks else "" for n in names]
                    + [f"{total('cells_computed')} / {total('cells_reused')}", str(total("models_trained")),
                       f"{entry.get('workers', '?')} x {entry.get('threads_per_worker', '?')}",
                       " ".join(str(entry[key]) for key in ("cores", "cpu") if entry.get(key)),
                       str(entry.get("commit", ""))[:12], str(entry.get("date", ""))])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join(lines) + (f"\n\nWall time of `{command}` on this machine: cold = from an empty "
                               "cache, warm = a second run with nothing changed, rerun = every notebook run again "
                               "from the stored cells, models and features (after an edit of the library, or "
                               "`--force`), partial = a run that found part of its work stored and computed the rest "
                               "(`make study-extended` after `make study`).\n")
    if any(n.get("skipped") for entry in runs.values() for n in entry.get("notebooks", {}).values()):
        text += ("\n\"up to date\": the notebook was not run again; its file, parameters, the library, the packages "
                 "and its outputs were as its last run from this cache left them (`gad study --force` runs it).\n")
    # the computing of the cold run, or else of a run that computed part (the extended study after `make study`)
    measured = [k for k in (COLD, PARTIAL) if any("work" in e for e in runs.get(k, {}).get("notebooks", {}).values())]
    computed = runs[measured[0]]["notebooks"] if measured else {}
    if computed:
        text += (f"\nWhere the {measured[0]} run's computing went, per notebook: process-minutes (two workers "
                 "give up to twice the wall time) of training, scoring and feature extraction, and the three "
                 "costliest methods.\n\n"
                 "| notebook | wall | training | scoring | features | costliest |\n|---|---|---|---|---|---|\n")
        for name, entry in computed.items():
            work = entry.get("work") or {}
            top = ", ".join(f"{method} {value / 60:.1f}" for method, value in list(work.get("by_method", {}).items())[:3])
            text += (f"| {name} | {format_duration(entry['seconds'])} | "
                     + " | ".join(f"{work.get(k, 0) / 60:.1f}" for k in ("training_s", "scoring_s", "features_s"))
                     + f" | {top} |\n")
    return text


def _notebook_time(entry: dict) -> str:
    return "up to date" if entry.get("skipped") else format_duration(entry["seconds"])


def cpu_model() -> str | None:
    """The processor's model name (Linux ``/proc/cpuinfo``; else what :mod:`platform` says), or ``None``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``, ``3725`` -> ``"1h02m"``, ``9`` -> ``"9s"``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(counts: Tally) -> str:
    """The counts of a notebook as one readable phrase."""
    return (f"cells {counts.cells_computed} computed / {counts.cells_reused} reused, "
            f"models {counts.models_trained} trained / {counts.models_loaded} loaded, "
            f"{counts.images} images featurised")


def select(notebooks: Sequence[StudyNotebook], only: Sequence[str] | None) -> list[StudyNotebook]:
    """The notebooks named in ``only`` (folder names, e.g. ``cross_domain``), in study order; all when None."""
    if only is None:
        return list(notebooks)
    known = {n.name for n in notebooks}
    unknown = [name for name in only if name not in known]
    if unknown or not only:
        raise ValueError(f"--only takes notebook names from {', '.join(n.name for n in notebooks)}; "
                         f"got '{','.join(only)}'")
    return [n for n in notebooks if n.name in set(only)]


def status_line(tag: str, elapsed: float, study_elapsed: float, counts: Tally, previous: dict | None,
                later_seconds: Sequence[float | None], first: str = "run") -> str:
    """One status line of a running notebook.

    Args:
        tag: ``"[2/5] cross_domain"``.
        elapsed, study_elapsed: seconds since the notebook, and the study, started.
        counts: the notebook's events so far.
        previous: this notebook's entry in the previous run of the same kind (``seconds``, ``cells``), or None.
        later_seconds: the previous seconds of each notebook still to come (None where unknown).
        first: what this run is the first of, when nothing is known ("run", "warm run").
    """
    previous = previous or {}
    left = estimate_left(elapsed, counts.cells, previous.get("seconds"), previous.get("cells"))
    if left is None or None in later_seconds:
        guess = f"no estimate yet (first {first})"
    elif left == 0 and elapsed > previous["seconds"]:
        guess = (f"slower than last time ({format_duration(previous['seconds'])}), "
                 f"then ~{format_duration(sum(later_seconds))} in the study")
    else:
        guess = f"~{format_duration(left)} left here, ~{format_duration(left + sum(later_seconds))} in the study"
    return (f"{tag}: {format_duration(elapsed)} (study {format_duration(study_elapsed)}) | {describe(counts)} "
            f"| last: {counts.last_label or '-'} | {guess}")


def _cell_error(notebook: Path, err: Exception) -> str:
    """Which cell failed and how, from papermill's error (plain text: colour codes stripped).

    The executed copy is discarded with the failed results folder, and its cell numbers count papermill's
    injected parameters cell, so the cell is also named by its first line in the committed notebook.
    """
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err.traceback or []))
    first_line = next((line.strip() for line in (err.source or "").splitlines() if line.strip()), "")
    return (f"{notebook}: cell In [{err.exec_count}] (starting `{first_line[:80]}`) raised {err.ename}: "
            f"{err.evalue}\n{traceback}").rstrip()


class _Status(threading.Thread):
    """Prints a status line every ``interval`` seconds until stopped."""

    def __init__(self, interval: float, line: Callable[[], str], emit: Callable[[str], None]):
        super().__init__(daemon=True)
        self.interval, self.line, self.emit = interval, line, emit
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.emit(self.line())


def _print(line: str) -> None:
    print(line, flush=True)


class _KernelEnv:
    """Set the kernels' environment variables for one notebook, and put the old values back after."""

    def __init__(self, values: dict[str, str]):
        self.values, self.saved = values, {}

    def __enter__(self) -> None:
        self.saved = {key: os.environ.get(key) for key in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_study(out: str | Path = "results/embedded", only: Sequence[str] | None = None, interval: float = 30.0,
              notebooks: Sequence[StudyNotebook] | None = None, parameters: dict | None = None,
              emit: Callable[[str], None] = _print, keep_times: bool = True, force: bool = False,
              times_file: str = TIMES_FILE, command: str = "make study") -> dict:
    """Run the study's notebooks into ``out/<name>``, printing progress; record the times of a full run.

    Args:
        out: output root; notebook ``name`` writes ``out/name`` and the times go to ``out/study_time.json``.
        only: names of a subset to run (then nothing is recorded).
        interval: seconds between status lines.
        notebooks: the study (default :data:`STUDY_NOTEBOOKS`); tests pass their own.
        parameters: papermill parameters given to every notebook (default: each notebook's own).
        emit: where lines go (default: stdout, flushed).
        keep_times: record the times of a full run (``False`` for other notebooks, e.g. the validation).
        times_file: where under ``out`` they go (:data:`EXTENDED_TIMES_FILE` for the extended study), with the
            table (``.md``) beside it; ``command`` names the run there.
        force: run every chosen notebook, also those that are up to date (module docstring).
    Returns:
        The run's record: ``seconds``, per-notebook ``notebooks`` and, for a full run, ``kind``.
    Raises:
        StudyError: a notebook failed (the message names the notebook, the cell and the exception).
        ValueError: an unknown name in ``only`` or a non-positive ``interval``.
    """
    import torch

    from gadlib.cache import default_cache_dir
    from gadlib.parallel import STUDY_WORKERS, WORKERS_ENV, layout
    from gadlib.results import git_commit

    if interval <= 0:
        raise ValueError(f"--interval must be a positive number of seconds, got {interval}")
    chosen, out = select(STUDY_NOTEBOOKS if notebooks is None else notebooks, only), Path(out)
    for notebook in chosen:
        if not notebook.path.is_file():
            raise StudyError(f"{notebook.path}: notebook not found; run `gad study` from a checkout of the "
                             "repository (pip install -e .)")
    # Kernels run in the notebooks' folder: a relative cache path must mean the same folder there as here.
    cache_root = default_cache_dir().resolve()
    # Cells and trainings run side by side in the measured layout unless $GADLIB_WORKERS says otherwise.
    workers, threads = layout(int(os.environ.get(WORKERS_ENV, STUDY_WORKERS)))
    started_cold = cache_is_empty(cache_root)
    times_path = out / times_file
    times = read_times(times_path)
    history = times.get(COLD) if started_cold else (times.get(RERUN) or times.get(WARM) or times.get(PARTIAL))
    # a notebook that was up to date last time says nothing about how long it runs
    previous = {name: entry for name, entry in (history or {}).get("notebooks", {}).items() if not entry.get("skipped")}
    first = "run" if not times else ("cold run" if started_cold else "warm run")
    emit(f"study: {len(chosen)} notebook(s) -> {out}/; cache {cache_root} "
         f"({'empty: a cold run' if started_cold else 'holds earlier work: a warm run'}); "
         f"{workers} worker(s) x {threads} thread(s)")
    study_start, record = time.perf_counter(), {}
    library = library_digest()
    with tempfile.TemporaryDirectory(prefix="gadlib-progress-") as events_dir:
        for index, notebook in enumerate(chosen):
            start, tag = time.perf_counter(), f"[{index + 1}/{len(chosen)}] {notebook.name}"
            inputs = notebook_inputs(notebook.path, dict(parameters or {}, **dict(notebook.parameters)), library,
                                     (workers, threads))
            stamp_file = stamp_path(cache_root, notebook.name, out / notebook.name)
            stamp = None if started_cold or force else up_to_date(stamp_file, inputs, out / notebook.name)
            if stamp is not None:
                emit(f"{tag}: up to date, not run (notebook, parameters, library, packages and "
                     f"{out / notebook.name} as its run of {stamp['date']} left them; --force runs it)")
                record[notebook.name] = dict(seconds=round(time.perf_counter() - start, 1), cells=0,
                                             **{k: 0 for k in COUNTS}, work=work_breakdown([]), skipped=True)
                continue
            kernel_env = dict(KERNEL_ENV, GADLIB_CACHE=str(cache_root), GADLIB_WORKERS=str(workers))
            kernel_env[PROGRESS_ENV] = str(Path(events_dir) / f"{notebook.name}.jsonl")
            later = [previous.get(n.name, {}).get("seconds") for n in chosen[index + 1:]]
            record[notebook.name] = _run_one(notebook, tag, out, parameters, kernel_env, interval, emit, study_start,
                                             previous.get(notebook.name), later, first)
            write_stamp(stamp_file, inputs, out / notebook.name, record[notebook.name]["seconds"])
    total = time.perf_counter() - study_start
    emit(f"study: done in {format_duration(total)}")
    width = max(len(name) for name in record)
    for name, entry in record.items():
        counts = Tally(**{k: entry[k] for k in COUNTS})
        what = "up to date, not run" if entry.get("skipped") else describe(counts)
        emit(f"  {name:{width}s}  {format_duration(entry['seconds']):>7s}  {what}")
    result = dict(seconds=round(total, 1), notebooks=record)
    if only is None and keep_times:
        kind = run_kind(started_cold, record)
        result.update(kind=kind, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      cores=os.cpu_count(), cpu=cpu_model(), torch_threads=torch.get_num_threads(), workers=workers,
                      threads_per_worker=threads, commit=git_commit(REPO_ROOT))
        record_times(times_path, kind, {k: v for k, v in result.items() if k != "kind"}, command)
        emit(f"study: times recorded as '{kind}' in {times_path}")
    return result


def _run_one(notebook: StudyNotebook, tag: str, out: Path, parameters: dict | None, kernel_env: dict[str, str],
             interval: float, emit: Callable[[str], None], study_start: float, previous: dict | None,
             later_seconds: list[float | None], first: str) -> dict:
    """Run one notebook with a status line every ``interval`` seconds; its seconds and counts."""
    from gadlib.notebooks import run_notebook

    events = kernel_env[PROGRESS_ENV]
    emit(f"{tag}: started" + (f" (last time {format_duration(previous['seconds'])})" if previous else ""))
    start = time.perf_counter()

    def status() -> str:
        return status_line(tag, time.perf_counter() - start, time.perf_counter() - study_start,
                           tally(read_events(events)), previous, later_seconds, first)

    watcher = _Status(interval, status, emit)
    try:
        with _KernelEnv(kernel_env):
            watcher.start()
            run_notebook(notebook.path, out / notebook.name, dict(parameters or {}, **dict(notebook.parameters)))
    except Exception as err:        # re-raised with the notebook named: nothing is swallowed
        from papermill.exceptions import PapermillExecutionError

        emit(f"{tag}: FAILED after {format_duration(time.perf_counter() - start)}")
        detail = (_cell_error(notebook.path, err) if isinstance(err, PapermillExecutionError)
                  else f"{notebook.path}: {type(err).__name__}: {err}")
        raise StudyError(f"{detail}\n{out / notebook.name} was left as it was; fix the notebook and rerun "
                         f"`gad study --only {notebook.name}`") from err
    finally:
        watcher.stopped.set()
        watcher.join()
    finished, seconds = read_events(events), time.perf_counter() - start
    counts = tally(finished)
    emit(f"{tag}: done in {format_duration(seconds)} ({describe(counts)}) -> {out / notebook.name}")
    return dict(seconds=round(seconds, 1), cells=counts.cells, **{k: getattr(counts, k) for k in COUNTS},
                work=work_breakdown(finished))
