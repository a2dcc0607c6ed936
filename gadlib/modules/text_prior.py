"""InCTRL's text prior: CLIP zero-shot score from normal and anomalous prompt ensembles (open_clip).

Needs the optional ``open_clip_torch`` package (``pip install -e ".[clip]"``) and *local* CLIP
weights (nothing is downloaded): ``-m text_weights=/path/to/open_clip_pytorch_model.bin``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

STATES = {
    "normal": ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
               "{} without damage"],
    "anomalous": ["damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"],
}
TEMPLATES = ["a photo of a {}.", "a cropped photo of the {}.", "a close-up photo of a {}.",
             "a bright photo of a {}.", "a dark photo of the {}.", "a photo of the {} for visual inspection."]


def prompts(state: str, subject: str = "object") -> list[str]:
    """The prompt ensemble of one state (``"normal"`` or ``"anomalous"``) for ``subject``."""
    if state not in STATES:
        raise ValueError(f"state must be one of {sorted(STATES)}, got '{state}'")
    return [template.format(phrase.format(subject)) for phrase in STATES[state] for template in TEMPLATES]


def zero_shot_score(image_embeddings: torch.Tensor, normal_text: torch.Tensor, anomalous_text: torch.Tensor,
                    temperature: float = 100.0) -> torch.Tensor:
    """Probability of "anomalous": softmax over the two mean prompt embeddings. ``(B, C) -> (B,)``."""
    text = torch.stack([F.normalize(normal_text, dim=-1).mean(0), F.normalize(anomalous_text, dim=-1).mean(0)])
    logits = temperature * F.normalize(image_embeddings, dim=-1) @ F.normalize(text, dim=-1).T
    return logits.softmax(dim=-1)[:, 1]


class TextPrior:
    """CLIP image and text towers from local open_clip weights; scores image files.

    A file's score depends on the file alone, so each is computed once and kept (``scores_``): InCTRL asks for
    the same source images at every training step and every source-statistics episode, which cost one CLIP
    forward pass per query per step (16,000 passes for the paper's 10 x 100 steps of 16 queries) before.
    """

    def __init__(self, model_name: str, weights: str | Path, device: str | torch.device = "cpu"):
        try:
            import open_clip
        except ImportError as err:
            raise ImportError("InCTRL's text prior needs open_clip: pip install -e '.[clip]' "
                              "(or leave text_weights unset for InCTRL-vision)") from err
        if not Path(weights).is_file():
            raise FileNotFoundError(f"{weights}: CLIP weights not found; pass a local open_clip checkpoint "
                                    f"for '{model_name}' (nothing is downloaded)")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(weights))
        self.model.to(device).eval()
        tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.scores_: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            self.text = {state: self.model.encode_text(tokenizer(prompts(state)).to(device)) for state in STATES}

    @torch.inference_mode()
    def score_paths(self, paths: Sequence[str]) -> torch.Tensor:
        """``(len(paths),)`` probabilities of "anomalous"; files scored before are not encoded again."""
        from PIL import Image

        missing = list(dict.fromkeys(str(p) for p in paths if str(p) not in self.scores_))
        if missing:
            images = torch.stack([self.preprocess(Image.open(p).convert("RGB")) for p in missing]).to(self.device)
            scores = zero_shot_score(self.model.encode_image(images), self.text["normal"], self.text["anomalous"])
            self.scores_.update(zip(missing, scores))
        return torch.stack([self.scores_[str(p)] for p in paths])


_SHARED: dict = {}


def shared_text_prior(model_name: str, weights: str | Path, device) -> TextPrior:
    """One loaded CLIP model per (architecture, weights, device) in this process."""
    key = (model_name, str(weights), str(device))
    if key not in _SHARED:
        _SHARED[key] = TextPrior(model_name, weights, device)
    return _SHARED[key]
