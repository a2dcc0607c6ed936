"""Execute parameterised notebooks with papermill into an atomically replaced results folder."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from gadlib.results import atomic_folder


def run_notebook(notebook: str | Path, out: str | Path, parameters: dict | None = None,
                 kernel_name: str = "python3") -> Path:
    """Run ``notebook`` with ``parameters`` (plus ``out_dir``); return the executed copy's final path.

    The notebook writes its tables and figures into ``out_dir``; papermill writes the executed copy
    beside them. Everything lands in a temporary folder that replaces ``out`` only on success.
    """
    import papermill
    from traitlets.config import Config

    # The kernel talks to papermill over local sockets. Over TCP (the default) every kernel warns that the
    # traffic is unencrypted; IPC sockets are files, so there is nothing to warn about. They would be created
    # in the notebook's folder (and left there by a killed kernel), so they go to a private temporary folder.
    # Windows has no IPC transport and keeps TCP.
    config = Config()
    notebook, out = Path(notebook).resolve(), Path(out).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: notebook not found")
    with atomic_folder(out) as folder, tempfile.TemporaryDirectory(prefix="gadlib-kernel-") as sockets:
        if os.name == "posix":
            config.KernelManager.transport = "ipc"
            config.KernelManager.ip = os.path.join(sockets, "kernel-ipc")
        start = time.perf_counter()
        papermill.execute_notebook(str(notebook), str(folder / notebook.name),
                                   parameters=dict(parameters or {}, out_dir=str(folder)),
                                   kernel_name=kernel_name, cwd=str(notebook.parent.resolve()),
                                   progress_bar=False, config=config)
        (folder / "runtime_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        drop_widget_state(folder / notebook.name)
    return out / notebook.name


def drop_widget_state(path: str | Path) -> None:
    """Remove the saved state of a notebook's widgets (its progress bars' and controls'): a static copy
    cannot drive them, and it is most of an executed notebook's size (0.9 MB of the normal-and-abnormal one)."""
    import json

    path = Path(path)
    notebook = json.loads(path.read_text())
    if notebook.get("metadata", {}).pop("widgets", None) is not None:
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
