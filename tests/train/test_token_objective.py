"""``loss.token_weight``: MoBind's global + w * token objective for two series towers."""

from __future__ import annotations

import copy
import csv

import pytest
import torch

from contrastkit.data.dataset import _DEFAULTS
from contrastkit.data.sources import Source
from contrastkit.data.transforms import SeriesTransform
from contrastkit.errors import InputError
from contrastkit.losses import clip_loss
from contrastkit.losses.tokens import token_info_nce
from contrastkit.models import ContrastiveModel, build_model
from contrastkit.models.contrastive import tokens_key
from contrastkit.models.series import SeriesCNN, SeriesPatchTransformer
from contrastkit.train import trainer as trainer_module
from contrastkit.train.config import ConfigError, load_config
from contrastkit.train.objective import build_objective
from contrastkit.train.trainer import Trainer

TOWER = "{type: series_patch, in_channels: 3, patch_size: 4, dim: 16, depth: 1, heads: 2, max_patches: 8}"
TOKEN_RUN = [
    f"model={{towers: {{accel: {TOWER}, gyro: {TOWER}}}, embed_dim: 8, token_heads: true}}",
    "loss.token_weight=0.5",
    "data.eval=null",
    "train.batch_size=8",
    "train.steps=2",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.progress=false",
    "optim.warmup_steps=1",
]


class TwoSensorSource(Source):
    """Synthetic paired sensors: gyro is a noisy derivative-like copy of accel, (3, 24) each."""

    name = "two_sensors"
    modalities = ("accel", "gyro")

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.accel = torch.randn(n, 3, 24, generator=g).cumsum(dim=2)
        self.gyro = self.accel.diff(dim=2, prepend=self.accel[:, :, :1]) + 0.1 * torch.randn(
            n, 3, 24, generator=g
        )

    def __len__(self) -> int:
        return self.accel.shape[0]

    def _record(self, index: int) -> dict:
        return {"accel": self.accel[index].numpy(), "gyro": self.gyro[index].numpy()}


@pytest.fixture
def two_sensor_data(monkeypatch):
    """The trainer reads TwoSensorSource; its two series modalities get the series transform
    (the data layer knows one "series" modality, so the test registers these two)."""
    monkeypatch.setattr(trainer_module, "build_source", lambda *args, **kwargs: TwoSensorSource())
    monkeypatch.setitem(_DEFAULTS, "accel", SeriesTransform)
    monkeypatch.setitem(_DEFAULTS, "gyro", SeriesTransform)


def test_the_logged_loss_is_clip_plus_half_the_token_loss(tmp_path, two_sensor_data, monkeypatch):
    config = load_config(None, TOKEN_RUN)
    trainer = Trainer(config, tmp_path / "run")
    before = copy.deepcopy(trainer.model)
    batches = []
    take_batch = trainer._batch

    def recording():
        batch, sizes = take_batch()
        batches.append(batch)
        return batch, sizes

    monkeypatch.setattr(trainer, "_batch", recording)
    trainer.fit()
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        logged = float(next(csv.DictReader(f))["loss"])

    with torch.no_grad():
        z = before(batches[0], tokens=True)
        scale = before.scale()
        global_only = clip_loss(z["accel"], z["gyro"], scale)
        by_hand = global_only + 0.5 * token_info_nce(z[tokens_key("accel")], z[tokens_key("gyro")], scale)
    assert z[tokens_key("accel")].shape == (8, 6, 8)  # T = 24, patch 4 -> 6 tokens
    assert logged == pytest.approx(float(by_hand), rel=1e-5)
    assert logged != pytest.approx(float(global_only), rel=1e-3)  # the token term is really there
    heads = [n for n, p in trainer.model.named_parameters() if n.startswith("token_heads.")]
    assert heads and all(p.grad is not None for n, p in trainer.model.named_parameters() if n in heads)


def test_objective_on_one_batch_adds_the_weighted_token_loss():
    config = load_config(None, [*TOKEN_RUN[:1], "loss.token_weight=0.25"])
    model = build_model(config.model)
    objective = build_objective(config, model)
    assert objective.uses_tokens and objective.uses_scale
    g = torch.Generator().manual_seed(1)
    batch = {"accel": torch.randn(5, 3, 20, generator=g), "gyro": torch.randn(5, 3, 20, generator=g)}
    z = model(batch, tokens=True)
    want = clip_loss(z["accel"], z["gyro"], model.scale()) + 0.25 * token_info_nce(
        z[tokens_key("accel")], z[tokens_key("gyro")], model.scale()
    )
    torch.testing.assert_close(objective(z, batch), want)
    plain = build_objective(load_config(None, TOKEN_RUN[:1]), model)
    assert not plain.uses_tokens
    torch.testing.assert_close(plain(z, batch), clip_loss(z["accel"], z["gyro"], model.scale()))


def test_token_outputs_of_the_model():
    tower = SeriesPatchTransformer(3, patch_size=4, dim=16, depth=1, heads=2, max_patches=8)
    pooled, tokens = tower.forward_with_tokens(torch.randn(2, 3, 22))
    assert pooled.shape == (2, 16) and tokens.shape == (2, 6, 16) and tower.token_dim == 16
    model = ContrastiveModel({"a": tower, "b": copy.deepcopy(tower)}, embed_dim=8, token_heads=True)
    z, t = model.encode_with_tokens("a", torch.randn(2, 3, 22))
    assert z.shape == (2, 8) and t.shape == (2, 6, 8)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2, 6))
    x = torch.randn(2, 3, 22)
    torch.testing.assert_close(model.encode_with_tokens("a", x)[0], model.encode("a", x))
    assert set(model({"a": x, "b": x}, tokens=True)) == {"a", "b", "a.tokens", "b.tokens"}


def test_token_option_errors():
    with pytest.raises(ConfigError, match="model.token_heads: true"):
        load_config(None, [f"model={{towers: {{accel: {TOWER}, gyro: {TOWER}}}}}", "loss.token_weight=0.5"])
    with pytest.raises(ConfigError, match="loss.token_weight: must be >= 0"):
        load_config(None, ["loss.token_weight=-1"])
    with pytest.raises(InputError, match="token_heads=True needs towers that expose their tokens"):
        ContrastiveModel(
            {"a": SeriesCNN(3, width=4, depth=1), "b": SeriesCNN(3, width=4, depth=1)}, token_heads=True
        )
    tower = SeriesPatchTransformer(3, patch_size=4, dim=16, depth=1, heads=2, max_patches=8)
    plain = ContrastiveModel({"a": tower}, embed_dim=8)
    with pytest.raises(InputError, match="without token heads"):
        plain.encode_with_tokens("a", torch.randn(2, 3, 8))
    config = load_config(None, [*TOKEN_RUN[:2], "loss.name=supcon"])
    with pytest.raises(ConfigError, match="loss.token_weight"):
        build_objective(config, build_model(config.model))


def uneven_ranks_task(rank, world, sizes):
    """Rank r: the objective on its rows of one global batch, gradients averaged as DDP does;
    next to the single-process gradient of global + 0.5 * token on the whole batch."""
    import torch.distributed as dist

    config = load_config(None, TOKEN_RUN[:2])
    torch.manual_seed(0)
    model = build_model(config.model).double()
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    batch = {m: torch.randn(sum(sizes), 3, 16, generator=g, dtype=torch.float64) for m in ("accel", "gyro")}
    rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    objective = build_objective(config, model)
    local = {m: x[rows] for m, x in batch.items()}
    objective(model(local, tokens=True), local).backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world
    z = reference(batch, tokens=True)
    scale = reference.scale()
    want = clip_loss(z["accel"], z["gyro"], scale) + 0.5 * token_info_nce(
        z[tokens_key("accel")], z[tokens_key("gyro")], scale
    )
    want.backward()
    return [
        (n, p.grad.numpy(), q.grad.numpy())
        for (n, p), q in zip(model.named_parameters(), reference.parameters(), strict=True)
    ]


def test_token_weight_is_exact_on_uneven_torchrun_slices(pool):
    import numpy as np

    for name, got, want in pool.run(uneven_ranks_task, (2, 5))[0]:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=name)


def test_tokens_of_the_wrong_shape_are_named():
    tower = SeriesPatchTransformer(3, patch_size=4, dim=16, depth=1, heads=2, max_patches=8)
    model = ContrastiveModel({"a": tower}, embed_dim=8, token_heads=True)
    pooled_and_tokens = tower.forward_with_tokens
    tower.forward_with_tokens = lambda x: (pooled_and_tokens(x)[0], pooled_and_tokens(x)[1][..., :5])
    with pytest.raises(InputError, match=r"must return float \(B, N, 16\) tokens"):
        model.encode_with_tokens("a", torch.randn(2, 3, 8))
