"""How to reproduce each published figure of :mod:`gadlib.published` with gadlib: the page ``docs/reproduce.md``.

One :class:`Reproduction` per (method, dataset) of :data:`~gadlib.published.PUBLISHED`: the paper and table,
the exact ``gad`` commands with the user's own data and weights paths, what gadlib does differently from the
paper's own code, and its status here. :func:`reproduction_page` renders them; ``gad reproduction`` writes the
page, and a test keeps the committed page equal to it. The commands sit in the page's ``bash`` blocks, so the
documented-commands test parses them and runs each one at tiny scale (``GADLIB_SMOKE=1``, dummy trees, random
weights of the same architectures).
"""
from __future__ import annotations

from dataclasses import dataclass

from gadlib.published import PUBLISHED

GAD = ".venv/bin/gad"
NOT_RUN = "not run: needs {data} and a GPU (none was lent to this project)"

# The papers' training configurations (docs/methods.md gives the same commands): one string each, continued
# over lines as a user types them.
RESAD_BACKBONE = ("--backbone wide_resnet50_2 --backbone-weights /path/to/wide_resnet50_2.safetensors \\\n"
                  "    -m 'levels=[1, 2, 3]' -m position_dim=256 -m flow_blocks=8 -m epochs=100 -m steps_per_epoch=54 \\\n"
                  "    -m batch_size=32 -m lr=1e-5 -m max_flow_positions=1000000")
NAGL_BACKBONE = ("--backbone vit_small_patch14_dinov2 --backbone-weights /path/to/vit_small_patch14_dinov2.safetensors \\\n"
                 "    --image-size 448 -m 'levels=[11]' -m neighbourhood=1 -m epochs=20 -m steps_per_epoch=500 -m lr=1e-5 \\\n"
                 "    -m train_abnormal_shots=1")
INCTRL_BACKBONE = ("--backbone vit_base_patch16_plus_clip_240 --backbone-weights "
                   "/path/to/vit_base_patch16_plus_clip_240.safetensors \\\n"
                   "    --image-size 240 -m 'levels=[6, 8, 10]' -m neighbourhood=1 \\\n"
                   "    -m text_weights=/path/to/ViT-B-16-plus-240_laion400m_e31.pt")
MVTEC, VISA, BRATS = ("mvtec_ad:/data/mvtec_anomaly_detection", "visa:/data/visa", "brats_bmad:/data/BMAD/Brain")


def _train(method: str, source: str, backbone: str, out: str) -> str:
    return f"{GAD} train --method {method} --source {source} \\\n    {backbone} \\\n    --out {out}"


def _evaluate(dataset: str, checkpoint: str, shots: str, out: str, extra: str = "") -> str:
    return (f"{GAD} evaluate --dataset {dataset} --checkpoint {checkpoint} --shots {shots} --seeds 0,1,2 \\\n"
            f"    {extra + ' ' if extra else ''}--out {out}")


@dataclass(frozen=True)
class Reproduction:
    """How one (method, dataset) row of published figures is reproduced."""

    method: str
    dataset: str
    paper: str
    commands: tuple[str, ...]
    differences: str
    status: str

    @property
    def figures(self) -> str:
        """The published figures, e.g. ``image AUROC 83.9 / 84.6 / 87.2 (k = 2 / 4 / 8)``."""
        parts = []
        for (method, dataset, metric), entry in PUBLISHED.items():
            if (method, dataset) == (self.method, self.dataset):
                shots = " / ".join(map(str, entry["values"]))
                values = " / ".join(f"{100 * v:.1f}" for v in entry["values"].values())
                parts.append(f"{metric.replace('_', ' ').replace('auroc', 'AUROC')} {values} (k = {shots})")
        return "; ".join(parts)

    @property
    def anchor(self) -> str:
        """The id of the reproduction's section (an explicit anchor: renderers slug headings differently)."""
        return f"{self.method}-{self.dataset}".lower().replace("_", "-")


_NAGL_DIFF = ("the abnormal reference is of the query's defect type, as in the paper (`--protocol type-matched`), but "
              "never the query itself, and it is never scored (the public code scores it); attention masks per "
              "sample and position codes per "
              "reference (its two batching bugs are switches `faithful_mask_order`, `faithful_positions`, off); "
              "the last epoch is the model (the public code picks a checkpoint on target test data)")
_RESAD_DIFF = ("the paper's residual (query − nearest; the public code squares it: `residual=squared`), the paper's "
               "one-class loss (`constraint_loss=shell` for the code's), the score normalised by a constant fixed "
               "on the source (the code's maximum over the target test set is `normalization=transductive`), every "
               "level's flow trained (the code never trains level 3), no normal-only warm-up epochs")
_INCTRL_DIFF = ("one model for every k (the paper trains one per k); losses on probabilities once and per-query "
                "reshapes (the code's double sigmoid and query-mixing reshape are `faithful_double_sigmoid`, "
                "`faithful_reshape`, off); the last epoch is the model (the code's was picked by hand)")

def _nagl(dataset: str, table: str, source: tuple[str, str], target: tuple[str, str], shots: str, data: str,
          note: str = "") -> Reproduction:
    """NAGL's reproductions differ only in source, target, k and the data needed: train on ``source``, score
    ``target`` with one type-matched abnormal reference. ``source`` / ``target``: (dataset spec, short name)."""
    checkpoint = f"checkpoints/nagl_{source[1]}"
    return Reproduction("NAGL", dataset, f"NAGL, NeurIPS 2025, {table}",
                        (_train("nagl", source[0], NAGL_BACKBONE, checkpoint),
                         _evaluate(target[0], checkpoint, shots, f"runs/{target[1]}_nagl",
                                   "--abnormal-shots 1 --protocol type-matched")),
                        _NAGL_DIFF + note, NOT_RUN.format(data=data + ", DINOv2 ViT-S/14 weights"))


REPRODUCTIONS: tuple[Reproduction, ...] = (
    Reproduction(
        "InCTRL", "elpv", "Zhu & Pang, CVPR 2024, Table 1 (ELPV column)",
        (_train("inctrl", MVTEC, INCTRL_BACKBONE, "checkpoints/inctrl_mvtec"),
         _evaluate("elpv", "checkpoints/inctrl_mvtec", "2,4,8", "runs/elpv_inctrl")),
        _INCTRL_DIFF + "; ELPV split as InCTRL's `convert_elpv.py` (the same 377 normal test cells)",
        NOT_RUN.format(data="MVTec AD, CLIP ViT-B/16+ weights (open_clip)")),
    _nagl("mvtec_ad", "main table (N^k + A^1, trained on VisA)", (VISA, "visa"), (MVTEC, "mvtec"), "1,4",
          "MVTec AD, VisA"),
    _nagl("visa", "main table (N^k + A^1, trained on MVTec AD)", (MVTEC, "mvtec"), (VISA, "visa"), "1,4",
          "MVTec AD, VisA"),
    _nagl("brats", "medical table (N^4 + A^1, trained on MVTec AD)", (MVTEC, "mvtec"), (BRATS, "brats"), "4",
          "MVTec AD, BMAD's BraTS", "; BraTS as BMAD's slices (`brats_bmad`)"),
    Reproduction(
        "ResAD", "mvtec_ad", "Yao et al., NeurIPS 2024, Table 1 (trained on VisA)",
        (_train("resad", VISA, RESAD_BACKBONE, "checkpoints/resad_visa"),
         _evaluate(MVTEC, "checkpoints/resad_visa", "2,4", "runs/mvtec_resad")),
        _RESAD_DIFF, NOT_RUN.format(data="MVTec AD, VisA, WideResNet50-2 weights")),
    Reproduction(
        "ResAD", "visa", "Yao et al., NeurIPS 2024, Table 1 (trained on MVTec AD)",
        (_train("resad", MVTEC, RESAD_BACKBONE, "checkpoints/resad_mvtec"),
         _evaluate(VISA, "checkpoints/resad_mvtec", "2,4", "runs/visa_resad")),
        _RESAD_DIFF, NOT_RUN.format(data="MVTec AD, VisA, WideResNet50-2 weights")),
)


def check_covers_published(reproductions=REPRODUCTIONS) -> None:
    """Every (method, dataset) of PUBLISHED has exactly one reproduction, and nothing else does."""
    published = {(method, dataset) for method, dataset, _ in PUBLISHED}
    listed = [(r.method, r.dataset) for r in reproductions]
    if sorted(set(listed)) != sorted(published) or len(listed) != len(set(listed)):
        raise ValueError(f"reproductions {sorted(listed)} do not match the published figures {sorted(published)}")


def reproduction_page(reproductions=REPRODUCTIONS) -> str:
    """The Markdown of ``docs/reproduce.md``: the table, then each reproduction's commands."""
    check_covers_published(reproductions)
    lines = [
        "# Reproducing the papers' figures",
        "",
        "*Part of the gadlib study; start at the [README](../README.md). Written by `gad reproduction` from "
        "`gadlib/reproduce.py` and `gadlib/published.py`; do not edit by hand.*",
        "",
        "Each published figure the study quotes (`gadlib.published`, shown only as labelled reference columns), "
        "the exact commands that reproduce it with your own copies of the data and weights, and what gadlib does "
        "differently from the paper's own code. Published values are percentages, mean over the target's "
        "categories. Every command below is run by the tests at tiny scale (`GADLIB_SMOKE=1`, dummy trees in the "
        "real layouts, randomly initialised weights of the same architectures), so it runs as written; "
        "`gad train --dry-run` sizes it for your GPU first.",
        "",
        "| method | paper, table | published | commands | differs from the paper's code | status here |",
        "|---|---|---|---|---|---|",
    ]
    for r in reproductions:
        lines.append(f"| {r.method} on {r.dataset} | {r.paper} | {r.figures} | [below](#{r.anchor}) | "
                     f"{r.differences} | {r.status} |")
    for r in reproductions:
        lines += ["", f'<a id="{r.anchor}"></a>', "", f"## {r.method} on {r.dataset}", "",
                  f"{r.paper}: {r.figures}.", "", "```bash", *r.commands, "```"]
    return "\n".join(lines) + "\n"
