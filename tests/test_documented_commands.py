"""Every `gad` command written in the README and docs/ is one the CLI accepts (issue 19, first part).

The commands are read from the Markdown's fenced ``bash`` blocks, so they cannot drift from what is tested:
each must parse (command, options, option types), and every ``-m KEY=VALUE`` must name a hyper-parameter of
the method it is given to. Then each is *run*, at tiny scale on dummy data trees (see the second half).
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import typer

from gadlib.cli import SMOKE_TRAINING, app
from gadlib.reproduce import REPRODUCTIONS

# The click that typer vendors (typer._click): its usage errors are what a wrong command line raises.
_CLICK = importlib.import_module(type(typer.main.get_command(app)).__mro__[1].__module__.rsplit(".", 1)[0])
UsageError = importlib.import_module(_CLICK.__name__ + ".exceptions").UsageError

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands(paths=DOCUMENTS) -> list[tuple[str, list[str]]]:
    """``(where, argv after "gad")`` for each `.venv/bin/gad` command in the fenced bash blocks of ``paths``."""
    found = []
    for path in paths:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] == [".venv/bin/gad"] and "..." not in words:
                    found.append((f"{path.relative_to(ROOT)}: {' '.join(words[1:3])}", words[1:]))
    return found


def parse(argv: list[str]):
    """Parse ``gad ARGV`` as the CLI would (no command runs); returns the innermost command's context.

    A wrong command, option or option value raises the CLI's usage error (typer's own click)."""
    command, args, context, name = typer.main.get_command(app), list(argv), None, "gad"
    while hasattr(command, "list_commands"):                     # a group: step into the named command
        context = command.make_context(name, args[:1], parent=context)
        sub = command.get_command(context, args[0]) if args else None
        if sub is None:
            raise UsageError(f"no command {args[:1]} under {name!r}")
        command, name, args = sub, args[0], args[1:]
    return command.make_context(name, args, parent=context)


def _method_keys(context: click.Context) -> tuple[str | None, list[str]]:
    params = context.params
    keys = [item.split("=", 1)[0] for item in params.get("method_param") or []]
    method = params.get("method")
    return method, keys


COMMANDS = documented_commands()


def test_the_documents_hold_the_commands_users_copy():
    where = [w for w, _ in COMMANDS]
    assert len(COMMANDS) >= 12
    assert sum("train" in w for w in where) >= 4               # the study's own, and the papers' ResAD, NAGL, InCTRL
    assert sum(w.startswith("docs/reproduce.md") for w in where) == 2 * len(REPRODUCTIONS)


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses_and_names_real_hyper_parameters(where, argv):
    from gadlib.methods.base import method_class

    context = parse(argv)
    method, keys = _method_keys(context)
    if keys:
        accepted = set(inspect.signature(method_class(method).__init__).parameters) - {"self"}
        unknown = [key for key in keys if key not in accepted]
        assert not unknown, f"{where}: -m {unknown} are not hyper-parameters of {method}"


def test_a_changed_flag_or_hyper_parameter_is_caught():
    from gadlib.methods.base import method_class

    where, argv = next((w, a) for w, a in COMMANDS if "--shots" in a)
    with pytest.raises(UsageError, match="--shot"):
        parse([word.replace("--shots", "--shot") for word in argv])
    with pytest.raises(UsageError, match="valid integer"):
        parse(argv + ["--image-size", "big"])
    with pytest.raises(UsageError, match="evaluat"):
        parse(["evaluat"] + argv[1:])
    _, argv = next((w, a) for w, a in COMMANDS if "-m" in a and "nagl" in a)
    renamed = [word.replace("neighbourhood=", "neighborhood=") for word in argv]
    method, keys = _method_keys(parse(renamed))
    assert "neighborhood" not in inspect.signature(method_class(method).__init__).parameters


# -- every command runs (issue 19) ------------------------------------------------------------------------------
# Each documented command is run as written, in document order (a `train` before the `evaluate` that reads its
# checkpoint), with three things replaced: the data paths by dummy trees in the real layouts, the weights files
# by *randomly initialised* weights of the same architectures, and the run's length by GADLIB_SMOKE=1 (one
# training step, at most 8 images per category, split and label; see gadlib.cli). Image sizes, levels and
# backbones stay as written, so every shape is the real one. Slow (the papers' backbones on a CPU): one module-
# scoped run serves every assertion.
DATA = {"/data/mvtec_anomaly_detection": "mvtec_anomaly_detection", "/data/visa": "VisA",
        "/data/my_parts": "my_parts", "/data/MedIAnomaly-Data/RSNA": "MedIAnomaly-Data/RSNA",
        "/data/BMAD/Brain": "BMAD/Brain"}
# engine.md's grid reads a ResAD model from an earlier run of the user's: the README's is that model here
STAND_INS = {"runs/resad/model": "checkpoints/resad_synth"}


def _image(path: Path, rng, anomalous: bool = False, mode: str = "RGB") -> None:
    from PIL import Image
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(60, 120, size=(32, 32, 3), dtype=np.uint8)
    if anomalous:
        pixels[10:20, 12:22] = 250
    Image.fromarray(pixels if mode == "RGB" else pixels[..., 0]).save(path)


def _mask(path: Path, value: int = 255) -> None:
    from PIL import Image
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[10:20, 12:22] = value
    Image.fromarray(mask).save(path)


def make_dummy_data(root: Path) -> None:
    """MVTec AD, an MVTec-style folder, VisA (original layout, split_csv/1cls.csv), MedIAnomaly's RSNA (data.json)
    and BMAD's BraTS: one category each, 9 normal training images (k = 8 references), a few test images."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    for tree in ("mvtec_anomaly_detection", "my_parts"):
        for category in ("bottle",):
            base = root / tree / category
            for i in range(9):
                _image(base / f"train/good/{i:03d}.png", rng)
            for i in range(3):
                _image(base / f"test/good/{i:03d}.png", rng)
                _image(base / f"test/scratch/{i:03d}.png", rng, anomalous=True)
                _mask(base / f"ground_truth/scratch/{i:03d}_mask.png")
    visa, rows = root / "VisA", ["object,split,label,image,mask"]
    for category in ("candle",):
        for i in range(12):
            rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            _image(visa / rel, rng)
            rows.append(f"{category},{'train' if i < 9 else 'test'},normal,{rel},")
        anno = ["image,label,mask"]
        for i in range(4):
            rel, mask = f"{category}/Data/Images/Anomaly/{i:03d}.JPG", f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            _image(visa / rel, rng, anomalous=True)
            _mask(visa / mask, 1)                   # VisA's masks hold class values, not 255
            rows.append(f"{category},test,anomaly,{rel},{mask}")
            anno.append(f"{rel},{'scratch' if i % 2 else 'spot'},{mask}")
        (visa / category / "image_anno.csv").write_text("\n".join(anno) + "\n")
    (visa / "split_csv").mkdir()
    (visa / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    rsna = root / "MedIAnomaly-Data/RSNA"
    split = {"train": {"0": [f"n{i}.png" for i in range(9)]},
             "test": {"0": [f"t{i}.png" for i in range(4)], "1": [f"a{i}.png" for i in range(4)]}}
    for names, anomalous in ((split["train"]["0"] + split["test"]["0"], False), (split["test"]["1"], True)):
        for name in names:
            _image(rsna / "images" / name, rng, anomalous, mode="L")
    (rsna / "data.json").write_text(json.dumps(split))
    brain = root / "BMAD/Brain"
    for i in range(9):
        _image(brain / f"train/good/img/{i:05d}_60.png", rng, mode="L")
    for i in range(3):
        _image(brain / f"test/good/img/{i:05d}_70.png", rng, mode="L")
        _image(brain / f"test/Ungood/img/{i:05d}_80.png", rng, anomalous=True, mode="L")
        _mask(brain / f"test/Ungood/label/{i:05d}_80.png")


def random_weights(stem: str, folder: Path) -> Path:
    """A weights file for ``stem``: a timm architecture's randomly initialised state dict (.safetensors), or,
    for an open_clip checkpoint's name (``<architecture>_<tag>.pt``), that architecture's random weights."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    if stem.endswith(".pt"):
        import open_clip

        model = open_clip.create_model(stem.split("_")[0], pretrained=None)
        path = folder / stem
        torch.save(model.state_dict(), path)
        return path
    import timm
    from safetensors.torch import save_file

    model = timm.create_model(stem.removesuffix(".safetensors"), pretrained=False)
    path = folder / stem
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def smoke_argv(argv: list[str], workdir: Path) -> list[str]:
    """``argv`` with its data paths, weights files and stand-ins replaced (see above)."""
    out = []
    for word in argv:
        for path, tree in DATA.items():
            word = word.replace(path, str(workdir / "data" / tree))
        for stand_in, real in STAND_INS.items():
            word = word.replace(stand_in, real)
        if "/path/to/" in word:
            head, _, stem = word.partition("/path/to/")
            word = head + str(random_weights(stem, workdir / "weights"))
        out.append(word)
    return out


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _paths_read_and_written(argv: list[str]) -> tuple[set[str], set[str]]:
    """The checkpoint paths a command reads (``--checkpoint [METHOD=]PATH``) and the path it writes (``--out``)."""
    read = {argv[i + 1].partition("=")[2] or argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--checkpoint"}
    return read, ({argv[argv.index("--out") + 1]} if "--out" in argv else set())


def command_chains(argvs: list[list[str]]) -> list[list[int]]:
    """Indices of ``argvs`` grouped into chains that must run in order: a command joins the chain of every earlier
    command whose output it reads or writes again; chains are independent of each other."""
    chain_of, chains = {}, []
    paths = [_paths_read_and_written(argv) for argv in argvs]
    for index, (read, written) in enumerate(paths):
        joined = sorted({chain_of[j] for j in range(index) if paths[j][1] & (read | written)})
        if not joined:
            chains.append([index])
            chain_of[index] = len(chains) - 1
            continue
        first = joined[0]
        for other in joined[1:]:                        # merge chains this command links
            chains[first] += chains[other]
            for member in chains[other]:
                chain_of[member] = first
            chains[other] = []
        chains[first].append(index)
        chain_of[index] = first
    return [sorted(chain) for chain in chains if chain]


def test_commands_are_chained_by_the_checkpoints_they_write_and_read():
    argvs = [["train", "--out", "a"], ["evaluate", "--checkpoint", "a", "--out", "r1"], ["data", "list"],
             ["train", "--out", "b"], ["grid", "--checkpoint", "resad=b", "--out", "g"],
             ["train", "--out", "a"], ["evaluate", "--checkpoint", "a", "--out", "r2"]]
    assert command_chains(argvs) == [[0, 1, 5, 6], [2], [3, 4]]


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every documented command, as run: ``[(argv, completed process, seconds, working folder)]`` in document
    order. Independent chains of commands run two at a time, one torch thread each (the machine's two cores)."""
    import os
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    workdir = tmp_path_factory.mktemp("documented_commands")
    make_dummy_data(workdir / "data")
    gad = Path(sys.executable).with_name("gad")
    env = dict(os.environ, GADLIB_SMOKE="1", OMP_NUM_THREADS="1")
    argvs = [smoke_argv(argv, workdir) for _, argv in COMMANDS]         # writes the random weights first
    runs = [None] * len(argvs)

    def run_chain(chain):
        for index in chain:
            argv = argvs[index]
            started = time.perf_counter()
            done = subprocess.run([str(gad), *argv, *(["--quiet"] if argv[0] in ("train", "evaluate", "grid") else [])],
                                  cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
            runs[index] = (argv, done, time.perf_counter() - started, workdir)

    chains = sorted(command_chains(argvs), key=len, reverse=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(run_chain, chains))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[w for w, _ in COMMANDS])
def test_every_documented_command_runs_and_writes_what_the_docs_say(smoke_runs, index):
    argv, done, seconds, workdir = smoke_runs[index]
    output = done.stdout + done.stderr
    if argv[:2] == ["data", "verify"]:
        # one category of fifteen: verify exits 1 and names the missing ones (exit 0 needs the whole dataset)
        assert done.returncode == 1, output
        missing = output.split("missing categories")[1].split("]")[0]
        assert "screw" in missing and "bottle" not in missing
        return
    assert done.returncode == 0, f"gad {' '.join(argv)} exited {done.returncode}:\n{output[-3000:]}"
    assert "GADLIB_SMOKE is set" in output or argv[0] == "data"
    if argv[0] == "data":
        assert "mvtec_ad" in done.stdout and "medianomaly_rsna" in done.stdout
    elif argv[0] == "train":
        out = workdir / _option(argv, "--out")
        assert out.with_suffix(".safetensors").is_file() and out.with_suffix(".json").is_file()
        meta = json.loads(out.with_suffix(".json").read_text())
        cut = {k: meta["params"][k] for k in SMOKE_TRAINING if k in meta["params"]}
        assert cut == {k: v for k, v in SMOKE_TRAINING.items() if k in cut} and {"epochs", "steps_per_epoch"} <= set(cut)
        for key in ("backbone", "image_size"):
            if f"--{key.replace('_', '-')}" in argv:
                assert str(meta["params"][key]) == _option(argv, f"--{key.replace('_', '-')}")
    else:
        out = workdir / _option(argv, "--out")
        tidy = pd.read_csv(out / "tidy.csv")
        shots = sorted(int(k) for k in (_option(argv, "--shots") or "1,2,4,8").split(","))
        seeds = sorted(int(s) for s in (_option(argv, "--seeds") or "0,1,2").split(","))
        assert sorted(tidy["shots"].unique()) == shots and sorted(tidy["seed"].unique()) == seeds
        assert tidy.loc[tidy["metric"] == "image_auroc", "value"].between(0, 1).all()
        if argv[0] == "grid":
            assert set(tidy["method"]) == set(_option(argv, "--methods").split(","))
