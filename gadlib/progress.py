"""Progress events of long work (study cells, training, feature extraction) for a watcher in another process.

A notebook runs in its own kernel, so its progress bars never reach the terminal that started ``make study``.
Instead, when ``$GADLIB_PROGRESS`` names a file, the library appends one JSON line per finished unit of
work to it, and the study runner (:mod:`gadlib.study_runner`) reads that file to print what is happening.
Without the variable nothing is written. Lines are short single ``write`` calls on a file opened for
appending, so concurrent writers (pool workers) never interleave within a line.

Event fields: ``time`` (seconds since the epoch), ``kind`` (``"cell"``, ``"train"`` or ``"features"``),
``label`` (what it was, for a person), ``seconds`` (how long it took), ``reused`` (served from the
cache without computing), and ``count`` (images, for ``"features"``).
"""
from __future__ import annotations

import json
import os
import time

PROGRESS_ENV = "GADLIB_PROGRESS"
KINDS = ("cell", "train", "features")


def report(kind: str, label: str, seconds: float = 0.0, reused: bool = False, count: int = 1) -> None:
    """Append one event to ``$GADLIB_PROGRESS`` (no-op when the variable is unset)."""
    if kind not in KINDS:
        raise ValueError(f"progress kind must be one of {KINDS}, got '{kind}'")
    target = os.environ.get(PROGRESS_ENV)
    if not target:
        return
    line = json.dumps(dict(time=time.time(), kind=kind, label=label, seconds=round(float(seconds), 3),
                           reused=bool(reused), count=int(count))) + "\n"
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(line)


def read_events(path: str | os.PathLike) -> list[dict]:
    """Every complete event line of a progress file (a line still being written is skipped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
