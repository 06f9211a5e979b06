"""dense_info_nce, channel_dropout and WeightedMultiLevelContrast (DeCon, METHODS 3.15) against
float64 loop references written from the formulas."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from conftest import assert_matches_reference, loop_dot, loop_lse
from contrastkit.errors import InputError
from contrastkit.losses.dense import WeightedMultiLevelContrast, channel_dropout, dense_info_nce


def _maps(
    b: int, c: int, h: int, w: int, seed: int, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f1, f2 = torch.randn(2, b, c, h, w, generator=g, dtype=dtype).unbind(0)
    return f1.requires_grad_(), f2.requires_grad_()


# ---------------------------------------------------------------- loop reference


def ref_dense_info_nce(
    f1: torch.Tensor,
    f2: torch.Tensor,
    temperature: float,
    negatives: str = "batch",
    normalize: bool = True,
    reduction: str = "mean",
    locations: list[list[int]] | None = None,
) -> torch.Tensor:
    """L_u = LSE_{v in N(u)} <z1_u, z2_v>/tau - <z1_u, z2_u>/tau over locations u = (b, h*W + w)."""
    b, c, h, w = f1.shape
    if locations is None:
        locations = [list(range(h * w))] * b

    def vec(f, i, loc):
        v = torch.stack([f[i, ch, loc // w, loc % w] for ch in range(c)])
        if normalize:
            v = v / torch.sqrt(loop_dot(v, v))
        return v

    losses = []
    for i in range(b):
        row = []
        for loc in locations[i]:
            q = vec(f1, i, loc)
            images = [i] if negatives == "image" else range(b)
            cands = [loop_dot(q, vec(f2, j, m)) / temperature for j in images for m in locations[j]]
            row.append(loop_lse(cands) - loop_dot(q, vec(f2, i, loc)) / temperature)
        losses.append(torch.stack(row))
    table = torch.stack(losses)
    if reduction == "none":
        return table
    return table.sum() if reduction == "sum" else table.sum() / table.numel()


# ---------------------------------------------------------------- dense_info_nce


@pytest.mark.parametrize("negatives", ["batch", "image"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dense_info_nce_matches_loop_reference(negatives: str, reduction: str) -> None:
    f1, f2 = _maps(2, 3, 2, 3, seed=0)

    def loss(a, b):
        return dense_info_nce(a, b, 0.2, negatives=negatives, reduction=reduction)

    def ref(a, b):
        return ref_dense_info_nce(a, b, 0.2, negatives, reduction=reduction)

    if reduction == "none":
        torch.testing.assert_close(loss(f1, f2), ref(f1, f2), rtol=1e-6, atol=0)
        f1.grad = None
        assert_matches_reference(
            lambda a, b: loss(a, b).square().sum(),
            lambda a, b: ref(a, b).square().sum(),
            f1,
            f2,
            rtol=1e-6,
            atol=1e-12,
        )
    else:
        assert_matches_reference(loss, ref, f1, f2, rtol=1e-6, atol=1e-12)


def test_dense_info_nce_without_normalisation_and_tiled() -> None:
    f1, f2 = _maps(2, 4, 2, 2, seed=1)
    want = ref_dense_info_nce(f1, f2, 0.5, normalize=False)
    got = dense_info_nce(f1, f2, 0.5, normalize=False)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    tiled = dense_info_nce(f1, f2, 0.5, normalize=False, chunk_size=3)
    torch.testing.assert_close(tiled, want, rtol=1e-6, atol=0)


def test_dense_info_nce_sampled_locations_match_reference_on_the_same_sample() -> None:
    f1, f2 = _maps(3, 2, 3, 3, seed=2)
    got = dense_info_nce(f1, f2, 0.1, max_locations=4, generator=torch.Generator().manual_seed(7))
    keep = torch.rand(3, 9, generator=torch.Generator().manual_seed(7)).argsort(dim=1)[:, :4]
    want = ref_dense_info_nce(f1, f2, 0.1, locations=keep.tolist())
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    again = dense_info_nce(f1, f2, 0.1, max_locations=4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, again)
    # max_locations >= H*W keeps everything
    torch.testing.assert_close(dense_info_nce(f1, f2, 0.1, max_locations=9), dense_info_nce(f1, f2, 0.1))


def test_dense_info_nce_hand_computed_case() -> None:
    # identical one-hot locations: every candidate but the positive is orthogonal -> log(1 + (N-1) e^{-1/tau})
    eye = torch.eye(4, dtype=torch.float64).T.reshape(1, 4, 2, 2)
    got = dense_info_nce(eye, eye.clone(), 0.5)
    torch.testing.assert_close(got, torch.tensor(math.log(1 + 3 * math.exp(-2.0)), dtype=torch.float64))


def test_dense_info_nce_gradcheck() -> None:
    f1, f2 = _maps(2, 2, 2, 2, seed=3)
    for negatives in ("batch", "image"):
        loss = functools.partial(dense_info_nce, temperature=0.3, negatives=negatives)
        assert torch.autograd.gradcheck(loss, (f1, f2))


def test_dense_info_nce_float32_and_bf16() -> None:
    f1, f2 = _maps(2, 8, 3, 3, seed=4)
    want = dense_info_nce(f1, f2, 0.1)
    got32 = dense_info_nce(f1.float(), f2.float(), 0.1)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=1e-4, atol=0)
    bf = dense_info_nce(f1.bfloat16(), f2.bfloat16(), 0.1)
    assert bf.dtype == torch.float32 and torch.isfinite(bf)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda f: dense_info_nce(f[0, 0], f[0, 0]), "f1"),
        (lambda f: dense_info_nce(f, f[:, :, :1]), "same shape"),
        (lambda f: dense_info_nce(f[:0], f[:0]), "empty"),
        (lambda f: dense_info_nce(f.masked_fill(f > 1, float("nan")), f), "NaN"),
        (lambda f: dense_info_nce(f, f, 0.0), "temperature"),
        (lambda f: dense_info_nce(f, f, negatives="other"), "negatives"),
        (lambda f: dense_info_nce(f, f, reduction="avg"), "reduction"),
        (lambda f: dense_info_nce(f, f, max_locations=0), "max_locations"),
        (lambda f: dense_info_nce(f, f, normalize="yes"), "normalize"),
        (lambda f: dense_info_nce(f[:, :, :1, :1], f[:, :, :1, :1], negatives="image"), "negative"),
        (lambda f: dense_info_nce(f[:1, :, :1, :1], f[:1, :, :1, :1]), "negative"),
        (lambda f: dense_info_nce(f.long(), f.long()), "floating"),
        (lambda f: dense_info_nce(f, f, max_locations=2, generator=0), "torch.Generator"),
    ],
)
def test_dense_info_nce_errors(call, match: str) -> None:
    f = torch.randn(2, 3, 2, 2)
    with pytest.raises(InputError, match=match) as info:
        call(f)
    assert "dense_info_nce" in str(info.value)


# ---------------------------------------------------------------- channel dropout


def test_channel_dropout_zeroes_whole_channels_and_scales_like_dropout2d() -> None:
    x = torch.rand(64, 32, 3, 3) + 0.5
    out = channel_dropout(x, 0.25, generator=torch.Generator().manual_seed(0))
    ratio = out / x
    per_channel = ratio.flatten(2)
    torch.testing.assert_close(per_channel.amin(-1), per_channel.amax(-1))  # one factor per channel
    factors = per_channel[..., 0]
    kept = factors != 0
    torch.testing.assert_close(factors[kept], torch.full_like(factors[kept], 1 / 0.75))
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.05
    torch.manual_seed(0)
    ref = torch.nn.Dropout2d(0.25)(x) / x
    torch.testing.assert_close(ref[ref != 0], torch.full_like(ref[ref != 0], 1 / 0.75))
    again = channel_dropout(x, 0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_channel_dropout_is_identity_in_eval_and_at_p0() -> None:
    x = torch.randn(2, 3, 4)
    assert channel_dropout(x, 0.5, training=False) is x
    assert channel_dropout(x, 0.0) is x
    criterion = WeightedMultiLevelContrast(dense_info_nce, channel_dropout_p=0.5)
    criterion.eval()
    assert criterion.drop_channels(x) is x
    criterion.train()
    g = torch.Generator().manual_seed(3)
    assert torch.equal(
        criterion.drop_channels(x, g), channel_dropout(x, 0.5, generator=torch.Generator().manual_seed(3))
    )


def test_channel_dropout_errors() -> None:
    with pytest.raises(InputError, match="'p'"):
        channel_dropout(torch.randn(2, 3, 4), 1.0)
    with pytest.raises(InputError, match="features"):
        channel_dropout(torch.randn(2, 3), 0.2)
    with pytest.raises(InputError, match="channel_dropout: argument 'generator' must be a torch.Generator"):
        channel_dropout(torch.randn(2, 3, 4), 0.2, generator=0)
    with pytest.raises(InputError, match="channel_dropout_p"):
        WeightedMultiLevelContrast(dense_info_nce, channel_dropout_p=-0.1)


# ---------------------------------------------------------------- WeightedMultiLevelContrast


def ref_multi_level(enc, decs, alpha, weights, loss_fn):
    """alpha * L(enc) + (1 - alpha) * sum_l w_l / sum(w) * L(dec_l), written out (terms of
    weight 0 left out, as the module does not evaluate them)."""
    total_w = sum(weights)
    value = alpha * loss_fn(*enc) if alpha > 0 else 0.0
    for (d1, d2), w in zip(decs, weights, strict=True):
        if w > 0:
            value = value + (1 - alpha) * (w / total_w) * loss_fn(d1, d2)
    return value


def _levels(seed: int):
    e = _maps(2, 3, 2, 2, seed)
    d = [_maps(2, 2, 2, 3, seed + 1), _maps(1, 2, 3, 3, seed + 2)]
    return e, d


@pytest.mark.parametrize(
    ("alpha", "weights"), [(0.5, None), (0.25, [1.0, 3.0]), (0.75, [0.0, 2.0]), (0.0, None)]
)
def test_weighted_multi_level_matches_reference(alpha, weights) -> None:
    (e1, e2), decs = _levels(10)
    tensors = [e1, e2, *[t for pair in decs for t in pair]]
    loss = functools.partial(ref_dense_info_nce, temperature=0.2)
    criterion = WeightedMultiLevelContrast(
        functools.partial(dense_info_nce, temperature=0.2), alpha=alpha, level_weights=weights
    )

    def pack(ts):
        return (ts[0], ts[1]), [(ts[2], ts[3]), (ts[4], ts[5])]

    assert_matches_reference(
        lambda *ts: criterion(*pack(ts)),
        lambda *ts: ref_multi_level(*pack(ts), alpha, weights or [1.0, 1.0], loss),
        *tensors,
        rtol=1e-6,
        atol=1e-12,
    )


def test_weighted_multi_level_per_level_losses_and_gradcheck() -> None:
    (e1, e2), decs = _levels(20)
    losses = [
        functools.partial(dense_info_nce, temperature=0.5),
        functools.partial(dense_info_nce, temperature=0.2, negatives="image"),
        functools.partial(dense_info_nce, temperature=0.1),
    ]
    criterion = WeightedMultiLevelContrast(losses, alpha=0.3, level_weights=[2, 1])
    got = criterion((e1, e2), decs)
    want = (
        0.3 * ref_dense_info_nce(e1, e2, 0.5)
        + 0.7 * (2 / 3) * ref_dense_info_nce(*decs[0], 0.2, "image")
        + 0.7 * (1 / 3) * ref_dense_info_nce(*decs[1], 0.1)
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    # every input's gradient is compared with the reference in the test above; gradcheck the
    # image-negatives decoder level (its own loss) numerically
    assert torch.autograd.gradcheck(lambda c, d: criterion((e1, e2), [(c, d), decs[1]]), decs[0])


def test_weighted_multi_level_encoder_only_needs_no_decoder_and_float32_agrees() -> None:
    (e1, e2), decs = _levels(30)
    enc_only = WeightedMultiLevelContrast(dense_info_nce, alpha=1.0)
    torch.testing.assert_close(enc_only((e1, e2)), dense_info_nce(e1, e2))
    criterion = WeightedMultiLevelContrast(dense_info_nce)
    f32 = criterion((e1.float(), e2.float()), [(a.float(), b.float()) for a, b in decs])
    torch.testing.assert_close(f32.double(), criterion((e1, e2), decs), rtol=1e-4, atol=0)
    bf = criterion((e1.bfloat16(), e2.bfloat16()), [(a.bfloat16(), b.bfloat16()) for a, b in decs])
    assert torch.isfinite(bf)


def test_weighted_multi_level_errors() -> None:
    (e1, e2), decs = _levels(40)
    with pytest.raises(InputError, match="alpha"):
        WeightedMultiLevelContrast(dense_info_nce, alpha=1.5)
    with pytest.raises(InputError, match="level_losses"):
        WeightedMultiLevelContrast([dense_info_nce])
    with pytest.raises(InputError, match="level_losses"):
        WeightedMultiLevelContrast(3)
    with pytest.raises(InputError, match="level_weights"):
        WeightedMultiLevelContrast(dense_info_nce, level_weights=[1.0, -1.0])
    with pytest.raises(InputError, match="positive sum"):
        WeightedMultiLevelContrast(dense_info_nce, level_weights=[0.0, 0.0])
    with pytest.raises(InputError, match="decoder level"):
        WeightedMultiLevelContrast(dense_info_nce)((e1, e2))
    with pytest.raises(InputError, match="encoder"):
        WeightedMultiLevelContrast(dense_info_nce)(None, decs)
    with pytest.raises(InputError, match="3 entries"):
        WeightedMultiLevelContrast(dense_info_nce, level_weights=[1, 1, 1])((e1, e2), decs)
    with pytest.raises(InputError, match="2 losses"):
        WeightedMultiLevelContrast([dense_info_nce, dense_info_nce])((e1, e2), decs)
    with pytest.raises(InputError, match="pair"):
        WeightedMultiLevelContrast(dense_info_nce)((e1, e2), [e1])
    with pytest.raises(InputError, match="0-d"):
        WeightedMultiLevelContrast(functools.partial(dense_info_nce, reduction="none"))((e1, e2), decs)


def test_level_losses_with_parameters_are_registered():
    heads = [torch.nn.Linear(2, 2) for _ in range(3)]
    criterion = WeightedMultiLevelContrast(heads)
    assert {id(p) for p in criterion.parameters()} == {id(p) for h in heads for p in h.parameters()}
