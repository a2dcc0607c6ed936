"""Dataset manifests: what each benchmark should contain, and a verifier for a user's copy.

One YAML file per dataset lives in the top-level ``data_manifests/`` folder (resolved relative
to the installed package: ``<repo>/data_manifests``; override with the ``GADLIB_MANIFESTS``
environment variable). A manifest names the parser that reads the dataset, its arguments, the
published image counts per category and split, and protocol notes. Typical use::

    from gadlib.data import manifests
    frame = manifests.parse("mvtec_ad", "/data/mvtec_anomaly_detection")
    print(manifests.verify("mvtec_ad", "/data/mvtec_anomaly_detection"))

Parsers are named by short keys and imported lazily (``"module:function"``), so a manifest
whose parser module is not installed only fails when it is used.
"""
from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

MANIFESTS_ENV = "GADLIB_MANIFESTS"
PARSERS: dict[str, str] = {
    "folder": "gadlib.data.folder:parse_folder",
    "visa": "gadlib.data.visa:parse_visa",
    "medianomaly": "gadlib.data.medical:parse_medianomaly",
    "elpv": "gadlib.data.elpv:parse_elpv",
    "textile": "gadlib.data.textile:parse_textile",
    "synth": "gadlib.data.synth:load_suite",
}
REQUIRED_FIELDS: tuple[str, ...] = (
    "name", "title", "source", "licence", "citation", "parser", "parser_args", "layout",
    "domain", "categories", "expected_counts", "has_masks", "notes", "checksums",
)
COUNT_KEYS: tuple[str, ...] = ("train_good", "test_good", "test_anomalous")
_PATH_ARGS: tuple[str, ...] = ("root", "path")


def manifests_dir() -> Path:
    """Folder holding the manifest YAMLs (``$GADLIB_MANIFESTS`` or ``<repo>/data_manifests``)."""
    override = os.environ.get(MANIFESTS_ENV)
    if override:
        return Path(override).expanduser()
    import gadlib

    return Path(gadlib.__file__).resolve().parent.parent / "data_manifests"


def list_manifests() -> list[str]:
    """Names of the available manifests (YAML file stems), sorted."""
    folder = manifests_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_manifest(name: str) -> dict:
    """Load and check one manifest.

    Raises:
        ValueError: unknown name (the message lists the known ones) or a field is missing.
    """
    path = manifests_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown dataset manifest {name!r} (looked for {path}); known: {', '.join(list_manifests()) or 'none'}"
        )
    with path.open() as handle:
        manifest = yaml.safe_load(handle)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a YAML mapping with fields {list(REQUIRED_FIELDS)}")
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}; every manifest needs {list(REQUIRED_FIELDS)}")
    if manifest["parser"] not in PARSERS:
        raise ValueError(f"{path}: unknown parser {manifest['parser']!r}; known parsers: {sorted(PARSERS)}")
    return manifest


def resolve_parser(parser: str) -> Callable[..., pd.DataFrame]:
    """Import the function behind a parser key (``"folder"`` -> :func:`parse_folder`).

    Raises:
        ValueError: unknown key. ImportError: the module or function is not available.
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; known parsers: {sorted(PARSERS)}")
    module_name, func_name = PARSERS[parser].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"parser {parser!r} needs module {module_name}, which cannot be imported ({err}); "
            f"install the missing package or update gadlib"
        ) from err
    func = getattr(module, func_name, None)
    if func is None:
        raise ImportError(f"parser {parser!r}: {module_name} has no function {func_name}")
    return func


def parse(name: str, path: str | Path | None = None) -> pd.DataFrame:
    """Read a dataset with the parser and arguments its manifest names.

    Args:
        name: manifest name, e.g. ``"mvtec_ad"``.
        path: where the user's copy lives; passed as the parser's ``root`` (or ``path``)
            argument. Parsers for package-shipped data (``elpv``, ``textile``) take no path.

    Raises:
        ValueError: unknown manifest, or the parser needs a path and none was given.
    """
    manifest = load_manifest(name)
    func = resolve_parser(manifest["parser"])
    kwargs: dict[str, Any] = dict(manifest.get("parser_args") or {})
    params = inspect.signature(func).parameters
    path_arg = next((p for p in _PATH_ARGS if p in params), None)
    if path_arg is not None:
        if path is None:
            if params[path_arg].default is inspect.Parameter.empty:
                raise ValueError(f"dataset {name!r} needs a path: call parse({name!r}, '/path/to/{name}')")
        else:
            kwargs[path_arg] = str(Path(path).expanduser())
    return func(**kwargs)


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: counts found against counts expected, and what to fix.

    ``found`` and ``expected`` map category -> count key (``train_good``, ``test_good``,
    ``test_anomalous``; ``train_anomalous`` when present) -> number of images (``None`` when
    the manifest does not know it).
    """

    name: str
    path: str
    ok: bool
    found: dict[str, dict[str, int]] = field(default_factory=dict)
    expected: dict[str, dict[str, int | None]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        status = "OK" if self.ok else f"FAILED ({len(self.problems)} problem(s))"
        lines = [f"dataset {self.name!r} at {self.path}: {status}"]
        keys = list(COUNT_KEYS) + (
            ["train_anomalous"] if any(c.get("train_anomalous") for c in self.found.values()) else []
        )
        categories = sorted(set(self.found) | set(self.expected))
        if categories:
            width = max(12, *(len(c) for c in categories))
            lines.append("  " + "category".ljust(width) + "".join(k.rjust(18) for k in keys))
            for cat in categories:
                cells = []
                for key in keys:
                    got = self.found.get(cat, {}).get(key, 0) if cat in self.found else "-"
                    want = self.expected.get(cat, {}).get(key)
                    want_text = "?" if want is None else str(want)
                    flag = " !" if want is not None and got != want else "  "
                    cells.append(f"{got}/{want_text}{flag}".rjust(18))
                lines.append("  " + cat.ljust(width) + "".join(cells))
            lines.append("  (found/expected; ? = count unknown, ! = mismatch)")
        if self.problems:
            lines.append("problems:")
            lines += [f"  {i}. {p}" for i, p in enumerate(self.problems, start=1)]
        if self.notes:
            lines.append("notes:")
            lines += [f"  - {n}" for n in self.notes]
        return "\n".join(lines)


def count_frame(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Images per category and count key (``train_good``, ``test_anomalous``, ...)."""
    counts: dict[str, dict[str, int]] = {}
    for (cat, split, label), n in frame.groupby(["category", "split", "label"]).size().items():
        key = f"{split}_{'anomalous' if label == 1 else 'good'}"
        counts.setdefault(str(cat), {k: 0 for k in COUNT_KEYS})[key] = int(n)
    return counts


def verify(name: str, path: str | Path | None = None, expected: dict | None = None) -> VerifyReport:
    """Check a user's copy of a dataset against its manifest; never raises for a bad copy.

    Args:
        name: manifest name.
        path: the user's dataset folder (``None`` for package-shipped datasets).
        expected: counts to check instead of the manifest's ``expected_counts``
            (category -> {count key -> number or None}).

    Returns:
        A :class:`VerifyReport`; ``ok`` is False when the folder cannot be parsed, a category is
        missing, a known count differs, or anomalous images lack masks in a dataset with masks.
    """
    manifest = load_manifest(name)
    expected = expected if expected is not None else (manifest.get("expected_counts") or {})
    expected = {str(c): dict(v or {}) for c, v in expected.items()}
    report = VerifyReport(name=name, path=str(path), ok=False, expected=expected)
    source = manifest.get("source", "the dataset's source")
    try:
        frame = parse(name, path)
    except (FileNotFoundError, ValueError, ImportError) as err:
        layout = " ".join(str(manifest["layout"]).split()).rstrip(".")
        report.problems.append(f"{err} (expected layout: {layout}; download from {source})")
        return report
    report.found = count_frame(frame)
    wanted = [str(c) for c in (manifest.get("categories") or expected)]
    layout = " ".join(str(manifest["layout"]).split()).rstrip(".")
    absent = [c for c in wanted if c not in report.found]
    if absent:
        report.problems.append(
            f"missing categor{'y' if len(absent) == 1 else 'ies'} {absent}: no images parsed under "
            f"{path}/<category>; expected layout: {layout}; download or re-extract them from {source}"
        )
    extra = sorted(set(report.found) - set(wanted))
    if extra and wanted:
        report.notes.append(f"categories not in the manifest (kept, not checked): {extra}")
    unknown: list[str] = []
    for cat in wanted:
        if cat not in report.found:
            continue
        mismatches = []
        for key, want in expected.get(cat, {}).items():
            got = report.found[cat].get(key, 0)
            if want is None:
                unknown.append(f"{cat}.{key}")
            elif got != want:
                mismatches.append(f"{key} found {got}, expected {want} ({got - want:+d})")
        if mismatches:
            report.problems.append(
                f"{cat}: {'; '.join(mismatches)}; the copy is incomplete or edited: re-extract {cat} from {source}"
            )
    if unknown:
        report.notes.append(f"expected count unknown in the manifest, not checked: {', '.join(unknown)}")
    if manifest.get("has_masks"):
        lacking = frame[(frame["label"] == 1) & frame["mask_path"].isna()]
        for cat, group in lacking.groupby("category"):
            report.problems.append(
                f"{cat}: {len(group)} anomalous image(s) have no mask, e.g. {group['image_path'].iloc[0]}; "
                f"restore the mask files (expected layout: {layout})"
            )
    report.ok = not report.problems
    return report
