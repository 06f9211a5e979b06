"""``data.second_caption``: a second caption per image and its loss added (Long-CLIP, DeBias-CLIP)."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_RUN
from contrastkit.data import ContrastiveDataset, get_source
from contrastkit.errors import InputError
from contrastkit.losses import clip_loss
from contrastkit.train.config import ConfigError, load_config
from contrastkit.train.objective import build_objective
from contrastkit.train.pipeline import SECOND_CAPTION, second_caption_transform
from contrastkit.train.setup import build_run_model
from contrastkit.train.trainer import train

LONG = [*TINY_RUN, "data.caption_sentences=null", "loss.options={label_smoothing: 0.1}"]


@pytest.mark.parametrize("kind", ["first_sentence", "debias"])
def test_a_run_trains_on_both_captions(tmp_path, kind):
    metrics = train(load_config(None, [*LONG, f"data.second_caption={kind}"]), tmp_path)
    assert metrics["train/steps"] == 6


def test_the_objective_is_the_sum_of_the_two_caption_losses():
    config = load_config(None, [*LONG, "data.second_caption=first_sentence"])
    model, _ = build_run_model(config, get_source("shapes", "train", n=32), None)
    objective = build_objective(config, model)
    g = torch.Generator().manual_seed(0)
    image, text, short = (
        torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1) for _ in range(3)
    )
    got = objective({"image": image, "text": text, SECOND_CAPTION: short}, {})
    scale = model.scale()
    want = clip_loss(image, text, scale, label_smoothing=0.1) + clip_loss(
        image, short, scale, label_smoothing=0.1
    )
    torch.testing.assert_close(got, want)


def test_the_second_caption_is_derived_from_the_same_record():
    source = get_source("shapes", "train", n=4)
    data = ContrastiveDataset(
        source,
        {"image": lambda x: torch.zeros(1), "text": lambda t: t},
        0,
        {SECOND_CAPTION: ("text", second_caption_transform("first_sentence"))},
    )
    item = data[0]
    assert item["text"].startswith(item[SECOND_CAPTION].rstrip("."))
    assert item[SECOND_CAPTION].count(".") == 1
    debias = second_caption_transform("debias")
    text = source[0]["text"]
    first = text.split(". ")[0]
    assert first not in debias(text, generator=torch.Generator().manual_seed(1))
    with pytest.raises(InputError, match="derived outputs"):
        ContrastiveDataset(source, None, 0, {"text": ("text", str)})


def test_a_second_caption_needs_an_image_text_clip_or_siglip_model():
    config = load_config(None, [*LONG, "data.second_caption=debias", "loss.name=info_nce", "loss.options={}"])
    model, _ = build_run_model(config, get_source("shapes", "train", n=32), None)
    with pytest.raises(ConfigError, match="data.second_caption"):
        build_objective(config, model)
    with pytest.raises(ConfigError, match="data.second_caption: expected one of"):
        load_config(None, [*TINY_RUN, "data.second_caption=both"])
