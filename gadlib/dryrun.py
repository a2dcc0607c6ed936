"""`gad train --dry-run`: size a training run before starting it (on a GPU, or before hours on a CPU).

For one configuration it builds the backbone (with the weights the real run would use) and the method's
trainable modules, runs one zero image through the backbone, and reports without training or reading data:

* the backbone's feature shape per level (channels, height, width, stride);
* the trainable parameters per module;
* the positions (patches, tokens) one training step puts through each flow, attention or head;
* an estimate of the memory one step needs: parameters with gradients and Adam's two moments, plus the
  activations of the step's positions (a rough upper bound: every block's input and output kept for the
  backward pass), in MiB.

The memory figure is an estimate to size a GPU run, not a measurement; the parameter counts are exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

BYTES = 4                      # float32
OPTIMISER_COPIES = 4           # weights, gradients, Adam's first and second moments


@dataclass
class Plan:
    """What one training step of a configuration holds."""

    method: str
    backbone: str
    image_size: int
    levels: list[dict] = field(default_factory=list)          # level, channels, height, width, stride
    modules: dict[str, int] = field(default_factory=dict)     # trainable module -> parameters
    per_step: dict[str, int] = field(default_factory=dict)    # block -> positions (or tokens) per step
    activation_values: int = 0                                # floats kept for the backward pass, per step

    @property
    def parameters(self) -> int:
        return sum(self.modules.values())

    @property
    def memory_mib(self) -> float:
        return (self.parameters * OPTIMISER_COPIES + self.activation_values) * BYTES / 2**20

    def lines(self) -> list[str]:
        """The plan as the terminal shows it."""
        out = [f"{self.method} on {self.backbone} at {self.image_size} px (dry run: nothing is trained)",
               "backbone levels:"]
        out += [f"  level {l['level']}: {l['channels']} x {l['height']} x {l['width']} (stride {l['stride']})"
                for l in self.levels]
        out.append(f"trainable parameters: {self.parameters:,}")
        out += [f"  {name}: {count:,}" for name, count in self.modules.items()]
        out.append("positions per training step:")
        out += [f"  {name}: {count:,}" for name, count in self.per_step.items()]
        out.append(f"memory per step (estimate): {self.memory_mib:,.0f} MiB "
                   f"(parameters x {OPTIMISER_COPIES} + activations, float32)")
        return out


def count(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def dry_run(method: str, params: dict | None = None) -> Plan:
    """The :class:`Plan` of training ``method`` with ``params`` (the backbone's weights are loaded as for a real
    run: a missing weights file is the same error). Methods without training raise ``ValueError``."""
    from gadlib.methods import create_method

    model = create_method(method, **dict(params or {}), progress=False)
    if not hasattr(model, "plan"):
        raise ValueError(f"'{method}' is not trained: there is nothing to size (it needs no `gad train`)")
    backbone = model.feature_cache().backbone
    size = backbone.preprocess.image_size
    with torch.no_grad():
        levels = [level.float() for level in backbone(torch.zeros(1, 3, size, size))]
    plan = Plan(method, backbone.name, size, [
        dict(level=index, channels=level.shape[1], height=level.shape[2], width=level.shape[3], stride=stride)
        for index, level, stride in zip(backbone.levels, levels, backbone.strides)])
    model.plan(levels, plan)
    return plan
