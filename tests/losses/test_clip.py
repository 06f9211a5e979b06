"""clip_loss and CLIPLoss against a float64 loop reference (METHODS.md 0 and 1.2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_dot, loop_lse, unit_rows
from contrastkit import CLIPLoss, InputError, NoPositivePairsError, clip_loss

B, D = 5, 4


# --------------------------------------------------------------------------------------------
# loop reference
# --------------------------------------------------------------------------------------------


def ref_clip(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float | torch.Tensor,
    *,
    eps: float = 0.0,
    sample_ids: list[int] | None = None,
    bias: float | torch.Tensor = 0.0,
    ignore: list[list[bool]] | None = None,
) -> torch.Tensor:
    """1/2 [ mean_i CE(row i) + mean_j CE(column j) ] with target
    q = (1 - eps) * uniform over the positives + eps / |candidates|; ``ignore[i][j]`` drops
    the pair (i, j) from row i's and from column j's candidates unless it is a positive."""
    n = x.shape[0]
    ids = list(range(n)) if sample_ids is None else list(sample_ids)
    dropped = [[bool(ignore and ignore[i][j]) and ids[i] != ids[j] for j in range(n)] for i in range(n)]
    logit = [[scale * loop_dot(x[i], y[j]) + bias for j in range(n)] for i in range(n)]
    rows = 0.0
    for i in range(n):
        pos = [j for j in range(n) if ids[j] == ids[i]]
        cand = [j for j in range(n) if not dropped[i][j]]
        term = loop_lse([logit[i][j] for j in cand])
        for j in cand:
            target = eps / len(cand) + ((1 - eps) / len(pos) if j in pos else 0.0)
            term = term - target * logit[i][j]
        rows = rows + term
    cols = 0.0
    for j in range(n):
        pos = [i for i in range(n) if ids[i] == ids[j]]
        cand = [i for i in range(n) if not dropped[i][j]]
        term = loop_lse([logit[i][j] for i in cand])
        for i in cand:
            target = eps / len(cand) + ((1 - eps) / len(pos) if i in pos else 0.0)
            term = term - target * logit[i][j]
        cols = cols + term
    return 0.5 * (rows / n + cols / n)


def open_clip_formula(x, y, scale, eps=0.0):
    """open_clip ClipLoss: two logit matrices, two cross-entropies, averaged."""
    logits_per_image = scale * x @ y.T
    logits_per_text = scale * y @ x.T
    labels = torch.arange(x.shape[0])
    return (
        F.cross_entropy(logits_per_image, labels, label_smoothing=eps)
        + F.cross_entropy(logits_per_text, labels, label_smoothing=eps)
    ) / 2


def _scale(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


# --------------------------------------------------------------------------------------------
# clip_loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 40.0])
def test_clip_loss_matches_loop_reference(scale: float) -> None:
    x, y, s = unit_rows(B, D, seed=1), unit_rows(B, D, seed=2), _scale(scale)
    got = clip_loss(x, y, s)
    assert got.dtype == torch.float64 and got.shape == ()
    assert_matches_reference(lambda a, b, c: clip_loss(a, b, c), lambda a, b, c: ref_clip(a, b, c), x, y, s)


def test_clip_loss_float_scale() -> None:
    x, y = unit_rows(B, D, seed=3), unit_rows(B, D, seed=4)
    assert_matches_reference(lambda a, b: clip_loss(a, b, 9.0), lambda a, b: ref_clip(a, b, 9.0), x, y)


def test_clip_loss_includes_the_column_direction() -> None:
    # the column term uses y-side softmaxes: a reference with only the row term must differ
    x, y = unit_rows(B, D, seed=5), unit_rows(B, D, seed=6)
    got = clip_loss(x, y, 10.0).detach()
    logits = 10.0 * x.detach() @ y.detach().T
    rows_only = F.cross_entropy(logits, torch.arange(B))
    assert abs(float(got - rows_only)) > 1e-4


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_clip_loss_label_smoothing(eps: float) -> None:
    x, y, s = unit_rows(B, D, seed=7), unit_rows(B, D, seed=8), _scale(8.0)
    assert_matches_reference(
        lambda a, b, c: clip_loss(a, b, c, label_smoothing=eps),
        lambda a, b, c: ref_clip(a, b, c, eps=eps),
        x,
        y,
        s,
    )


IDS = [3, 1, 3, 7, 1, 3]


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_clip_loss_sample_ids(eps: float) -> None:
    n = len(IDS)
    x, y, s = unit_rows(n, D, seed=9), unit_rows(n, D, seed=10), _scale(6.0)
    ids = torch.tensor(IDS)
    assert_matches_reference(
        lambda a, b, c: clip_loss(a, b, c, label_smoothing=eps, sample_ids=ids),
        lambda a, b, c: ref_clip(a, b, c, eps=eps, sample_ids=IDS),
        x,
        y,
        s,
    )


def test_clip_loss_sample_ids_change_the_loss_and_distinct_ids_do_not() -> None:
    n = len(IDS)
    x, y = unit_rows(n, D, seed=11), unit_rows(n, D, seed=12)
    plain = clip_loss(x, y, 6.0).detach()
    grouped = clip_loss(x, y, 6.0, sample_ids=torch.tensor(IDS)).detach()
    distinct = clip_loss(x, y, 6.0, sample_ids=torch.tensor([10, 11, 12, 13, 14, 15])).detach()
    assert abs(float(grouped - plain)) > 1e-4
    torch.testing.assert_close(distinct, plain, atol=1e-12, rtol=0)


def test_clip_loss_sample_ids_uniform_target_hand_case() -> None:
    # ids (4, 4, 7): rows/columns 0 and 1 have target (1/2, 1/2, 0), row/column 2 has (0, 0, 1)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    y = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    s = 3.0
    l = [[s * 0.6, s * 1.0, 0.0], [s * 0.8, 0.0, s * 1.0], [s * 1.0, s * 0.6, s * 0.8]]
    targets = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]

    def ce(scores, target):
        return math.log(sum(math.exp(v) for v in scores)) - sum(
            t * v for t, v in zip(target, scores, strict=True)
        )

    rows = sum(ce(l[i], targets[i]) for i in range(3))
    cols = sum(ce([l[i][j] for i in range(3)], targets[j]) for j in range(3))
    got = clip_loss(x, y, s, sample_ids=torch.tensor([4, 4, 7]))
    assert float(got.detach()) == pytest.approx(0.5 * (rows / 3 + cols / 3), abs=1e-12)


def test_clip_loss_one_id_for_the_whole_batch_raises_not_nan() -> None:
    x, y = unit_rows(B, D, seed=3), unit_rows(B, D, seed=4)
    with pytest.raises(NoPositivePairsError, match="both a positive and a negative"):
        clip_loss(x, y, 5.0, sample_ids=torch.zeros(B, dtype=torch.long))


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("with_ids", [False, True])
def test_clip_loss_ignore_mask(eps: float, with_ids: bool) -> None:
    x, y = unit_rows(B, D, seed=21), unit_rows(B, D, seed=22)
    scale = _scale(6.0)
    g = torch.Generator().manual_seed(5)
    ignore = torch.rand(B, B, generator=g) < 0.4
    ignore[0, 0] = True  # a positive pair marked ignored stays the target
    ids = [0, 1, 1, 2, 3] if with_ids else None
    id_tensor = None if ids is None else torch.tensor(ids)
    assert_matches_reference(
        lambda a, b, s: clip_loss(a, b, s, label_smoothing=eps, sample_ids=id_tensor, ignore_mask=ignore),
        lambda a, b, s: ref_clip(a, b, s, eps=eps, sample_ids=ids, ignore=ignore.tolist()),
        x,
        y,
        scale,
    )
    plain = clip_loss(x, y, scale, label_smoothing=eps, sample_ids=id_tensor)
    assert not torch.allclose(
        plain, clip_loss(x, y, scale, label_smoothing=eps, sample_ids=id_tensor, ignore_mask=ignore)
    )
    nothing = torch.zeros(B, B, dtype=torch.bool)
    torch.testing.assert_close(
        clip_loss(x, y, scale, label_smoothing=eps, sample_ids=id_tensor, ignore_mask=nothing),
        plain,
        atol=1e-12,
        rtol=0,
    )


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_clip_loss_equals_open_clip_formula(eps: float) -> None:
    x, y, s = unit_rows(B, D, seed=13), unit_rows(B, D, seed=14), _scale(1 / 0.07)
    assert_matches_reference(
        lambda a, b, c: clip_loss(a, b, c, label_smoothing=eps),
        lambda a, b, c: open_clip_formula(a, b, c, eps),
        x,
        y,
        s,
        atol=1e-12,
    )


def test_clip_loss_identical_embeddings_at_scale_zero_is_log_b() -> None:
    x = unit_rows(B, D, seed=15)
    assert float(clip_loss(x, x, 0.0).detach()) == pytest.approx(math.log(B), abs=1e-12)


def test_clip_loss_bias_warns_and_has_zero_gradient() -> None:
    x, y, s = unit_rows(B, D, seed=16), unit_rows(B, D, seed=17), _scale(10.0)
    b = torch.tensor(-3.5, dtype=torch.float64, requires_grad=True)
    plain = clip_loss(x, y, s)
    with pytest.warns(UserWarning, match="bias"):
        biased = clip_loss(x, y, s, b)
    torch.testing.assert_close(biased, plain, atol=1e-12, rtol=0)
    g_x, g_s, g_b = torch.autograd.grad(biased, [x, s, b])
    assert abs(float(g_b)) < 1e-12
    w_x, w_s = torch.autograd.grad(plain, [x, s])
    torch.testing.assert_close(g_x, w_x, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_s, w_s, atol=1e-12, rtol=0)


def test_clip_loss_bias_with_sample_ids_and_smoothing_has_zero_gradient() -> None:
    n = len(IDS)
    x, y = unit_rows(n, D, seed=18), unit_rows(n, D, seed=19)
    b = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning):
        biased = clip_loss(x, y, 5.0, b, label_smoothing=0.2, sample_ids=torch.tensor(IDS))
    plain = clip_loss(x, y, 5.0, label_smoothing=0.2, sample_ids=torch.tensor(IDS))
    torch.testing.assert_close(biased, plain, atol=1e-12, rtol=0)
    (g_b,) = torch.autograd.grad(biased, b)
    assert abs(float(g_b)) < 1e-12


def test_clip_loss_gradcheck() -> None:
    x, y, s = unit_rows(4, 3, seed=20), unit_rows(4, 3, seed=21), _scale(3.0)
    assert torch.autograd.gradcheck(lambda a, b, c: clip_loss(a, b, c), (x, y, s))
    ids = torch.tensor([0, 1, 0, 2])
    assert torch.autograd.gradcheck(
        lambda a, b, c: clip_loss(a, b, c, label_smoothing=0.1, sample_ids=ids), (x, y, s)
    )


def test_clip_loss_rejects_bad_arguments() -> None:
    x, y = unit_rows(B, D), unit_rows(B, D, seed=1)
    with pytest.raises(InputError, match="scale"):
        clip_loss(x, y, -1.0)
    with pytest.raises(InputError, match="label_smoothing"):
        clip_loss(x, y, 1.0, label_smoothing=1.5)
    with pytest.raises(InputError, match="y"):
        clip_loss(x, y[:-1], 1.0)


# --------------------------------------------------------------------------------------------
# CLIPLoss
# --------------------------------------------------------------------------------------------


def _t(crit: CLIPLoss) -> torch.Tensor:
    return crit.logit_scale.log_scale


def test_clip_module_default_scale() -> None:
    crit = CLIPLoss()
    assert crit.scale == pytest.approx(1 / 0.07, rel=1e-6)
    assert float(_t(crit).detach()) == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    params = dict(crit.named_parameters())
    assert list(params) == ["logit_scale.log_scale"]


def test_clip_module_parameters_carry_no_weight_decay() -> None:
    params = list(CLIPLoss().parameters())
    assert params and all(getattr(p, "no_weight_decay", False) is True for p in params)


def test_clip_module_value_and_scale_gradient() -> None:
    crit = CLIPLoss(label_smoothing=0.1)
    x, y = unit_rows(B, D, seed=22), unit_rows(B, D, seed=23)
    loss = crit(x, y)
    s_val = float(_t(crit).detach().exp())
    s_ref = _scale(s_val)
    want = ref_clip(x, y, s_ref, eps=0.1)
    torch.testing.assert_close(loss, want, atol=1e-10, rtol=0)
    loss.backward()
    (g_s,) = torch.autograd.grad(want, s_ref)
    # d/dt = s * d/ds
    assert float(_t(crit).grad) == pytest.approx(s_val * float(g_s), rel=1e-5, abs=1e-7)


def test_clip_module_sample_ids() -> None:
    crit = CLIPLoss()
    n = len(IDS)
    x, y = unit_rows(n, D, seed=24), unit_rows(n, D, seed=25)
    got = crit(x, y, sample_ids=torch.tensor(IDS))
    want = ref_clip(x, y, crit.scale, sample_ids=IDS)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_clip_module_clamps_above_at_every_forward_and_gradient_flows() -> None:
    crit = CLIPLoss()
    x, y = unit_rows(B, D, seed=26), unit_rows(B, D, seed=27)
    with torch.no_grad():
        _t(crit).fill_(10.0)
    loss = crit(x, y)
    assert crit.scale == pytest.approx(100.0, rel=1e-6)
    assert float(_t(crit).detach()) == pytest.approx(math.log(100.0), abs=1e-6)
    torch.testing.assert_close(loss, ref_clip(x, y, crit.scale), atol=1e-10, rtol=0)
    loss.backward()
    g = _t(crit).grad
    assert g is not None and torch.isfinite(g) and float(g) != 0.0
    # again at the next forward, after another out-of-range write
    with torch.no_grad():
        _t(crit).add_(3.0)
    crit(x, y)
    assert crit.scale == pytest.approx(100.0, rel=1e-6)


def test_clip_module_clamps_below_to_zero() -> None:
    crit = CLIPLoss()
    x, y = unit_rows(B, D, seed=28), unit_rows(B, D, seed=29)
    with torch.no_grad():
        _t(crit).fill_(-1.0)
    loss = crit(x, y)
    assert float(_t(crit).detach()) == 0.0
    assert crit.scale == 1.0
    torch.testing.assert_close(loss, ref_clip(x, y, 1.0), atol=1e-10, rtol=0)
    loss.backward()
    assert float(_t(crit).grad) != 0.0


def test_clip_module_fixed_scale_is_a_buffer() -> None:
    crit = CLIPLoss(init_temperature=0.05, learn_scale=False)
    assert list(crit.parameters()) == []
    assert "logit_scale.log_scale" in dict(crit.named_buffers())
    assert crit.scale == pytest.approx(20.0, rel=1e-6)
    x, y = unit_rows(B, D, seed=30), unit_rows(B, D, seed=31)
    loss = crit(x, y)
    torch.testing.assert_close(loss, ref_clip(x, y, crit.scale), atol=1e-10, rtol=0)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_clip_module_two_forwards_then_backward() -> None:
    crit = CLIPLoss()
    x1, y1 = unit_rows(B, D, seed=32), unit_rows(B, D, seed=33)
    x2, y2 = unit_rows(B, D, seed=34), unit_rows(B, D, seed=35)
    total = crit(x1, y1) + crit(x2, y2)
    total.backward()
    s_val = crit.scale
    s_ref = _scale(s_val)
    want = ref_clip(x1, y1, s_ref) + ref_clip(x2, y2, s_ref)
    torch.testing.assert_close(total, want, atol=1e-10, rtol=0)
    (g_s,) = torch.autograd.grad(want, s_ref)
    assert float(_t(crit).grad) == pytest.approx(s_val * float(g_s), rel=1e-5, abs=1e-7)
    assert x1.grad is not None and x2.grad is not None


def test_clip_module_bad_init_raises() -> None:
    with pytest.raises(InputError, match="CLIPLoss: argument 'init_temperature' must be in"):
        CLIPLoss(init_temperature=0.001, max_scale=100.0)
    with pytest.raises(InputError, match="CLIPLoss: argument 'max_scale'"):
        CLIPLoss(max_scale=0.5)
    CLIPLoss(init_temperature=0.001, max_scale=1000.0)  # fine once max_scale allows it


def test_clip_module_passes_ignore_mask() -> None:
    x, y = unit_rows(B, D, seed=41), unit_rows(B, D, seed=42)
    ignore = torch.zeros(B, B, dtype=torch.bool)
    ignore[0, 1] = ignore[3, 2] = True
    crit = CLIPLoss()
    got = crit(x, y, ignore_mask=ignore)
    want = clip_loss(x, y, crit.logit_scale().detach(), ignore_mask=ignore)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_clip_loss_zero_bias_does_not_warn() -> None:
    import warnings

    x, y = unit_rows(B, D, seed=43), unit_rows(B, D, seed=44)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip_loss(x, y, 2.0, bias=0.0)
