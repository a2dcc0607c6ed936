"""The Method protocol (scikit-learn habits) and the method registry (timm habits).

* ``__init__`` only stores hyper-parameters; ``get_params()`` reads them back from the signature.
* ``fit(source)`` learns from a source domain and returns ``self``; learned state ends in ``_``.
* ``predict(queries, references) -> Scores``: higher means more anomalous, always.
* ``save(path)`` / ``load(path)``: safetensors for the learned tensors plus a JSON of hyper-parameters.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch


@dataclass
class References:
    """The reference images that guide a prediction: k normal, optionally m abnormal (with masks)."""

    normal: list[str]
    abnormal: list[str] = field(default_factory=list)
    abnormal_masks: list[str | None] = field(default_factory=list)

    def masks(self) -> list[str | None]:
        """One mask path (or ``None``, image label only) per abnormal reference."""
        return list(self.abnormal_masks) + [None] * (len(self.abnormal) - len(self.abnormal_masks))

    @classmethod
    def from_episode(cls, episode) -> "References":
        return cls(list(episode.normal_refs), list(episode.abnormal_refs), list(episode.abnormal_masks))


@dataclass
class Scores:
    """Anomaly scores of N queries: ``image (N,)`` and ``pixel (N, H, W)`` or ``None``."""

    image: np.ndarray
    pixel: np.ndarray | None = None

    def __post_init__(self):
        self.image = np.asarray(self.image, dtype=np.float64)
        if self.image.ndim != 1:
            raise ValueError(f"Scores.image must be (N,), got shape {self.image.shape}")
        if self.pixel is not None and (self.pixel.ndim != 3 or len(self.pixel) != len(self.image)):
            raise ValueError(f"Scores.pixel must be (N, H, W) with N={len(self.image)}, got {self.pixel.shape}")


class Method:
    """Base class of every GAD method; subclasses register with :func:`register_method`."""

    name: str = "method"
    scoring_params: tuple[str, ...] = ()   # hyper-parameters that may change after fitting
    # False for methods that never look at abnormal references: their result store cells are shared by
    # episodes that differ only in those (e.g. m = 0 and m = 1 simulated references).
    reads_abnormal_references: bool = True
    # Seconds one default training takes on one core, for scheduling only: a pool of trainings starts the longest
    # first, so that its last tasks are short (:func:`gadlib.training.train_all`). Measured in the study
    # (``results/embedded/*/training.csv``); 0 for a method that trains nothing.
    training_seconds: float = 0.0

    def get_params(self) -> dict:
        """Hyper-parameters as given to ``__init__`` (scikit-learn style)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def config_label(self) -> str:
        """The method and the hyper-parameters it was given that differ from the defaults, e.g.
        ``resad(residual=none)``; what a result row says, so that variants of a method never read alike.
        Parameters that only change speed or printing are left out."""
        from gadlib.store import NOT_IN_KEY

        defaults = inspect.signature(type(self).__init__).parameters
        changed = {name: value for name, value in self.get_params().items()
                   if name not in NOT_IN_KEY and name in defaults and defaults[name].default != value}
        return self.name + ("(" + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())) + ")" if changed else "")

    def fit(self, source: pd.DataFrame | None = None) -> "Method":
        """Learn from a source domain; training-free methods fit nothing."""
        return self

    def predict(self, queries: Sequence[str], references: References, with_pixel: bool = True) -> Scores:
        """Score ``queries`` (image paths) guided by ``references``."""
        raise NotImplementedError

    def predict_shots(self, queries: Sequence[str], references: References, shots: Sequence[int],
                      with_pixel: bool = True) -> dict[int, Scores]:
        """Scores with the first k normal references for each k in ``shots`` (nested references).

        The default calls :meth:`predict` once per k; methods override it when they can share work.
        """
        return {k: self.predict(queries, References(list(references.normal[:k]), list(references.abnormal),
                                                    list(references.abnormal_masks)), with_pixel)
                for k in sorted(set(shots))}

    def with_params(self, **changes) -> "Method":
        """A new method with some hyper-parameters changed and this one's learned state.

        For a fitted method, only parameters that the learned state does not depend on (scoring rules,
        batch sizes), which methods list in ``scoring_params``; anything else needs a new ``fit``.
        A method with no learned state (training-free) may change any parameter.
        """
        unknown = set(changes) - set(self.get_params())
        if unknown:
            raise ValueError(f"{self.name}: unknown hyper-parameters {sorted(unknown)}")
        learned = set(changes) - set(self.scoring_params) - {"progress", "device"}
        if learned and self.fitted_state():
            raise ValueError(f"{self.name}: {sorted(learned)} change what fit() learns; fit a new model "
                             f"(parameters that can change after fitting: {sorted(self.scoring_params)})")
        method = create_method(self.name, **{**self.get_params(), **changes})
        method.load_fitted_state(self.fitted_state(), {"fit": getattr(self, "fit_record_", None)})
        return method

    # -- persistence -------------------------------------------------------------------------------
    def fitted_state(self) -> dict[str, torch.Tensor]:
        """Learned tensors: attributes ending in ``_`` that are tensors or modules (their state dicts)."""
        state: dict[str, torch.Tensor] = {}
        for attr, value in vars(self).items():
            if not attr.endswith("_") or attr.startswith("_"):
                continue
            if isinstance(value, torch.Tensor):
                state[attr] = value
            elif isinstance(value, torch.nn.Module):
                state.update({f"{attr}.{k}": v for k, v in value.state_dict().items()})
        return state

    def save(self, path: str | Path, **record) -> Path:
        """Write ``<path>.safetensors`` + ``<path>.json`` (hyper-parameters, class, extra ``record``)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        params = {k: v for k, v in self.get_params().items() if _jsonable(v)}
        # What fit() learnt besides tensors (training curve, source, backbone key): JSON beside them.
        meta = {"method": self.name, "params": params, "record": record, "fit": getattr(self, "fit_record_", None)}
        save_file({k: v.contiguous() for k, v in self.fitted_state().items()}, str(path.with_suffix(".safetensors")))
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, **overrides) -> "Method":
        """Re-create a saved method; ``overrides`` replace stored hyper-parameters (e.g. ``device``)."""
        from safetensors.torch import load_file

        path = Path(path)
        meta_file = path.with_suffix(".json")
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file}: checkpoint metadata not found (expected next to the .safetensors)")
        meta = json.loads(meta_file.read_text())
        method = create_method(meta["method"], **{**meta["params"], **overrides})
        method.load_fitted_state(load_file(str(path.with_suffix(".safetensors"))), meta)
        return method

    def load_fitted_state(self, state: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what :meth:`fitted_state` saved; methods with modules override this."""
        for key, value in state.items():
            setattr(self, key, value)


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available to :func:`create_method` under ``name``."""
    def wrap(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name '{name}' is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def list_methods() -> list[str]:
    """Registered method names."""
    return sorted(_REGISTRY)


def needs_training(name: str) -> bool:
    """Whether a registered method learns on a source (overrides :meth:`Method.fit`) before it can score."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; registered methods: {list_methods()}")
    return _REGISTRY[name].fit is not Method.fit


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; registered: {list_methods()}")
    return _REGISTRY[name]


def create_method(name: str, **params) -> Method:
    """Instantiate a registered method by name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; registered methods: {list_methods()}")
    return _REGISTRY[name](**params)
