"""`gad train --dry-run` (gadlib.dryrun): the plan's numbers are those of the model a real run trains."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from gadlib.cli import app
from gadlib.dryrun import count, dry_run
from gadlib.training import train_or_load

SMALL = dict(image_size=64, epochs=1, steps_per_epoch=1, simulated_per_category=2)


@pytest.mark.parametrize("method, modules", [("resad", ("constraintors_", "flows_")), ("nagl", ("network_",)),
                                             ("inctrl", ("heads_",)), ("vod", ("head_",))])
def test_planned_parameters_are_the_trained_models(tiny_suite, method, modules):
    root, _ = tiny_suite
    plan = dry_run(method, SMALL)
    model, _ = train_or_load(method, f"synth:{root}", ["tile"], SMALL, progress=False)
    assert plan.parameters == sum(count(getattr(model, name)) for name in modules)
    assert [(l["channels"], l["height"], l["width"], l["stride"]) for l in plan.levels] == [(40, 8, 8, 8),
                                                                                            (112, 4, 4, 16)]
    assert plan.memory_mib > 0 and all(v > 0 for v in plan.per_step.values())


def test_resad_positions_per_step_follow_batch_grid_and_cap():
    plan = dry_run("resad", dict(image_size=64, batch_size=16, max_flow_positions=500, train_shots=4))
    assert plan.per_step["level 2: query cells through the constraintor"] == 16 * 8 * 8
    assert plan.per_step["level 2: positions through the flow (max_flow_positions)"] == 500       # capped
    assert plan.per_step["level 3: positions through the flow (max_flow_positions)"] == 16 * 4 * 4
    assert plan.per_step["level 2: reference cells searched per query cell"] == 4 * 8 * 8
    bigger = dry_run("resad", dict(image_size=128, batch_size=16, max_flow_positions=10**6, train_shots=4))
    assert bigger.memory_mib > plan.memory_mib and bigger.parameters == plan.parameters


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    result = CliRunner().invoke(app, ["train", "--method", "nagl", "--dry-run", "--image-size", "64",
                                      "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "trainable parameters" in result.output and "Residual Mining" in result.output
    assert "memory per step (estimate)" in result.output and not list(tmp_path.iterdir())
    for argv, message in ((["--method", "knn"], "not trained"), (["--method", "resad", "--backbone", "resnet18"],
                                                                  "weights")):
        bad = CliRunner().invoke(app, ["train", "--dry-run", *argv])
        assert bad.exit_code == 2 and message in bad.output


def test_a_local_weights_file_is_sized_like_the_papers_configurations(tmp_path):
    import timm

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)   # random, same shapes
    # ResAD's paper: layers 1-3 of the ResNet, timm indices 1, 2, 3 (index 0 is the stem)
    plan = dry_run("resad", dict(backbone="resnet18", backbone_weights=str(weights), image_size=224,
                                 levels=[1, 2, 3]))
    assert [(l["channels"], l["height"], l["stride"]) for l in plan.levels] == [(64, 56, 4), (128, 28, 8),
                                                                                (256, 14, 16)]
    assert len([name for name in plan.modules if name.startswith("flow")]) == 3
    default = dry_run("inctrl", dict(backbone="resnet18", backbone_weights=str(weights), image_size=224))
    assert [l["stride"] for l in default.levels] == [8, 16]           # PatchCore's layer2 and layer3


def test_default_levels_of_the_resnets_are_patchcores_layer2_and_layer3():
    import timm

    from gadlib.backbones import DEFAULT_LEVELS

    for name in ("wide_resnet50_2", "resnet18"):
        model = timm.create_model(name, features_only=True, pretrained=False, out_indices=DEFAULT_LEVELS[name])
        assert model.feature_info.module_name() == ["layer2", "layer3"], name
        assert model.feature_info.reduction() == [8, 16]
