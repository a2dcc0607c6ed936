"""The ``gad`` command: evaluate methods, inspect datasets, run notebooks.

Thin by design: every command parses its options and calls one library function.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="gadlib: generalist anomaly detection study kit")
data_app = typer.Typer(no_args_is_help=True, help="Dataset manifests and checks")
app.add_typer(data_app, name="data")

# options that `gad evaluate` and `gad grid` share: one declaration each
SHOTS = typer.Option("1,2,4,8", help="numbers of normal references k")
ABNORMAL_SHOTS = typer.Option(0, help="m abnormal references per episode")
ABNORMAL_SOURCE = typer.Option("real", help="real | simulated")
PROTOCOL = typer.Option("label-free", help="label-free (abnormal references of any defect type) | "
                                           "type-matched (NAGL's: of the query's defect type)")
METRIC = typer.Option("image_auroc", help="metric of the printed table")
QUIET = typer.Option(False, help="no progress bars")

# A smoke run checks that a command works end to end, at the real image sizes, levels and backbones, in minutes
# on a CPU, before a long run on a GPU: GADLIB_SMOKE=1 cuts training to SMOKE_TRAINING (one step, two anomalies
# simulated per source category, one episode for the score statistics) and every dataset to at most
# SMOKE_MAX_PER_GROUP images per (category, split, label) -- enough normal references for k = 8. Its numbers
# mean nothing, and it says so. The tests run every command of the README and docs/ this way.
SMOKE_ENV = "GADLIB_SMOKE"
SMOKE_TRAINING = {"epochs": 1, "steps_per_epoch": 1, "simulated_per_category": 2, "statistics_episodes": 1}
SMOKE_MAX_PER_GROUP = 8


def _smoke() -> bool:
    if os.environ.get(SMOKE_ENV, "") in ("", "0"):
        return False
    typer.secho(f"{SMOKE_ENV} is set: a smoke run (training cut to {SMOKE_TRAINING}, at most {SMOKE_MAX_PER_GROUP} "
                "images per category, split and label); its numbers mean nothing", fg="yellow", err=True)
    return True


def _smoke_training(method: str, params: dict) -> dict:
    """``params`` with the smoke run's training length, for the hyper-parameters ``method`` has."""
    import inspect

    from gadlib.methods.base import method_class

    accepted = inspect.signature(method_class(method).__init__).parameters
    return dict(params, **{k: v for k, v in SMOKE_TRAINING.items() if k in accepted})


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated integers, e.g. 1,2,4,8; got '{text}'")
    if not values:
        raise typer.BadParameter(f"{option} is empty")
    return values


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _key_values(items: list[str], option: str) -> dict:
    """``["a=1", "b=[1, 2]", "lr=1e-5"]`` -> ``{"a": 1, "b": [1, 2], "lr": 1e-05}`` (values parsed as YAML).

    YAML 1.1 reads ``1e-5`` (no dot) as a string; a value that is a number to Python is a number here.
    """
    import yaml

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{option} takes KEY=VALUE, got '{item}'")
        parsed = yaml.safe_load(value)
        params[key] = float(parsed) if isinstance(parsed, str) and _NUMBER.fullmatch(parsed.strip()) else parsed
    return params


def _method_params(backbone: str | None, backbone_weights: Path | None, image_size: int | None,
                   method_param: list[str]) -> dict:
    """Method hyper-parameters from the shared backbone options plus ``-m KEY=VALUE`` items."""
    params = {k: v for k, v in dict(backbone=backbone, image_size=image_size,
                                    backbone_weights=str(backbone_weights) if backbone_weights else None).items()
              if v is not None}
    params.update(_key_values(method_param, "--method-param"))
    return params


@app.command()
def evaluate(
    dataset: str = typer.Option(..., help="elpv | textile | synth | <manifest>:PATH | folder:PATH"),
    method: str = typer.Option("knn", help="registered method name (see `gad methods`)"),
    shots: str = SHOTS,
    seeds: str = typer.Option("0,1,2", help="reference-draw seeds"),
    abnormal_shots: int = ABNORMAL_SHOTS,
    abnormal_source: str = ABNORMAL_SOURCE,
    protocol: str = PROTOCOL,
    checkpoint: Optional[Path] = typer.Option(None, help="a saved method (.safetensors + .json)"),
    backbone: Optional[str] = typer.Option(None, help="timm backbone name (default: the method's)"),
    backbone_weights: Optional[Path] = typer.Option(None, help="local weights file for the backbone"),
    image_size: Optional[int] = typer.Option(None, help="input size in pixels (default: the method's)"),
    method_param: list[str] = typer.Option([], "--method-param", "-m",
                                           help="hyper-parameter KEY=VALUE (YAML value), repeatable"),
    out: Path = typer.Option(..., help="run folder to write (replaced atomically)"),
    metric: str = METRIC,
    quiet: bool = QUIET,
) -> None:
    """Evaluate a method on a dataset; write tidy CSV + episodes + summary, print mean ± std."""
    from gadlib.results import summary_table, to_markdown
    from gadlib.study import run_evaluation

    params = _method_params(backbone, backbone_weights, image_size, method_param)
    try:
        result = run_evaluation(dataset, method, _ints(shots, "--shots"), _ints(seeds, "--seeds"), out,
                                method_params=params, checkpoint=checkpoint, abnormal_shots=abnormal_shots,
                                abnormal_source=abnormal_source, protocol=protocol, progress=not quiet,
                                max_per_group=SMOKE_MAX_PER_GROUP if _smoke() else None)
    except (ValueError, FileNotFoundError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(to_markdown(summary_table(result.tidy, metric)))
    typer.echo(f"wrote {out}")


@app.command()
def train(
    method: str = typer.Option("resad", help="registered trainable method (see `gad methods`)"),
    source: str = typer.Option("synth", help="source dataset spec(s), comma-separated, e.g. synth or synth,textile"),
    source_categories: Optional[str] = typer.Option(None, help="comma-separated source categories (default: all)"),
    out: Optional[Path] = typer.Option(None, help="checkpoint to write: OUT.safetensors + OUT.json (required "
                                                  "unless --dry-run)"),
    backbone: Optional[str] = typer.Option(None, help="timm backbone name (default: the method's)"),
    backbone_weights: Optional[Path] = typer.Option(None, help="local weights file for the backbone"),
    image_size: Optional[int] = typer.Option(None, help="input size in pixels (default: the method's)"),
    method_param: list[str] = typer.Option([], "--method-param", "-m",
                                           help="hyper-parameter KEY=VALUE (YAML value), repeatable, e.g. -m epochs=100"),
    quiet: bool = typer.Option(False, help="no progress bars"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the backbone's feature shapes, the trainable "
                                 "parameters, the positions per step and a memory estimate; train nothing"),
) -> None:
    """Train a method on a source domain (fixed epoch count, last epoch kept) and save a checkpoint."""
    from gadlib.training import train_or_load

    params = _method_params(backbone, backbone_weights, image_size, method_param)
    if dry_run:
        from gadlib.dryrun import dry_run as plan_run

        try:
            plan = plan_run(method, params)
        except (ValueError, FileNotFoundError, TypeError) as err:
            typer.secho(f"error: {err}", fg="red", err=True)
            raise typer.Exit(2)
        typer.echo("\n".join(plan.lines()))
        return
    if out is None:
        typer.secho("error: --out is required (where the checkpoint goes), unless --dry-run", fg="red", err=True)
        raise typer.Exit(2)
    specs = [s.strip() for s in source.split(",") if s.strip()]
    categories = [c.strip() for c in source_categories.split(",") if c.strip()] if source_categories else None
    try:
        if _smoke():
            params = _smoke_training(method, params)
        model, cached = train_or_load(method, specs, categories, params, progress=not quiet, out=out)
    except (ValueError, FileNotFoundError, TypeError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2)
    history = (getattr(model, "fit_record_", None) or {}).get("history") or []
    if history:
        last = history[-1]
        typer.echo("last epoch: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()))
    typer.echo(f"wrote {out.with_suffix('.safetensors')} (+ .json); cached as {cached}")


@app.command()
def methods() -> None:
    """List registered methods."""
    from gadlib.methods import list_methods

    for name in list_methods():
        typer.echo(name)


@data_app.command("list")
def data_list() -> None:
    """List datasets that have a manifest."""
    from gadlib.data.manifests import list_manifests, load_manifest

    for name in list_manifests():
        typer.echo(f"{name:28s} {load_manifest(name).get('title', '')}")


@data_app.command("verify")
def data_verify(name: str, path: Optional[Path] = typer.Argument(None)) -> None:
    """Check a local copy of a dataset against its manifest; exit 1 if anything is missing."""
    from gadlib.data.manifests import verify

    try:
        report = verify(name, path)
    except (ValueError, FileNotFoundError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(str(report))
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def notebook(
    path: Path = typer.Argument(..., help="notebook to execute, e.g. notebooks/00_quickstart.ipynb"),
    out: Path = typer.Argument(..., help="results folder (replaced atomically)"),
    param: list[str] = typer.Option([], "--param", "-p", help="KEY=VALUE (YAML value), repeatable"),
) -> None:
    """Execute a parameterised notebook with papermill into a results folder."""
    from gadlib.notebooks import run_notebook

    executed = run_notebook(path, out, _key_values(param, "--param"))
    typer.echo(f"wrote {executed}")


@app.command()
def study(
    out: Path = typer.Option(Path("results/embedded"), help="results root: one folder per notebook, study_time.json"),
    only: Optional[str] = typer.Option(None, help="comma-separated notebook names to run, e.g. quickstart,cross_domain "
                                                  "(times are then not recorded)"),
    interval: float = typer.Option(30.0, help="seconds between status lines"),
    validation: bool = typer.Option(False, help="run the checks that chose the trained methods' defaults on "
                                                "held-out source categories instead (`make validate`)"),
    extended: bool = typer.Option(False, help="run what `make study` leaves out instead: the three-gap study's VOD "
                                              "readings inside the other methods and the scaling study "
                                              "(`make study-extended`; times in study_extended_time.json)"),
    force: bool = typer.Option(False, help="run every notebook, also those up to date (unchanged notebook, "
                                           "parameters, library, packages and outputs since their last run)"),
) -> None:
    """Run the study's notebooks in order, printing progress and an estimate of the time left.

    A notebook that is up to date since its last run from this cache is not run again (--force runs it)."""
    from gadlib.study_runner import (EXTENDED_NOTEBOOKS, EXTENDED_TIMES_FILE, STUDY_NOTEBOOKS, VALIDATION_NOTEBOOKS,
                                     StudyError, run_study)

    names = [n.strip() for n in only.split(",") if n.strip()] if only is not None else None
    try:
        if validation and extended:
            raise ValueError("--validation and --extended are two different runs: give one")
        if names and not validation:        # a notebook of the other part: say which command runs it
            other, flag = (STUDY_NOTEBOOKS, "without --extended") if extended else (EXTENDED_NOTEBOOKS, "--extended")
            elsewhere = [n for n in names if n in {notebook.name for notebook in other}]
            if elsewhere:
                raise ValueError(f"{', '.join(elsewhere)}: run by `gad study {flag}`")
        if validation:
            run_study(out=out, only=names, interval=interval, notebooks=VALIDATION_NOTEBOOKS, keep_times=False,
                      force=force)
        elif extended:
            run_study(out=out, only=names, interval=interval, notebooks=EXTENDED_NOTEBOOKS, force=force,
                      times_file=EXTENDED_TIMES_FILE, command="make study-extended")
        else:
            run_study(out=out, only=names, interval=interval, force=force)
    except ValueError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2)
    except StudyError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def grid(
    datasets: str = typer.Option(..., help="comma-separated dataset specs (elpv, textile, synth, <manifest>:PATH, ...)"),
    methods: str = typer.Option("knn", help="comma-separated registered methods"),
    shots: str = SHOTS,
    seeds: str = typer.Option("0,1,2", help="reference-draw seeds (one cell per method, dataset and seed)"),
    abnormal_shots: int = ABNORMAL_SHOTS,
    abnormal_source: str = ABNORMAL_SOURCE,
    protocol: str = PROTOCOL,
    checkpoint: list[str] = typer.Option([], help="METHOD=PATH: the saved model of a trained method "
                                                  "(`gad train --out PATH`), repeatable"),
    method_param: list[str] = typer.Option([], "--method-param", "-m",
                                           help="hyper-parameter KEY=VALUE for every method, repeatable"),
    workers: int = typer.Option(1, help="local processes running cells at once"),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address (tcp://host:8786): run the cells "
                                                       "on that cluster instead (needs gadlib[dask])"),
    out: Path = typer.Option(..., help="study folder: cells/<key>.csv, grid.json, tidy.csv"),
    metric: str = METRIC,
    quiet: bool = QUIET,
) -> None:
    """Run a study as a grid of resumable cells (methods x datasets x seeds); a re-run skips finished cells."""
    from gadlib.grid import make_grid, pending, run_grid
    from gadlib.methods import needs_training
    from gadlib.results import summary_table, to_markdown

    names = [m.strip() for m in methods.split(",") if m.strip()]
    saved = {}
    for item in checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).with_suffix(".json").is_file():
            typer.secho(f"error: --checkpoint takes METHOD=PATH of a saved model (PATH.json and "
                        f"PATH.safetensors); got '{item}'", fg="red", err=True)
            raise typer.Exit(2)
        saved[name] = path
    for name in names:
        try:
            trained = needs_training(name)
        except ValueError as err:
            typer.secho(f"error: {err}", fg="red", err=True)
            raise typer.Exit(2)
        if trained and name not in saved:
            typer.secho(f"error: {name} is trained: train it first (`gad train --method {name} --out PATH`) and "
                        f"pass --checkpoint {name}=PATH", fg="red", err=True)
            raise typer.Exit(2)
    params = _key_values(method_param, "--method-param")
    targets = {d.strip(): None for d in datasets.split(",") if d.strip()}
    smoke = dict(max_per_group=SMOKE_MAX_PER_GROUP) if _smoke() else {}
    cells = []
    for name in names:             # one make_grid per method: each has its own checkpoint
        cells += make_grid({name: (name, params)}, targets,
                           _ints(seeds, "--seeds"), _ints(shots, "--shots"), abnormal_shots=abnormal_shots,
                           abnormal_source=abnormal_source, protocol=protocol, checkpoint=saved.get(name), **smoke)
    typer.echo(f"{len(cells)} cells, {len(pending(cells, out))} to run")
    try:
        tidy = run_grid(cells, out, workers=workers, scheduler=scheduler, progress=not quiet)
    except (ValueError, FileNotFoundError) as err:
        typer.secho(f"error: {err} (finished cells are kept; run the same command again to resume)",
                    fg="red", err=True)
        raise typer.Exit(2)
    tidy.to_csv(out / "tidy.csv", index=False)
    typer.echo(to_markdown(summary_table(tidy, metric)))
    typer.echo(f"wrote {out}/tidy.csv")


@app.command()
def bench(
    methods: str = typer.Option(",".join(("knn", "resad", "inctrl", "nagl", "vod")), help="methods to time"),
    shots: str = typer.Option("1,2,4,8,16,32", help="numbers of normal references k"),
    dataset: str = typer.Option("textile", help="where the query and reference images come from"),
    queries: int = typer.Option(32, help="query images per measurement"),
    repeats: int = typer.Option(3, help="runs per measurement; times are their medians"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: CPU, and CUDA when present)"),
    out: Path = typer.Option(Path("results/bench"), help="folder for bench.csv, bench.md, cost_vs_k.png"),
    study: bool = typer.Option(False, help="time the first notebook of `make study`, cold and warm cache"),
    search: Optional[str] = typer.Option(
        None, help="compare nearest-neighbour searches (exact, float16, faiss, faiss-ivf) on these methods' "
                   "whole test set: time and AUROC change (e.g. knn,resad)"),
    search_shots: str = typer.Option("8,32", help="k for --search"),
    threads: Optional[str] = typer.Option(None, help="time --methods at k=8 with these torch thread counts, "
                                                     "e.g. 1,2 (writes threads.csv)"),
    layouts: bool = typer.Option(False, help="time study work (scoring cells, trainings) with 1 process x all "
                                             "threads against one process per core (writes layouts.csv)"),
):
    """Time each method against the backbone alone as k grows (a benchmark, not a test).

    With --threads, --search, --study or --layouts, those measurements run instead of the main bench.
    """
    from gadlib.bench import (bench_search, bench_table, bench_threads, run_bench, search_table,
                              threads_table, time_study)
    from gadlib.results import to_markdown

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if threads:
        counts = bench_threads(names, _ints(threads, "--threads"), dataset=dataset, queries=queries, out=out,
                               repeats=repeats)
        typer.echo(to_markdown(threads_table(counts)))
        typer.echo(f"wrote {out}/threads.csv, threads.md")
    if layouts:
        from gadlib.bench import bench_layouts, layouts_table

        typer.echo(to_markdown(layouts_table(bench_layouts(out=out))))
        typer.echo(f"wrote {out}/layouts.csv, layouts.md")
    if not (threads or search or study or layouts):
        table = run_bench(names, _ints(shots, "--shots"), dataset, queries, [device] if device else None, out=out,
                          repeats=repeats)
        typer.echo(to_markdown(bench_table(table)))
        typer.echo(f"wrote {out}/bench.csv, bench.md, cost_vs_k.png")
    if search:
        compared = bench_search([m.strip() for m in search.split(",") if m.strip()], None, dataset,
                                _ints(search_shots, "--search-shots"), out=out)
        typer.echo(to_markdown(search_table(compared)))
        typer.echo(f"wrote {out}/search.csv, search.md")
    if study:
        typer.echo(to_markdown(time_study(out=out).round(1)))
        typer.echo(f"wrote {out}/study_time.csv")


@app.command()
def headline(
    results: Path = typer.Option(Path("results/embedded"), help="the study's results folder"),
    out: Optional[Path] = typer.Option(None, help="Markdown file to write (default: RESULTS/headline.md)"),
) -> None:
    """The study in one table: each trained method against the best training-free baseline, per target."""
    from gadlib.compare import headline as make_headline, headline_markdown, read_tidy

    try:
        table = make_headline(read_tidy(root=results))
    except (ValueError, FileNotFoundError) as err:
        typer.secho(f"error: {err}; run `make study` first", fg="red", err=True)
        raise typer.Exit(2)
    out = out or results / "headline.md"
    out.write_text(headline_markdown(table))
    typer.echo(f"wrote {out}")


@app.command()
def reproduction(
    out: Path = typer.Option(Path("docs/reproduce.md"), help="Markdown page to write"),
) -> None:
    """The page that says how to reproduce each published figure: paper, commands, differences, status."""
    from gadlib.reproduce import reproduction_page

    out.write_text(reproduction_page())
    typer.echo(f"wrote {out}")


@app.command()
def report(
    out: Path = typer.Option(Path("build/report"), help="folder to write the HTML report into (emptied first)"),
    root: Optional[Path] = typer.Option(None, help="the repository to build from (default: this checkout)"),
) -> None:
    """The study as a static HTML site from the committed results and docs/ (runs no notebook)."""
    from gadlib.report import build_report

    built = build_report(out, root)
    for notebook in built.missing_notebooks:
        typer.echo(f"not in the results yet (its page says so): {notebook}")
    typer.echo(f"wrote {len(built.pages)} pages -> {out / 'index.html'}")
    if built.broken:
        typer.secho("broken links:\n  " + "\n  ".join(built.broken), fg="red", err=True)
        raise typer.Exit(1)


@app.command("embed")
def embed(
    table: Path = typer.Argument(..., help="a generated Markdown file, e.g. results/embedded/table_image_auroc.md"),
    readme: Path = typer.Argument(Path("README.md")),
    marker: str = typer.Option("embedded-table", help="name in the <!-- NAME:start/end --> markers"),
) -> None:
    """Copy a generated table into the README between its markers (README numbers stay generated)."""
    from gadlib.results import embed_in_readme

    if not table.is_file():
        typer.secho(f"error: {table}: no such table; run `make study` first", fg="red", err=True)
        raise typer.Exit(2)
    try:
        changed = embed_in_readme(readme, marker, table.read_text())
    except (ValueError, FileNotFoundError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(f"{readme}: {'updated' if changed else 'unchanged'}")


if __name__ == "__main__":  # pragma: no cover
    app()
