"""MultiModalProjectionAligner: frozen encoders, trainable heads, one clamped scale per pair."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit import InputError
from contrastkit.losses import multimodal_info_nce
from contrastkit.models import MultiModalProjectionAligner, ProjectionHead, SeriesCNN


class _Linear(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_out), nn.Dropout(0.5))
        self.output_dim = d_out

    def forward(self, x):
        return self.net(x)


def _aligner(**kw) -> MultiModalProjectionAligner:
    torch.manual_seed(0)
    enc = {"ts": SeriesCNN(1, width=4, depth=2), "image": _Linear(6, 5), "text": _Linear(7, 3)}
    return MultiModalProjectionAligner(enc, kw.pop("head_dims", 8), **kw)


def _batch(b: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "ts": torch.randn(b, 1, 12, generator=g),
        "image": torch.randn(b, 6, generator=g),
        "text": torch.randn(b, 7, generator=g),
    }


def test_only_heads_and_scales_train_and_encoders_stay_in_eval_mode():
    aligner = _aligner()
    trainable = {n for n, p in aligner.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("heads.", "scales.")) for n in trainable)
    assert sorted(aligner.scales) == ["image|text", "ts|image", "ts|text"]
    aligner.train()
    assert not aligner.encoders.training and aligner.heads.training
    z = aligner(_batch())
    assert set(z) == {"ts", "image", "text"}
    for v in z.values():
        assert v.shape == (6, 8)
        torch.testing.assert_close(v.norm(dim=1), torch.ones(6))
    loss = aligner.loss(z)
    loss.backward()
    assert all(p.grad is None for p in aligner.encoders.parameters())
    assert all(p.grad is not None for p in aligner.heads.parameters())
    assert all(s.log_scale.grad is not None for s in aligner.scales.values())


def test_loss_is_multimodal_info_nce_with_the_pair_scales():
    aligner = _aligner(init_temperature=0.1)
    z = aligner(_batch())
    scales = aligner.pair_scales()
    assert list(scales) == [("ts", "image"), ("ts", "text"), ("image", "text")]
    assert all(float(s.detach()) == pytest.approx(10.0) for s in scales.values())
    torch.testing.assert_close(aligner.loss(z), multimodal_info_nce(z, {p: 10.0 for p in scales}))


def test_project_equals_forward_on_precomputed_features_and_mlp_heads():
    aligner = _aligner(head_dims=(16, 4)).eval()
    batch = _batch()
    feats = {m: aligner.features(m, batch[m]) for m in aligner.modalities}
    assert not feats["ts"].requires_grad
    z, z2 = aligner(batch), aligner.project(feats)
    for m in z:
        torch.testing.assert_close(z[m], z2[m])
    assert isinstance(aligner.heads["ts"], ProjectionHead) and aligner.heads["ts"].kind == "mlp"
    raw = aligner.project({"text": feats["text"]}, normalize=False)["text"]
    torch.testing.assert_close(F.normalize(raw, dim=1), z["text"])


def test_pairs_and_scale_clamp():
    aligner = _aligner(pairs=[("ts", "image"), ("image", "text")], max_scale=50.0)
    assert list(aligner.pair_scales()) == [("ts", "image"), ("image", "text")]
    with torch.no_grad():
        aligner.scales["ts|image"].log_scale.fill_(10.0)
    assert float(aligner.pair_scales()[("ts", "image")].detach()) == pytest.approx(50.0)
    assert float(aligner.scales["ts|image"].log_scale.detach()) == pytest.approx(math.log(50.0))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: MultiModalProjectionAligner({"ts": _Linear(2, 2)}, 4), "at least two"),
        (lambda: MultiModalProjectionAligner({"a": _Linear(2, 2), "b": nn.Linear(2, 2)}, 4), "output_dim"),
        (lambda: MultiModalProjectionAligner({"a": _Linear(2, 2), "b": _Linear(2, 2)}, "x"), "'head_dims'"),
        (
            lambda: MultiModalProjectionAligner({"a": _Linear(2, 2), "b": _Linear(2, 2)}, 4, [("a", "c")]),
            "unknown modalities",
        ),
        (
            lambda: MultiModalProjectionAligner(
                {"a": _Linear(2, 2), "b": _Linear(2, 2)}, 4, init_temperature=0.001
            ),
            "init_temperature",
        ),
    ],
)
def test_bad_construction_raises(build, match):
    with pytest.raises(InputError, match=match):
        build()


def test_bad_calls_raise():
    aligner = _aligner()
    with pytest.raises(InputError, match="unknown modality 'audio'"):
        aligner.project({"audio": torch.zeros(2, 3)})
    with pytest.raises(InputError, match="must be a \\(B, 5\\) tensor"):
        aligner.project({"image": torch.zeros(2, 4)})
    with pytest.raises(InputError, match="none of the modalities"):
        aligner({"audio": torch.zeros(2, 3)})
