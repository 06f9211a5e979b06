"""The backdoor defenses (METHODS 3.6) against float64 loop references written from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import unit_rows
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.security.defenses import (
    TextMemoryBank,
    cleanclip_loss,
    flag_top_pairs,
    nn_positive_contrast,
    roclip_swap,
    safe_fraction_schedule,
    safeclip_loss,
    safeclip_split,
    unlearn_clip_loss,
    unlearn_penalty,
)

S = 7.0

# ---------------------------------------------------------------- loop references


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(a[k] * b[k] for k in range(a.shape[0]))


def lse(values: list[torch.Tensor]) -> torch.Tensor:
    top = max(float(v.detach()) for v in values)
    return top + torch.log(sum(torch.exp(v - top) for v in values))


def ref_ce_rows(q: torch.Tensor, k: torch.Tensor, s: float) -> torch.Tensor:
    """mean_i [ LSE_j s<q_i, k_j> - s<q_i, k_i> ]"""
    n = q.shape[0]
    return sum(lse([s * dot(q[i], k[j]) for j in range(n)]) - s * dot(q[i], k[i]) for i in range(n)) / n


def ref_clip(x, y, s):
    return 0.5 * (ref_ce_rows(x, y, s) + ref_ce_rows(y, x, s))


def ref_cleanclip(x, y, xa, ya, s, w=1.0):
    return ref_clip(x, y, s) + w * 0.5 * (ref_ce_rows(x, xa, s) + ref_ce_rows(y, ya, s))


def ref_nn_contrast(z, s, anchors=None):
    n = z.shape[0]
    anchors = range(n) if anchors is None else [i for i in range(n) if anchors[i]]
    losses = []
    for a in anchors:
        others = [j for j in range(n) if j != a]
        nn = max(others, key=lambda j: float(dot(z[a], z[j]).detach()))
        losses.append(lse([s * dot(z[a], z[j]) for j in others]) - s * dot(z[a], z[nn]))
    return sum(losses) / len(losses)


def ref_safeclip(x, y, safe, s):
    n, idx = x.shape[0], [i for i in range(x.shape[0]) if safe[i]]
    if len(idx) < 2:
        idx = []
    risky = [i not in idx for i in range(n)]
    total = 0.0
    if idx:
        total = total + len(idx) / n * ref_clip(x[idx], y[idx], s)
    if any(risky):
        uni = 0.5 * (ref_nn_contrast(x, s, risky) + ref_nn_contrast(y, s, risky))
        total = total + (n - len(idx)) / n * uni
    return total


def ref_cos(a, b):
    return dot(a, b) / (torch.sqrt(dot(a, a)) * torch.sqrt(dot(b, b)))


def ref_penalty(x, y, flags, target, weight):
    terms = [(ref_cos(x[i], y[i]) - target) ** 2 for i in range(x.shape[0]) if flags[i]]
    return weight * sum(terms) / len(terms)


def compare(got, want, inputs, rtol=1e-6):
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-12)
    wrt = [t for t in inputs if t.requires_grad]
    g_got = torch.autograd.grad(got, wrt, retain_graph=True, allow_unused=True)
    g_want = torch.autograd.grad(want, wrt, allow_unused=True)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-10)


def batch(n=6, d=5, seed=0, dtype=torch.float64):
    return [unit_rows(n, d, seed=seed + i, dtype=dtype) for i in range(4)]


# ---------------------------------------------------------------- CleanCLIP


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_cleanclip_matches_the_loop_reference(weight):
    x, y, xa, ya = batch()
    compare(cleanclip_loss(x, y, xa, ya, S, weight), ref_cleanclip(x, y, xa, ya, S, weight), [x, y, xa, ya])


def test_cleanclip_gradcheck_and_scale_gradient():
    x, y, xa, ya = batch(n=3, d=3)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: cleanclip_loss(*t), (x, y, xa, ya, scale), fast_mode=True)


def test_cleanclip_identical_views_give_log_b_at_zero_scale():
    x, y, _, _ = batch(n=5, d=4, seed=3)
    value = cleanclip_loss(x, y, x, y, 0.0)  # CLIP log B + in-modal log B
    torch.testing.assert_close(value, torch.tensor(2 * math.log(5), dtype=torch.float64))


def test_cleanclip_precisions():
    x, y, xa, ya = batch(n=8, d=6, seed=9)
    want = cleanclip_loss(x, y, xa, ya, S)
    got = cleanclip_loss(*(t.detach().float() for t in (x, y, xa, ya)), S)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)
    half = cleanclip_loss(*(t.detach().bfloat16() for t in (x, y, xa, ya)), S)
    assert torch.isfinite(half)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"x_aug": torch.zeros(5, 4)}, "x_aug' must have 6 rows"),
        ({"y": torch.full((6, 4), float("nan"))}, "NaN/inf"),
        ({"in_modal_weight": -1.0}, "in_modal_weight"),
        ({"scale": -1.0}, "scale"),
        ({"x": torch.zeros(1, 4), "y": torch.zeros(1, 4)}, "at least 2 pairs"),
    ],
)
def test_cleanclip_errors(change, message):
    x, y, xa, ya = (t.detach().float()[:, :4] for t in batch())
    args = {"x": x, "y": y, "x_aug": xa, "y_aug": ya, "scale": S, **change}
    if "x" in change:
        args["x_aug"], args["y_aug"] = change["x"], change["y"]
    with pytest.raises(InputError, match=message):
        cleanclip_loss(**args)


# ---------------------------------------------------------------- RoCLIP


def test_bank_is_a_fifo_queue():
    bank = TextMemoryBank(dim=2, size=4)
    rows = torch.arange(20, dtype=torch.float32).view(10, 2)
    bank.update(rows[:3])
    assert int(bank.count) == 3 and int(bank.pointer) == 3
    torch.testing.assert_close(bank.stored(), rows[:3])
    bank.update(rows[3:5])  # wraps: row 4 overwrites row 0, the oldest
    assert int(bank.count) == 4 and int(bank.pointer) == 1
    assert {tuple(r) for r in bank.stored().tolist()} == {tuple(r) for r in rows[1:5].tolist()}
    bank.update(rows[4:10])  # larger than the bank: its last 4 rows stay
    assert {tuple(r) for r in bank.stored().tolist()} == {tuple(r) for r in rows[6:10].tolist()}
    bank.update(rows[:1])  # the pointer is at the oldest row (6), which goes next
    assert {tuple(r) for r in bank.stored().tolist()} == {
        tuple(r) for r in [*rows[7:10].tolist(), rows[0].tolist()]
    }
    copy = TextMemoryBank(dim=2, size=4)
    copy.load_state_dict(bank.state_dict())
    torch.testing.assert_close(copy.stored(), bank.stored())
    assert not bank.embeddings.requires_grad


def test_bank_update_detaches_and_checks():
    bank = TextMemoryBank(dim=3, size=5)
    bank.update(torch.randn(2, 3, requires_grad=True))
    assert not bank.embeddings.requires_grad
    with pytest.raises(InputError, match="embedding size 3"):
        bank.update(torch.randn(2, 4))
    with pytest.raises(InputError, match="'size' must be an int >= 1"):
        TextMemoryBank(dim=3, size=0)


def test_roclip_swap_picks_the_nearest_bank_entry():
    x, y = batch(n=5, d=4)[:2]
    entries = unit_rows(9, 4, seed=11).detach()
    swapped, index = roclip_swap(x, y, entries)
    for i in range(5):
        want = max(range(9), key=lambda j: float(dot(x[i], entries[j]).detach()))
        assert int(index[i]) == want
        torch.testing.assert_close(swapped[i], entries[want])
    assert not swapped.requires_grad
    bank = TextMemoryBank(4, size=16).double()
    bank.update(entries)
    torch.testing.assert_close(roclip_swap(x, y, bank)[0], swapped)


def test_roclip_clip_on_swapped_captions_matches_the_reference():
    from contrastkit.losses.clip import clip_loss

    x, y = batch(n=5, d=4)[:2]
    entries = unit_rows(9, 4, seed=12).detach()
    swapped, _ = roclip_swap(x, y, entries)
    compare(clip_loss(x, swapped, S), ref_clip(x, swapped, S), [x])
    assert torch.autograd.gradcheck(
        lambda a: clip_loss(a, roclip_swap(a, y, entries)[0], S), (x,), fast_mode=True
    )


def test_roclip_swap_errors():
    x, y = (t.detach() for t in batch(n=3, d=4)[:2])
    with pytest.raises(InputError, match="'bank' is empty"):
        roclip_swap(x, y, TextMemoryBank(4, size=8).double())
    with pytest.raises(InputError, match="embedding size 4"):
        roclip_swap(x, y, torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(InputError, match="'text_emb' must have 3 rows"):
        roclip_swap(x, y[:2], torch.randn(5, 4, dtype=torch.float64))


# ---------------------------------------------------------------- SafeCLIP


@pytest.mark.parametrize("anchors", [None, [True, False, True, True, False, False, True]])
def test_nn_positive_contrast_matches_the_loop_reference(anchors):
    z = unit_rows(7, 4, seed=5)
    mask = None if anchors is None else torch.tensor(anchors)
    compare(nn_positive_contrast(z, S, anchors=mask), ref_nn_contrast(z, S, anchors), [z])
    assert torch.autograd.gradcheck(lambda t: nn_positive_contrast(t, S, anchors=mask), (z,), fast_mode=True)


def test_nn_positive_contrast_errors():
    with pytest.raises(InputError, match="at least 3 rows"):
        nn_positive_contrast(torch.randn(2, 4), S)
    with pytest.raises(NoPositivePairsError, match="selects no row"):
        nn_positive_contrast(torch.randn(4, 4), S, anchors=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(InputError, match="'anchors' must be a bool tensor"):
        nn_positive_contrast(torch.randn(4, 4), S, anchors=torch.ones(4))


@pytest.mark.parametrize(
    "safe",
    [
        [True, True, False, True, False, False, True],
        [False] * 7,  # warm-up: unimodal only
        [True] * 7,  # all safe: CLIP only
        [False, True, False, False, False, False, False],  # a lone safe pair counts as risky
    ],
)
def test_safeclip_loss_matches_the_loop_reference(safe):
    x, y = batch(n=7, d=4, seed=2)[:2]
    mask = torch.tensor(safe)
    compare(safeclip_loss(x, y, mask, S), ref_safeclip(x, y, safe, S), [x, y])


def test_safeclip_gradcheck_and_precisions():
    x, y = batch(n=5, d=3, seed=4)[:2]
    safe = torch.tensor([True, False, True, True, False])
    assert torch.autograd.gradcheck(lambda a, b: safeclip_loss(a, b, safe, S), (x, y), fast_mode=True)
    want = safeclip_loss(x, y, safe, S).detach()
    torch.testing.assert_close(
        safeclip_loss(x.detach().float(), y.detach().float(), safe, S).double(), want, rtol=1e-4, atol=0
    )
    assert torch.isfinite(safeclip_loss(x.detach().bfloat16(), y.detach().bfloat16(), safe, S))
    with pytest.raises(InputError, match="'safe' must have shape"):
        safeclip_loss(x, y, safe[:3], S)


def test_safe_fraction_schedule_grows_linearly_after_warmup():
    values = [safe_fraction_schedule(t, 110, 10, 0.2, 1.0) for t in (0, 9, 10, 60, 110, 500)]
    assert values == pytest.approx([0.0, 0.0, 0.2, 0.6, 1.0, 1.0])
    with pytest.raises(InputError, match="'end' must be in"):
        safe_fraction_schedule(0, 10, 0, 0.5, 0.4)
    with pytest.raises(InputError, match="'step' must be an int"):
        safe_fraction_schedule(-1, 10, 0)


def test_safeclip_split_keeps_the_high_component_capped():
    g = torch.Generator().manual_seed(0)
    sims = torch.cat([0.1 + 0.02 * torch.randn(12, generator=g), 0.8 + 0.02 * torch.randn(8, generator=g)])
    full = safeclip_split(sims, 1.0)
    assert full.tolist() == [False] * 12 + [True] * 8
    capped = safeclip_split(sims, 0.2)  # 4 of 20: the 4 most confident of the high component
    assert int(capped.sum()) == 4 and bool(full[capped].all())
    assert not bool(safeclip_split(sims, 0.0).any())
    with pytest.raises(InputError, match="'fraction' must be in"):
        safeclip_split(sims, 1.5)


@pytest.mark.parametrize("fraction", [0.0, 0.5])  # 0: SafeCLIP's warm-up, where no GMM is fitted
@pytest.mark.parametrize(
    ("sims", "message"),
    [
        (torch.tensor([0.1, float("nan"), 0.5, 0.7]), "'similarities' contains 1 NaN/inf"),
        (torch.ones(2, 2), "'similarities' must be a (N,) tensor"),
        ([0.1, 0.5], "'similarities' must be a torch.Tensor"),
    ],
)
def test_safeclip_split_errors_name_it_even_in_warm_up(sims, fraction, message):
    with pytest.raises(InputError, match="^safeclip_split: ") as err:
        safeclip_split(sims, fraction)
    assert message in str(err.value)


# ---------------------------------------------------------------- similarity unlearning


def test_flags_are_the_top_pairs_by_cosine():
    x, y = (t.detach() for t in batch(n=60, d=4, seed=6)[:2])
    flags = flag_top_pairs(x, y, 0.05)  # ceil(3.0) = 3 pairs
    cos = [float(ref_cos(x[i], y[i])) for i in range(60)]
    top = sorted(range(60), key=lambda i: -cos[i])[:3]
    assert flags.nonzero().flatten().tolist() == sorted(top)
    assert int(flag_top_pairs(x, y, 0.001).sum()) == 1  # at least one
    with pytest.raises(InputError, match="'fraction' must be > 0"):
        flag_top_pairs(x, y, 0.0)
    with pytest.raises(InputError, match="fewer than 2 for CLIP"):
        flag_top_pairs(x[:3], y[:3], 0.5)


@pytest.mark.parametrize("target, weight", [(-1.0, 1.0), (0.25, 0.5)])
def test_unlearn_penalty_matches_the_loop_reference(target, weight):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64).requires_grad_()  # not unit: cos normalises
    y = torch.randn(6, 4, generator=g, dtype=torch.float64).requires_grad_()
    flags = torch.tensor([True, False, False, True, True, False])
    compare(unlearn_penalty(x, y, flags, target, weight), ref_penalty(x, y, flags, target, weight), [x, y])
    assert torch.autograd.gradcheck(
        lambda a, b: unlearn_penalty(a, b, flags, target, weight), (x, y), fast_mode=True
    )
    assert torch.isfinite(unlearn_penalty(x.detach().bfloat16(), y.detach().bfloat16(), flags, target))
    got32 = unlearn_penalty(x.detach().float(), y.detach().float(), flags, target, weight).double()
    torch.testing.assert_close(got32, ref_penalty(x, y, flags, target, weight).detach(), rtol=1e-4, atol=0)


def test_unlearn_penalty_pushes_the_cosine_down_to_the_target():
    # c* = -1 is the desired cosine: a descent step lowers cos (the release's (cos + target)^2 raised it)
    x, y = (t.detach().requires_grad_() for t in batch(n=4, d=4, seed=8)[:2])
    flags = torch.tensor([True, True, False, False])
    before = F.cosine_similarity(x, y)[:2].detach()
    gx, gy = torch.autograd.grad(unlearn_penalty(x, y, flags), (x, y))
    after = F.cosine_similarity(x - 0.05 * gx, y - 0.05 * gy)[:2]
    assert bool((after < before).all())
    assert float(unlearn_penalty(x, -x, flags).detach()) == pytest.approx(0.0, abs=1e-12)


def test_unlearn_penalty_errors():
    x, y = (t.detach() for t in batch(n=4, d=4)[:2])
    none = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(NoPositivePairsError, match="flags no pair"):
        unlearn_penalty(x, y, none)
    with pytest.raises(InputError, match="'target' must be in"):
        unlearn_penalty(x, y, ~none, target=-2.0)
    with pytest.raises(InputError, match="'weight' must be in"):
        unlearn_penalty(x, y, ~none, weight=-1.0)
    with pytest.raises(InputError, match="all-zero row"):
        unlearn_penalty(torch.zeros_like(x), y, ~none)


def test_unlearn_clip_loss_matches_the_loop_reference():
    x, y = batch(n=8, d=4, seed=13)[:2]
    flags = flag_top_pairs(x, y, 0.2)  # 2 of 8
    keep = [i for i in range(8) if not flags[i]]
    want = ref_clip(x[keep], y[keep], S) + ref_penalty(x, y, flags, -1.0, 1.0)
    compare(unlearn_clip_loss(x, y, S, fraction=0.2), want, [x, y])
    assert torch.autograd.gradcheck(
        lambda a, b: unlearn_clip_loss(a, b, S, fraction=0.2), (x, y), fast_mode=True
    )
