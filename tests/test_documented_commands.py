"""Every `gad` command written in the README and docs/ is one the CLI accepts (issue 19, first part).

The commands are read from the Markdown's fenced ``bash`` blocks, so they cannot drift from what is tested:
each must parse (command, options, option types), and every ``-m KEY=VALUE`` must name a hyper-parameter of
the method it is given to. Running them at tiny scale on dummy data trees is the next step.
"""
from __future__ import annotations

import importlib
import inspect
import re
import shlex
from pathlib import Path

import pytest
import typer

from gadlib.cli import app

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
    assert any(w.startswith("docs/methods.md") for w in where)


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
