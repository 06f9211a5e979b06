"""ContrastiveModel and ProjectionHead: encode, forward, scale and bias, freezing, param groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from contrastkit import InputError, clip_loss, siglip_loss
from contrastkit.models import ContrastiveModel, ImageCNN, ProjectionHead, SeriesCNN, TextTransformer


def pair_batch(b: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(b, 5, dtype=torch.long)
    mask[0, 3:] = 0
    return {
        "image": torch.randn(b, 3, 8, 8, generator=g),
        "text": {"input_ids": torch.randint(1, 40, (b, 5), generator=g) * mask, "attention_mask": mask},
        "label": torch.arange(b),
        "index": torch.arange(b),
        "group": list(range(b)),
    }


def make_model(**kwargs) -> ContrastiveModel:
    torch.manual_seed(0)
    towers = {
        "image": ImageCNN(width=4, depth=2, output_dim=12, norm=kwargs.pop("norm", "group")),
        "text": TextTransformer(40, max_length=8, dim=16, depth=1, heads=2),
    }
    return ContrastiveModel(towers, embed_dim=kwargs.pop("embed_dim", 8), **kwargs)


class FixedTower(nn.Module):
    """A tower returning a preset output, to reach the output checks of encode."""

    def __init__(self, out: object, output_dim: int = 4) -> None:
        super().__init__()
        self.out, self.output_dim = out, output_dim
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, batch):
        return self.out


def test_forward_embeds_every_present_modality_with_unit_rows():
    model = make_model()
    z = model(pair_batch())
    assert list(z) == ["image", "text"]
    for emb in z.values():
        assert emb.shape == (4, 8) and emb.dtype == torch.float32
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    only_text = model({"text": pair_batch()["text"]})
    assert list(only_text) == ["text"]
    torch.testing.assert_close(only_text["text"], z["text"])


def test_forward_aliases_embed_a_second_input_with_a_tower():
    model = make_model()
    batch = pair_batch()
    z = model({**batch, "text2": batch["text"]}, aliases={"text2": "text"})
    assert list(z) == ["image", "text", "text2"]
    torch.testing.assert_close(z["text2"], z["text"])
    with pytest.raises(InputError, match="alias 'text2' -> 'audio'"):
        model({**batch, "text2": batch["text"]}, aliases={"text2": "audio"})
    with pytest.raises(InputError, match="alias 'text3'"):
        model(batch, aliases={"text3": "text"})


def test_encode_normalize_false_is_the_head_output():
    model = make_model()
    batch = pair_batch()
    raw = model.encode("image", batch["image"], normalize=False)
    manual = model.heads["image"](model.towers["image"](batch["image"]))
    torch.testing.assert_close(raw, manual)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(model.encode("image", batch["image"]), raw / raw.norm(dim=1, keepdim=True))
    assert model.modalities == ("image", "text") and model.embed_dim == 8


def test_scale_starts_at_inverse_temperature_and_is_clamped_in_place():
    model = make_model(init_temperature=0.07, max_scale=50.0)
    s = model.scale()
    assert float(s.detach()) == pytest.approx(1 / 0.07) and s.requires_grad
    with torch.no_grad():
        model.logit_scale.log_scale.fill_(10.0)
    assert float(model.scale().detach()) == pytest.approx(50.0)
    assert float(model.logit_scale.log_scale.detach()) == pytest.approx(math.log(50.0))
    with torch.no_grad():
        model.logit_scale.log_scale.fill_(-3.0)
    assert float(model.scale().detach()) == pytest.approx(1.0)
    assert model.bias() is None


def test_fixed_scale_and_sigmoid_bias():
    model = make_model(learn_scale=False, init_bias=-10.0, init_temperature=0.1)
    assert not any(p is model.logit_scale.log_scale for p in model.parameters())
    assert float(model.scale().detach()) == pytest.approx(10.0) and not model.scale().requires_grad
    assert isinstance(model.bias(), nn.Parameter) and float(model.bias().detach()) == -10.0
    assert model.bias().no_weight_decay is True
    z = model(pair_batch())
    siglip_loss(z["image"], z["text"], model.scale(), model.bias()).backward()
    assert model.bias().grad is not None and "bias=-10" in repr(model)


def test_end_to_end_clip_step_reaches_all_trainable_parameters():
    model = make_model()
    z = model(pair_batch())
    clip_loss(z["image"], z["text"], model.scale()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_tower_has_no_grad_and_stays_in_eval_mode():
    model = make_model(frozen=["image"], norm="batch")
    tower = model.towers["image"]
    assert all(not p.requires_grad for p in tower.parameters())
    assert all(p.requires_grad for p in model.heads["image"].parameters())
    model.train()
    assert model.training and model.towers["text"].training and not tower.training
    assert all(not m.training for m in tower.modules())
    stats = [m.running_mean.clone() for m in tower.modules() if isinstance(m, nn.BatchNorm2d)]
    z = model(pair_batch())
    clip_loss(z["image"], z["text"], model.scale()).backward()
    after = [m.running_mean for m in tower.modules() if isinstance(m, nn.BatchNorm2d)]
    for a, b in zip(stats, after, strict=True):
        torch.testing.assert_close(a, b)  # eval mode: running statistics untouched
    assert all(p.grad is None for p in tower.parameters())
    assert model.heads["image"].net[1].weight.grad is not None
    model.eval()
    assert not model.training and not tower.training
    frozen_ids = {id(p) for p in tower.parameters()}
    grouped = [p for g in model.param_groups(0.1) for p in g["params"]]
    assert not frozen_ids & {id(p) for p in grouped}
    assert "frozen=['image']" in repr(model)


def test_param_groups_split_decay_from_no_decay():
    model = make_model(init_bias=-10.0)
    groups = model.param_groups(0.2)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert [g["weight_decay"] for g in groups] == [0.2, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert decay.isdisjoint(no_decay) and decay | no_decay == set(names.values())
    assert {"logit_scale.log_scale", "logit_bias", "towers.text.pos_embed"} <= no_decay
    assert "towers.text.encoder.norm.weight" in no_decay  # a 1-d norm gain
    assert "heads.image.net.1.bias" in no_decay
    assert "towers.text.token_embed.weight" in decay and "heads.text.net.1.weight" in decay
    assert all(p.dim() >= 2 for p in groups[0]["params"])
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    z = model(pair_batch())
    clip_loss(z["image"], z["text"], model.scale()).backward()
    optimizer.step()


def test_param_groups_drop_empty_groups_and_check_weight_decay():
    model = ContrastiveModel({"x": FixedTower(torch.zeros(2, 4))}, embed_dim=4, projection="none")
    model.towers["x"].w.no_weight_decay = False
    assert [g["name"] for g in model.param_groups(0.1)] == ["no_decay"]
    with pytest.raises(InputError, match="'weight_decay' must be finite and >= 0"):
        model.param_groups(-0.1)


@pytest.mark.parametrize(
    "projection, kinds",
    [
        ("mlp", {"image": "mlp", "text": "mlp"}),
        ({"image": "none"}, {"image": "none", "text": "linear"}),
        ({"text": {"kind": "mlp", "hidden": 32, "dropout": 0.1}}, {"image": "linear", "text": "mlp"}),
    ],
)
def test_projection_per_modality(projection, kinds):
    model = make_model(projection=projection, embed_dim=12)
    assert {m: h.kind for m, h in model.heads.items()} == kinds
    assert model(pair_batch())["text"].shape == (4, 12)


def test_projection_head_kinds():
    x = torch.randn(5, 6)
    assert ProjectionHead(6, 3)(x).shape == (5, 3)
    mlp = ProjectionHead(6, 3, kind="mlp", hidden=10, dropout=0.5)
    assert mlp.net[0].out_features == 10 and mlp(x).shape == (5, 3)
    assert ProjectionHead(6, 3, kind="mlp").net[0].out_features == 6
    assert torch.equal(ProjectionHead(6, 6, kind="none")(x), x)
    assert "kind='mlp'" in repr(mlp)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "deep"}, "'kind' must be one of 'linear', 'mlp', 'none'"),
        ({"hidden": 4}, "'hidden' applies to kind='mlp' only"),
        ({"kind": "none"}, "needs in_dim == out_dim"),
        ({"dropout": -0.1}, "'dropout'"),
        ({"out_dim": 0}, "'out_dim'"),
    ],
)
def test_projection_head_bad_configuration(kwargs, match):
    with pytest.raises(InputError, match=match):
        ProjectionHead(**{"in_dim": 6, "out_dim": 3, **kwargs})


@pytest.mark.parametrize(
    "towers, kwargs, match",
    [
        ({}, {}, "non-empty dict"),
        ([ImageCNN()], {}, "non-empty dict"),
        ({"image": "cnn"}, {}, "must be an nn.Module"),
        ({"image": nn.Linear(2, 2)}, {}, "int attribute 'output_dim'"),
        ({"a.b": SeriesCNN(2, width=4, depth=1)}, {}, "modality name 'a.b'"),
        ({"label": SeriesCNN(2, width=4, depth=1)}, {}, "modality name 'label'"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"init_temperature": 0.0}, "'init_temperature'"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"init_temperature": 2.0}, r"\[1/max_scale, 1\]"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"init_temperature": 0.001}, r"\[0.01, 1\]"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"max_scale": 0.5}, "'max_scale'"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"learn_scale": "yes"}, "'learn_scale'"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"init_bias": "x"}, "'init_bias'"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"frozen": ["image"]}, r"unknown modalities \['image'\]"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"frozen": "s"}, "list of modality names"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"projection": {"t": "mlp"}}, r"unknown modalities \['t'\]"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"projection": 3}, "'projection' must be a head kind"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"projection": {"s": 3}}, "ProjectionHead options"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"projection": "conv"}, "'kind' must be one of"),
        ({"s": SeriesCNN(2, width=4, depth=1)}, {"embed_dim": 0}, "'embed_dim'"),
    ],
)
def test_bad_model_configuration(towers, kwargs, match):
    with pytest.raises(InputError, match=match):
        ContrastiveModel(towers, **kwargs)


def test_encode_and_forward_reject_bad_calls():
    model = make_model()
    batch = pair_batch()
    with pytest.raises(InputError, match=r"unknown modality 'audio'; the model has \['image', 'text'\]"):
        model.encode("audio", batch["image"])
    with pytest.raises(InputError, match="'normalize'"):
        model.encode("image", batch["image"], normalize=1)
    with pytest.raises(InputError, match="must be a dict"):
        model([batch["image"]])
    with pytest.raises(InputError, match=r"none of the model's modalities \['image', 'text'\].*'label'"):
        model({"label": batch["label"], "series": torch.zeros(2)})
    with pytest.raises(InputError, match="same size B"):
        model({"image": batch["image"][:3], "text": batch["text"]})
    with pytest.raises(InputError, match="ImageCNN"):  # the tower's own check surfaces unchanged
        model({"image": batch["image"][:, :1]})


@pytest.mark.parametrize(
    "out, match",
    [
        (torch.zeros(2, 5), r"shape \(2, 5\)"),
        (torch.zeros(2, 4, 1), r"shape \(2, 4, 1\)"),
        (torch.zeros(2, 4, dtype=torch.long), "torch.int64"),
        ((torch.zeros(2, 4),), "got tuple"),
    ],
)
def test_encode_checks_the_tower_contract(out, match):
    model = ContrastiveModel({"x": FixedTower(out)}, embed_dim=4)
    expected = f"tower 'x' \\(FixedTower\\) must return a float \\(B, 4\\).*{match}"
    with pytest.raises(InputError, match=expected):
        model.encode("x", None)


def test_param_groups_survive_a_deep_copy():
    import copy

    model = make_model(init_bias=-10.0)
    names = [
        [n for n, p in model.named_parameters() if any(p is q for q in g["params"])]
        for g in model.param_groups(0.1)
    ]
    twin = copy.deepcopy(model)  # an EMA teacher, say: Parameter attributes do not survive this
    twin_names = [
        [n for n, p in twin.named_parameters() if any(p is q for q in g["params"])]
        for g in twin.param_groups(0.1)
    ]
    assert twin_names == names
