"""InCTRL's text prior through open_clip, with a tiny randomly initialised CLIP saved as 'local weights'."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                             "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    (folder / "gadlib-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / "gadlib-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("gadlib-tiny-clip", pretrained=None)
    torch.save(model.state_dict(), folder / "weights.bin")
    return str(folder / "weights.bin")


def test_text_prior_scores_images_as_probabilities(clip_weights, tiny_suite):
    from gadlib.modules.text_prior import TextPrior

    _, frame = tiny_suite
    paths = frame["image_path"].head(5).tolist()
    prior = TextPrior("gadlib-tiny-clip", clip_weights)
    scores = prior.score_paths(paths)
    assert scores.shape == (5,) and ((scores > 0) & (scores < 1)).all()
    # each file is encoded once: asked again, in another order and with repeats, the same numbers come back
    calls = []
    encode = prior.model.encode_image
    prior.model.encode_image = lambda images: calls.append(len(images)) or encode(images)
    again = prior.score_paths(paths[::-1] + paths[:1])
    assert calls == [] and torch.equal(again, torch.cat([scores.flip(0), scores[:1]]))
    fresh = TextPrior("gadlib-tiny-clip", clip_weights).score_paths(paths[2:4])
    assert torch.allclose(fresh, scores[2:4], atol=1e-6)


def test_inctrl_with_the_text_prior_trains_scores_and_names_itself(clip_weights, tiny_suite):
    from gadlib.data.references import sample_episode
    from gadlib.methods import References, create_method

    _, frame = tiny_suite
    params = dict(image_size=64, epochs=1, steps_per_epoch=3, simulated_per_category=2, progress=False)
    model = create_method("inctrl", text_weights=clip_weights, clip_model="gadlib-tiny-clip", **params)
    model.fit(frame[frame["category"] == "tile"])
    assert model.variant == "InCTRL" and model.fit_record_["variant"] == "InCTRL"
    episode = sample_episode(frame, "screw", 2, seed=0, dataset="tiny")
    with_text = model.predict(episode.queries, References.from_episode(episode))
    assert np.isfinite(with_text.image).all() and with_text.image.shape == (len(episode.queries),)
    assert create_method("inctrl", **params).variant == "InCTRL-vision"
