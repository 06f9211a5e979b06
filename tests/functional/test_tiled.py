"""The tiled engine equals the plain (materialised) path on values and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import contrastkit.functional.tiled as tiled
from conftest import unit_rows
from contrastkit import clip_loss, info_nce, mnrl, nt_xent, siglip_loss, supcon
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.functional import resolve_chunk_size, tiled_logsumexp, tiled_softplus_sum
from contrastkit.losses import CLIPLoss, SigLIPLoss

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
# float32 sums of many terms (the scale's gradient, SigLIP's B^2 softplus terms) are compared
# relative to their size as well; float64 is held to the absolute 1e-10.
RELATIVE = {torch.float64: 0.0, torch.float32: 1e-5}
# (batch, tile rows): tile = 1, an uneven last tile, B not divisible, a tile larger than B.
TILINGS = [(9, 1), (13, 5), (12, 5), (6, 64)]


def _scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, requires_grad=True)


def assert_same_loss_and_grads(plain, tiled_fn, inputs, dtype) -> None:
    """Value and the gradient w.r.t. every input (None on both sides where unused)."""
    tol, rtol = TOLERANCE[dtype], RELATIVE[dtype]
    want, got = plain(), tiled_fn()
    torch.testing.assert_close(got, want, atol=tol, rtol=rtol)
    weights = torch.linspace(0.5, 1.5, got.numel(), dtype=got.dtype).reshape(got.shape)
    want_grads = torch.autograd.grad((want * weights).sum(), inputs, allow_unused=True)
    got_grads = torch.autograd.grad((got * weights).sum(), inputs, allow_unused=True)
    for i, (w, g) in enumerate(zip(want_grads, got_grads, strict=True)):
        if w is None or g is None:
            assert g is None or not g.abs().max() > tol, f"input {i}: gradient on one side only"
            continue
        torch.testing.assert_close(g, w, atol=tol, rtol=rtol, msg=lambda m, i=i: f"grad of input {i}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("batch", "tile"), TILINGS)
@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.1}, {"bias": True}, {"ids": True}, {"ids": True, "label_smoothing": 0.3}],
    ids=["plain", "smoothing", "bias", "sample_ids", "sample_ids+smoothing"],
)
def test_clip_tiled_equals_plain(dtype, batch, tile, options):
    x, y = unit_rows(batch, 8, seed=1, dtype=dtype), unit_rows(batch, 8, seed=2, dtype=dtype)
    scale = _scalar(7.0, dtype)
    kwargs = {"label_smoothing": options.get("label_smoothing", 0.0)}
    if options.get("ids"):
        kwargs["sample_ids"] = torch.arange(batch) % 4
    bias = _scalar(-1.5, dtype) if options.get("bias") else None
    inputs = (x, y, scale) if bias is None else (x, y, scale, bias)

    def run(chunk):
        if bias is None:
            return clip_loss(x, y, scale, chunk_size=chunk, **kwargs)
        with pytest.warns(UserWarning, match="cancels in the softmax"):
            return clip_loss(x, y, scale, bias, chunk_size=chunk, **kwargs)

    assert_same_loss_and_grads(lambda: run(0), lambda: run(tile), inputs, dtype)


def test_clip_tiled_bias_gets_zero_gradient():
    x, y = unit_rows(10, 4, seed=3), unit_rows(10, 4, seed=4)
    bias = _scalar(2.0, torch.float64)
    with pytest.warns(UserWarning):
        loss = clip_loss(x, y, 5.0, bias, chunk_size=3)
    (grad,) = torch.autograd.grad(loss, bias)
    assert abs(float(grad)) < 1e-12


def test_clip_tiled_with_a_single_sample_id_raises_like_plain():
    x, y = unit_rows(5, 4, seed=5), unit_rows(5, 4, seed=6)
    same = torch.zeros(5, dtype=torch.long)
    for chunk in (0, 2):
        with pytest.raises(NoPositivePairsError):
            clip_loss(x, y, 5.0, sample_ids=same, chunk_size=chunk)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("batch", "tile"), TILINGS)
@pytest.mark.parametrize("extra", [None, "shared", "per_query"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_info_nce_tiled_equals_plain(dtype, batch, tile, extra, reduction):
    q, k = unit_rows(batch, 6, seed=7, dtype=dtype), unit_rows(batch + 3, 6, seed=8, dtype=dtype)
    scale = _scalar(5.0, dtype)
    negatives = None
    if extra == "shared":
        negatives = unit_rows(4, 6, seed=9, dtype=dtype)
    elif extra == "per_query":
        negatives = unit_rows(batch * 3, 6, seed=9, dtype=dtype).reshape(batch, 3, 6)
    inputs = tuple(t for t in (q, k, scale, negatives) if t is not None)

    def run(chunk):
        return info_nce(q, k, scale, extra_negatives=negatives, reduction=reduction, chunk_size=chunk)

    assert_same_loss_and_grads(lambda: run(0), lambda: run(tile), inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("batch", "tile"), TILINGS)
def test_mnrl_tiled_equals_plain(dtype, batch, tile):
    a, p = unit_rows(batch, 6, seed=10, dtype=dtype), unit_rows(batch, 6, seed=11, dtype=dtype)
    n = (3 * unit_rows(batch * 2, 6, seed=12, dtype=dtype)).reshape(batch, 2, 6)
    scale = _scalar(20.0, dtype)
    assert_same_loss_and_grads(
        lambda: mnrl(a, p, n, scale=scale, chunk_size=0),
        lambda: mnrl(a, p, n, scale=scale, chunk_size=tile),
        (a, p, n, scale),
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("batch", "tile"), TILINGS)
def test_nt_xent_tiled_equals_plain(dtype, batch, tile):
    z1, z2 = unit_rows(batch, 6, seed=13, dtype=dtype), unit_rows(batch, 6, seed=14, dtype=dtype)
    assert_same_loss_and_grads(
        lambda: nt_xent(z1, z2, 0.2, chunk_size=0),
        lambda: nt_xent(z1, z2, 0.2, chunk_size=tile),
        (z1, z2),
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("batch", "tile"), TILINGS)
@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_supcon_tiled_equals_plain(dtype, batch, tile, views, reduction):
    z = unit_rows(batch * views, 6, seed=15, dtype=dtype)
    z_views = z.reshape(batch, views, 6) if views > 1 else z
    labels = torch.arange(batch) % 3
    labels[0] = 7  # a class of one: with one view it has no positive and is left out

    def run(chunk):
        return supcon(z_views, labels, 0.1, base_temperature=0.07, reduction=reduction, chunk_size=chunk)

    if reduction == "none":
        plain, tiled_loss = run(0), run(tile)
        torch.testing.assert_close(tiled_loss, plain, atol=TOLERANCE[dtype], rtol=0.0, equal_nan=True)
        return
    assert_same_loss_and_grads(lambda: run(0), lambda: run(tile), (z,), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("batch", "tile"), TILINGS)
@pytest.mark.parametrize("with_ids", [False, True])
def test_siglip_tiled_equals_plain(dtype, batch, tile, with_ids):
    x, y = unit_rows(batch, 8, seed=16, dtype=dtype), unit_rows(batch, 8, seed=17, dtype=dtype)
    scale, bias = _scalar(10.0, dtype), _scalar(-10.0, dtype)
    ids = torch.arange(batch) % 4 if with_ids else None
    assert_same_loss_and_grads(
        lambda: siglip_loss(x, y, scale, bias, sample_ids=ids, chunk_size=0),
        lambda: siglip_loss(x, y, scale, bias, sample_ids=ids, chunk_size=tile),
        (x, y, scale, bias),
        dtype,
    )


def test_siglip_chunk_size_zero_is_bit_identical_to_the_formula():
    x, y = unit_rows(11, 8, seed=18, dtype=torch.float32), unit_rows(11, 8, seed=19, dtype=torch.float32)
    logits = 10.0 * (x @ y.T) - 10.0
    formula = (torch.logaddexp(logits, torch.zeros(())).sum() - logits.diagonal().sum()) / 11
    assert torch.equal(siglip_loss(x, y, 10.0, -10.0, chunk_size=0), formula)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_skip_diagonal_with_anchors_the_first_rows_of_the_candidates(dtype):
    """A rank's anchors are the first rows of the gathered candidates: self is l_ii for i < B."""
    y = unit_rows(13, 5, seed=22, dtype=dtype)
    n = 6

    def plain():
        logits = 3.0 * (y[:n] @ y.T)
        logits = logits.masked_fill(torch.eye(n, 13, dtype=torch.bool), float("-inf"))
        return torch.logsumexp(logits, 1)

    def fast():
        return tiled_logsumexp(y[:n], y, 3.0, chunk_size=4, col_chunk_size=5, skip_diagonal=True)[0]

    assert_same_loss_and_grads(plain, fast, (y,), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (3, 2), (5, 64), (64, 7)])
@pytest.mark.parametrize("skip_diagonal", [False, True])
def test_tiled_logsumexp_matches_torch_with_uneven_column_tiles(dtype, rows, cols, skip_diagonal):
    n = 11
    x = unit_rows(n, 5, seed=20, dtype=dtype)
    y = x if skip_diagonal else unit_rows(n + 2, 5, seed=21, dtype=dtype)
    scale, bias = _scalar(4.0, dtype), _scalar(0.5, dtype)

    def plain():
        logits = scale * (x @ y.T) + bias
        if skip_diagonal:
            logits = logits.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
        return torch.cat([torch.logsumexp(logits, 1), 2 * torch.logsumexp(logits, 0)])

    def fast():
        r, c = tiled_logsumexp(
            x, y, scale, bias, chunk_size=rows, col_chunk_size=cols, cols=True, skip_diagonal=skip_diagonal
        )
        return torch.cat([r, 2 * c])

    inputs = (x, scale, bias) if skip_diagonal else (x, y, scale, bias)
    assert_same_loss_and_grads(plain, fast, inputs, dtype)


def test_tiled_engine_passes_gradcheck():
    x, y = unit_rows(5, 3, seed=22), unit_rows(4, 3, seed=23)
    scale, bias = _scalar(2.0, torch.float64), _scalar(0.3, torch.float64)

    def both(x, y, scale, bias):
        r, c = tiled_logsumexp(x, y, scale, bias, chunk_size=2, col_chunk_size=3, cols=True)
        return r, c, tiled_softplus_sum(x, y, scale, bias, chunk_size=3, col_chunk_size=2)

    assert torch.autograd.gradcheck(both, (x, y, scale, bias))


def test_tiled_rows_only_leaves_the_column_gradient_path_unused():
    x, y = unit_rows(6, 3, seed=24), unit_rows(6, 3, seed=25)
    r, c = tiled_logsumexp(x, y, 3.0, chunk_size=4)
    assert c.numel() == 0
    (gx,) = torch.autograd.grad(r.sum(), x)
    torch.testing.assert_close(gx, torch.autograd.grad(torch.logsumexp(3.0 * x @ y.T, 1).sum(), x)[0])


def test_automatic_chunk_size_tiles_only_beyond_the_budget(monkeypatch):
    assert resolve_chunk_size("f", None, 1000, 1000, torch.float32) == 0
    monkeypatch.setattr(tiled, "PLAIN_LOGITS_BUDGET_BYTES", 8 * 8 * 4)
    assert resolve_chunk_size("f", None, 8, 8, torch.float32) == 0
    assert resolve_chunk_size("f", None, 9, 8, torch.float32) == tiled.AUTO_TILE_ROWS
    assert resolve_chunk_size("f", None, 8, 8, torch.float64) == tiled.AUTO_TILE_ROWS
    calls = []
    original = tiled._TiledLogSumExp.apply
    monkeypatch.setattr(tiled._TiledLogSumExp, "apply", lambda *a: calls.append(1) or original(*a))
    x, y = unit_rows(16, 4, seed=26), unit_rows(16, 4, seed=27)
    auto = clip_loss(x, y, 5.0)
    assert calls, "a batch over the budget must take the tiled path"
    torch.testing.assert_close(auto, clip_loss(x, y, 5.0, chunk_size=0), atol=1e-10, rtol=0)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_bad_chunk_size_is_named(bad):
    x, y = unit_rows(4, 3, seed=28), unit_rows(4, 3, seed=29)
    with pytest.raises(InputError, match="clip_loss: 'chunk_size' must be None"):
        clip_loss(x, y, 5.0, chunk_size=bad)
    with pytest.raises(InputError, match="CLIPLoss: 'chunk_size'"):
        CLIPLoss(chunk_size=bad)
    with pytest.raises(InputError, match="SigLIPLoss: 'chunk_size'"):
        SigLIPLoss(chunk_size=bad)


def test_explicit_tiling_with_a_plain_only_option_is_an_error():
    x, y = unit_rows(4, 3, seed=30), unit_rows(4, 3, seed=31)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    with pytest.raises(InputError, match="does not support a \\(B, B\\) 'ignore_mask'.*chunk_size=0"):
        clip_loss(x, y, 5.0, ignore_mask=mask, chunk_size=2)
    with pytest.raises(InputError, match="info_nce: the tiled path.*positive_mask"):
        info_nce(x, y, 5.0, positive_mask=torch.eye(4, dtype=torch.bool), chunk_size=2)
    with pytest.raises(InputError, match="supcon: the tiled path"):
        supcon(x, None, positive_mask=torch.eye(4, dtype=torch.bool), chunk_size=2)
    guide = (x.detach(), y.detach(), None)
    with pytest.raises(InputError, match="mnrl: the tiled path.*guide"):
        mnrl(x, y, guide=guide, chunk_size=2)
    # automatic tiling quietly keeps the plain path for them
    assert torch.isfinite(clip_loss(x, y, 5.0, ignore_mask=mask))


def test_modules_pass_their_chunk_size(monkeypatch):
    calls = []
    original = tiled._TiledSoftplusSum.apply
    monkeypatch.setattr(tiled._TiledSoftplusSum, "apply", lambda *a: calls.append(a[-2]) or original(*a))
    x, y = F.normalize(torch.randn(6, 4), dim=1), F.normalize(torch.randn(6, 4), dim=1)
    SigLIPLoss(chunk_size=4)(x, y)
    assert calls == [4]
    assert CLIPLoss(chunk_size=3).chunk_size == 3


def test_the_engine_checks_its_own_arguments():
    x, y = unit_rows(4, 3, seed=32), unit_rows(5, 3, seed=33)
    for bad in (0, -3, 1.5):
        with pytest.raises(InputError, match="'chunk_size' must be a positive number"):
            tiled_logsumexp(x, y, 1.0, chunk_size=bad)
        with pytest.raises(InputError, match="'col_chunk_size' must be a positive number"):
            tiled_softplus_sum(x, y, 1.0, chunk_size=2, col_chunk_size=bad)
    with pytest.raises(InputError, match="skip_diagonal needs x to be the first rows of y's set"):
        tiled_logsumexp(y, x, 1.0, skip_diagonal=True)
    with pytest.raises(InputError, match=r"\(B, D\) and \(M, D\)"):
        tiled_logsumexp(x, unit_rows(5, 4, seed=34), 1.0)


def test_a_second_derivative_is_refused_plainly():
    x, y = unit_rows(4, 3, seed=35), unit_rows(4, 3, seed=36)
    with pytest.raises(RuntimeError, match="first derivatives only .*chunk_size=0"):
        torch.autograd.grad(clip_loss(x, y, 5.0, chunk_size=2), x, create_graph=True)
    (gx,) = torch.autograd.grad(clip_loss(x, y, 5.0, chunk_size=0), x, create_graph=True)
    assert gx.requires_grad
