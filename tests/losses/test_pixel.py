"""GLCL dense terms (METHODS 3.20): pixel_supcon, PixelMemory, the class-balanced pixel sampler and
prototype_info_nce, against float64 loop references written from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_matches_reference, loop_dot, loop_lse
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.losses.pixel import (
    PixelMemory,
    pixel_supcon,
    prototype_info_nce,
    sample_pixels_per_class,
)

IGNORE = 255


def _features(b: int, c: int, h: int, w: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=dtype).requires_grad_()


def _labels(b: int, h: int, w: int, classes: int, seed: int, ignored: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (b, h, w), generator=g)
    return labels.masked_fill(torch.rand(b, h, w, generator=g) < ignored, IGNORE)


def _seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- loop references


def ref_unit_pixel(features: torch.Tensor, b: int, h: int, w: int) -> list[torch.Tensor]:
    """z = f / ||f|| of pixel (b, h, w), as a list of 0-d tensors over the channels."""
    f = [features[b, c, h, w] for c in range(features.shape[1])]
    norm = torch.sqrt(sum(v * v for v in f))
    return [v / norm for v in f]


def ref_pixel_supcon(
    features: torch.Tensor,
    labels: torch.Tensor,
    flat_index: list[int],
    temperature: float,
    memory: list[tuple[torch.Tensor, int]] = (),
) -> torch.Tensor:
    """Mean over anchors (the pixels at flat_index) with a positive and a negative of
    -(1/|P|) sum_p [l_ap - LSE_A l_aj], A = other anchors and the memory entries."""
    _, h_size, w_size = labels.shape
    points = []
    for i in flat_index:
        b, rest = divmod(i, h_size * w_size)
        h, w = divmod(rest, w_size)
        points.append((torch.stack(ref_unit_pixel(features, b, h, w)), int(labels[b, h, w])))
    candidates = points + list(memory)
    losses = []
    for a, (z_a, y_a) in enumerate(points):
        logits, positive = [], []
        for j, (z_j, y_j) in enumerate(candidates):
            if j == a:
                continue
            logit = loop_dot(z_a, z_j) / temperature
            logits.append(logit)
            if y_j == y_a:
                positive.append(logit)
        if not positive or len(positive) == len(logits):
            continue
        lse = loop_lse(logits)
        losses.append(-sum(p - lse for p in positive) / len(positive))
    return sum(losses) / len(losses)


def all_labelled(labels: torch.Tensor) -> list[int]:
    """Flat indices of every pixel that is not ignored, in (b, h, w) loop order."""
    flat = labels.reshape(-1).tolist()
    return [i for i, y in enumerate(flat) if y != IGNORE]


def ref_prototypes(features: torch.Tensor, labels: torch.Tensor, n_classes: int):
    """Per class: (sum over its pixels / count) as a list of channels, or None when absent."""
    b_size, c_size, h_size, w_size = features.shape
    sums = [[0.0] * c_size for _ in range(n_classes)]
    counts = [0] * n_classes
    for b in range(b_size):
        for h in range(h_size):
            for w in range(w_size):
                y = int(labels[b, h, w])
                if y == IGNORE:
                    continue
                counts[y] += 1
                sums[y] = [sums[y][c] + features[b, c, h, w] for c in range(c_size)]
    return [None if n == 0 else [v / n for v in s] for s, n in zip(sums, counts, strict=True)]


def ref_prototype_info_nce(feat_s, labels_s, feat_t, labels_t, n_classes, temperature):
    ps = ref_prototypes(feat_s, labels_s, n_classes)
    pt = ref_prototypes(feat_t, labels_t, n_classes)
    kept = [k for k in range(n_classes) if ps[k] is not None and pt[k] is not None]

    def unit(v):
        norm = torch.sqrt(sum(x * x for x in v))
        return torch.stack([x / norm for x in v])

    us, ut = [unit(ps[k]) for k in kept], [unit(pt[k]) for k in kept]
    logits = [[loop_dot(us[i], ut[j]) / temperature for j in range(len(kept))] for i in range(len(kept))]
    rows = sum(loop_lse(logits[i]) - logits[i][i] for i in range(len(kept))) / len(kept)
    cols = sum(
        loop_lse([logits[i][j] for i in range(len(kept))]) - logits[j][j] for j in range(len(kept))
    ) / len(kept)
    return 0.5 * (rows + cols)


# ---------------------------------------------------------------- the sampler


def test_sampler_keeps_small_classes_whole_and_caps_large_ones() -> None:
    labels = torch.full((2, 5, 6), IGNORE)
    labels.view(-1)[:40] = 0  # 40 pixels of class 0
    labels.view(-1)[40:43] = 3  # 3 pixels of class 3
    labels.view(-1)[50:60] = 1  # 10 pixels of class 1
    index = sample_pixels_per_class(labels, per_class=8, ignore_index=IGNORE, generator=_seeded())
    picked = labels.view(-1)[index]
    assert index.unique().numel() == index.numel()
    assert picked.tolist() == [0] * 8 + [1] * 8 + [3] * 3  # grouped by ascending class
    assert sorted(index[picked == 3].tolist()) == [40, 41, 42]


def test_sampler_is_seeded_and_draws_every_pixel() -> None:
    labels = torch.zeros(1, 4, 5, dtype=torch.long)
    first = sample_pixels_per_class(labels, per_class=3, generator=_seeded(1))
    assert torch.equal(first, sample_pixels_per_class(labels, per_class=3, generator=_seeded(1)))
    g = _seeded(2)
    draws = [sample_pixels_per_class(labels, per_class=3, generator=g) for _ in range(60)]
    assert any(not torch.equal(first, d) for d in draws)
    assert torch.cat(draws).unique().numel() == 20  # every pixel reachable


def test_sampler_all_ignored_gives_empty() -> None:
    assert sample_pixels_per_class(torch.full((1, 2, 2), IGNORE)).numel() == 0


# ---------------------------------------------------------------- pixel_supcon: values and gradients


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_pixel_supcon_all_pixels_matches_loop(temperature: float) -> None:
    features = _features(2, 3, 3, 4, seed=1)
    labels = _labels(2, 3, 4, classes=3, seed=2)
    assert_matches_reference(
        lambda f: pixel_supcon(f, labels, per_class=1000, temperature=temperature),
        lambda f: ref_pixel_supcon(f, labels, all_labelled(labels), temperature),
        features,
    )


def test_pixel_supcon_sampled_matches_loop_on_the_drawn_pixels() -> None:
    features = _features(2, 4, 4, 4, seed=3)
    labels = _labels(2, 4, 4, classes=2, seed=4, ignored=0.3)
    index = sample_pixels_per_class(labels, per_class=5, generator=_seeded(11)).tolist()
    assert len(index) == 10
    assert_matches_reference(
        lambda f: pixel_supcon(f, labels, per_class=5, generator=_seeded(11)),
        lambda f: ref_pixel_supcon(f, labels, index, 0.1),
        features,
    )


def test_pixel_supcon_normalises_features() -> None:
    features = _features(1, 3, 3, 3, seed=5).detach()
    labels = _labels(1, 3, 3, classes=2, seed=6, ignored=0.0)
    scales = torch.rand(1, 1, 3, 3, generator=_seeded(3), dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(pixel_supcon(features * scales, labels), pixel_supcon(features, labels))


def test_pixel_supcon_identical_pixels_per_class_hand_value() -> None:
    # Two classes, n pixels each, one unit vector per class, orthogonal: for each anchor the
    # n-1 positives score 1/tau and the n negatives 0:  L = log((n-1) e^{1/tau} + n) - 1/tau.
    n, tau = 3, 0.2
    features = torch.zeros(1, 2, 1, 2 * n, dtype=torch.float64)
    features[0, 0, 0, :n] = 2.0
    features[0, 1, 0, n:] = 0.5
    labels = torch.tensor([[[0] * n + [1] * n]])
    want = math.log((n - 1) * math.exp(1 / tau) + n) - 1 / tau
    assert abs(pixel_supcon(features, labels, temperature=tau).item() - want) < 1e-12


def test_pixel_supcon_gradcheck() -> None:
    features = _features(1, 3, 3, 3, seed=8)
    labels = _labels(1, 3, 3, classes=2, seed=9, ignored=0.2)
    assert torch.autograd.gradcheck(
        lambda f: pixel_supcon(f, labels, per_class=3, temperature=0.5, generator=_seeded(4)), (features,)
    )


def test_pixel_supcon_float32_agrees_with_float64_and_bf16_is_finite() -> None:
    features = _features(2, 8, 6, 6, seed=10)
    labels = _labels(2, 6, 6, classes=3, seed=11)
    want = pixel_supcon(features, labels, per_class=20, generator=_seeded(5))
    got = pixel_supcon(features.detach().float(), labels, per_class=20, generator=_seeded(5))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)
    half = features.detach().bfloat16().requires_grad_()
    loss = pixel_supcon(half, labels, per_class=20, generator=_seeded(5))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(half.grad).all()


# ---------------------------------------------------------------- the memory bank


def test_memory_fifo_per_class_and_detached() -> None:
    memory = PixelMemory(size_per_class=3, dim=2)
    assert len(memory) == 0 and memory.entries()[0].shape == (0, 2)
    x = torch.arange(12, dtype=torch.float64).view(6, 2).requires_grad_()
    memory.enqueue(x[:4], torch.tensor([0, 1, 0, 0]))
    memory.enqueue(x[4:], torch.tensor([0, 1]))
    entries, labels = memory.entries()
    assert labels.tolist() == [0, 0, 0, 1, 1]
    # class 0 saw rows 0, 2, 3, 4: the oldest (row 0) is dropped; class 1 keeps rows 1, 5
    torch.testing.assert_close(entries, x.detach()[[2, 3, 4, 1, 5]])
    assert not entries.requires_grad and len(memory) == 5


def test_pixel_supcon_with_memory_matches_loop_and_enqueues() -> None:
    labels = _labels(1, 3, 4, classes=3, seed=12, ignored=0.25)
    memory = PixelMemory(size_per_class=4, dim=3)
    first = _features(1, 3, 3, 4, seed=13)
    pixel_supcon(first, labels, per_class=3, memory=memory, generator=_seeded(1))
    index = sample_pixels_per_class(labels, per_class=3, generator=_seeded(1)).tolist()
    entries, entry_labels = memory.entries()
    assert len(memory) == len(index)
    stored = ref_pixel_entries(first.detach(), labels, index)
    got_stored = sorted(zip(entry_labels.tolist(), entries.tolist(), strict=True))
    want_stored = sorted((y, [float(v) for v in z]) for z, y in stored)
    assert [y for y, _ in got_stored] == [y for y, _ in want_stored]
    torch.testing.assert_close(
        torch.tensor([z for _, z in got_stored]),
        torch.tensor([z for _, z in want_stored]),
        atol=1e-12,
        rtol=0,
    )

    second = _features(1, 3, 3, 4, seed=14)
    second_index = sample_pixels_per_class(labels, per_class=3, generator=_seeded(2)).tolist()
    bank = list(zip(entries, entry_labels.tolist(), strict=True))
    assert_matches_reference(
        lambda f: pixel_supcon(f, labels, per_class=3, memory=_copy(memory), generator=_seeded(2)),
        lambda f: ref_pixel_supcon(f, labels, second_index, 0.1, memory=bank),
        second,
    )


def ref_pixel_entries(features, labels, index):
    """(unit vector, label) of each flat index, from the loop normalisation."""
    _, h_size, w_size = labels.shape
    out = []
    for i in index:
        b, rest = divmod(i, h_size * w_size)
        h, w = divmod(rest, w_size)
        out.append((torch.stack(ref_unit_pixel(features, b, h, w)), int(labels[b, h, w])))
    return out


def _copy(memory: PixelMemory) -> PixelMemory:
    """A fresh memory holding the same entries (the loss mutates the one it is given)."""
    fresh = PixelMemory(memory.size_per_class, memory.dim)
    fresh.enqueue(*memory.entries())
    return fresh


def test_memory_supplies_the_positives_a_single_pixel_class_lacks() -> None:
    features = _features(1, 2, 1, 2, seed=15)
    labels = torch.tensor([[[0, 1]]])
    with pytest.raises(NoPositivePairsError, match="single pixel"):
        pixel_supcon(features, labels)
    memory = PixelMemory(size_per_class=2, dim=2)
    bank_z = torch.nn.functional.normalize(
        torch.randn(3, 2, generator=_seeded(6), dtype=torch.float64), dim=1
    )
    memory.enqueue(bank_z, torch.tensor([0, 1, 1]))
    bank = list(zip(bank_z, [0, 1, 1], strict=True))
    assert_matches_reference(
        lambda f: pixel_supcon(f, labels, memory=_copy(memory)),
        lambda f: ref_pixel_supcon(f, labels, [0, 1], 0.1, memory=bank),
        features,
    )


# ---------------------------------------------------------------- pixel_supcon: errors


def test_pixel_supcon_all_ignored_raises() -> None:
    with pytest.raises(NoPositivePairsError, match="pixel_supcon.*ignore_index=255"):
        pixel_supcon(_features(1, 2, 2, 2, seed=0), torch.full((1, 2, 2), IGNORE))


def test_pixel_supcon_one_class_raises() -> None:
    labels = torch.tensor([[[4, 4], [IGNORE, 4]]])
    with pytest.raises(NoPositivePairsError, match="only class 4"):
        pixel_supcon(_features(1, 2, 2, 2, seed=0), labels)


@pytest.mark.parametrize(
    "features, labels, kwargs, match",
    [
        (torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long), {}, "features.*(B, C, H, W)"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), {}, r"labels.*\(2, 4, 4\)"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4), {}, "labels.*integer"),
        (torch.randn(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long), {}, "empty"),
        (torch.full((1, 3, 2, 2), float("nan")), torch.zeros(1, 2, 2, dtype=torch.long), {}, "NaN"),
        (
            torch.randn(1, 3, 2, 2),
            torch.zeros(1, 2, 2, dtype=torch.long),
            {"temperature": 0.0},
            "temperature",
        ),
        (torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), {"per_class": 0}, "per_class"),
        (torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), {"per_class": True}, "per_class"),
        (
            torch.randn(1, 3, 2, 2),
            torch.zeros(1, 2, 2, dtype=torch.long),
            {"ignore_index": 2.5},
            "ignore_index",
        ),
        (
            torch.randn(1, 3, 2, 2),
            torch.zeros(1, 2, 2, dtype=torch.long),
            {"memory": PixelMemory(4, 5)},
            "dim 5",
        ),
        (torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), {"memory": [1]}, "PixelMemory"),
        (
            torch.randn(1, 3, 2, 2),
            torch.zeros(1, 2, 2, dtype=torch.long),
            {"generator": 0},
            "torch.Generator",
        ),
    ],
)
def test_pixel_supcon_bad_inputs_raise(features, labels, kwargs, match) -> None:
    with pytest.raises(InputError, match=match):
        pixel_supcon(features, labels, **kwargs)


def test_pixel_supcon_zero_pixel_raises() -> None:
    features = torch.randn(1, 3, 2, 2)
    features[0, :, 1, 1] = 0
    with pytest.raises(InputError, match="all-zero"):
        pixel_supcon(features, torch.tensor([[[0, 1], [0, 1]]]))


@pytest.mark.parametrize(
    "args, match", [((0, 4), "size_per_class"), ((4, 0), "dim"), ((2.0, 4), "size_per_class")]
)
def test_pixel_memory_bad_sizes_raise(args, match) -> None:
    with pytest.raises(InputError, match=match):
        PixelMemory(*args)


def test_pixel_memory_enqueue_checks_width() -> None:
    with pytest.raises(InputError, match="embedding size 3"):
        PixelMemory(2, 3).enqueue(torch.randn(2, 4), torch.tensor([0, 1]))


# ---------------------------------------------------------------- prototype_info_nce


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_prototype_info_nce_matches_loop(temperature: float) -> None:
    feat_s, feat_t = _features(2, 3, 3, 3, seed=20), _features(1, 3, 4, 2, seed=21)
    labels_s = _labels(2, 3, 3, classes=4, seed=22)
    labels_t = _labels(1, 4, 2, classes=3, seed=23)  # class 3 absent in the target: skipped
    assert_matches_reference(
        lambda s, t: prototype_info_nce(s, labels_s, t, labels_t, 4, temperature),
        lambda s, t: ref_prototype_info_nce(s, labels_s, t, labels_t, 4, temperature),
        feat_s,
        feat_t,
    )


def test_prototype_info_nce_skips_classes_absent_in_one_domain() -> None:
    feat_s, feat_t = _features(1, 3, 4, 4, seed=24).detach(), _features(1, 3, 4, 4, seed=25).detach()
    labels_s = torch.tensor([0, 1, 2, 3] * 4).view(1, 4, 4)
    labels_t = torch.tensor([0, 1, 2, IGNORE] * 4).view(1, 4, 4)
    only_shared = labels_s.masked_fill(labels_s == 3, IGNORE)
    torch.testing.assert_close(
        prototype_info_nce(feat_s, labels_s, feat_t, labels_t, 5),
        prototype_info_nce(feat_s, only_shared, feat_t, labels_t, 5),
    )


def test_prototype_info_nce_orthogonal_matched_prototypes_hand_value() -> None:
    # Two classes whose prototypes point the same way in both domains and are orthogonal across
    # classes: l = diag(1/tau), CE per row = log(1 + e^{-1/tau}).
    feat = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    feat[0, 0, 0, :2] = torch.tensor([1.0, 3.0])
    feat[0, 1, 0, 2:] = torch.tensor([0.5, 0.5])
    labels = torch.tensor([[[0, 0, 1, 1]]])
    tau = 0.25
    got = prototype_info_nce(feat, labels, 2 * feat, labels, 2, tau)
    assert abs(got.item() - math.log1p(math.exp(-1 / tau))) < 1e-14


def test_prototype_info_nce_gradcheck() -> None:
    feat_s, feat_t = _features(1, 3, 2, 3, seed=26), _features(1, 3, 3, 2, seed=27)
    labels_s = torch.tensor([[[0, 1, 2], [2, IGNORE, 0]]])
    labels_t = torch.tensor([[[1, 0], [2, 2], [IGNORE, 1]]])
    assert torch.autograd.gradcheck(
        lambda s, t: prototype_info_nce(s, labels_s, t, labels_t, 3, 0.5), (feat_s, feat_t)
    )


def test_prototype_info_nce_float32_agrees_and_bf16_is_finite() -> None:
    feat_s, feat_t = _features(2, 8, 5, 5, seed=28), _features(2, 8, 5, 5, seed=29)
    labels_s, labels_t = _labels(2, 5, 5, 4, seed=30), _labels(2, 5, 5, 4, seed=31)
    want = prototype_info_nce(feat_s, labels_s, feat_t, labels_t, 4)
    got = prototype_info_nce(feat_s.detach().float(), labels_s, feat_t.detach().float(), labels_t, 4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)
    half = feat_s.detach().bfloat16().requires_grad_()
    loss = prototype_info_nce(half, labels_s, feat_t.detach().bfloat16(), labels_t, 4)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(half.grad).all()


def test_prototype_info_nce_too_few_shared_classes_raise() -> None:
    feat = torch.randn(1, 3, 2, 2)
    labels_s = torch.tensor([[[0, 0], [1, 1]]])
    with pytest.raises(NoPositivePairsError, match=r"both domains: \[1\]"):
        prototype_info_nce(feat, labels_s, feat, torch.tensor([[[1, 2], [2, IGNORE]]]), 3)
    with pytest.raises(NoPositivePairsError, match=r"both domains: \[\]"):
        prototype_info_nce(feat, labels_s, feat, torch.full((1, 2, 2), IGNORE), 3)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"labels_t": torch.tensor([[[0, 1], [5, 1]]])}, "class id 5"),
        ({"labels_s": torch.tensor([[[0, 1], [-1, 1]]])}, "class id -1"),
        ({"n_classes": 1}, "n_classes"),
        ({"feat_t": torch.randn(1, 4, 2, 2)}, "3 channels"),
        ({"feat_s": torch.randn(1, 3, 2, 3)}, r"labels_s.*\(1, 2, 3\)"),
        ({"temperature": -1.0}, "temperature"),
        ({"ignore_index": None}, "ignore_index"),
    ],
)
def test_prototype_info_nce_bad_inputs_raise(change, match) -> None:
    args = {
        "feat_s": torch.randn(1, 3, 2, 2),
        "labels_s": torch.tensor([[[0, 1], [0, 1]]]),
        "feat_t": torch.randn(1, 3, 2, 2),
        "labels_t": torch.tensor([[[1, 0], [1, 0]]]),
        "n_classes": 2,
        "temperature": 0.1,
    }
    args.update(change)
    with pytest.raises(InputError, match=match):
        prototype_info_nce(**args)


def test_prototype_info_nce_zero_prototype_raises() -> None:
    feat = torch.randn(1, 3, 2, 2)
    feat[0, :, 0, :] = 0
    labels = torch.tensor([[[0, 0], [1, 1]]])
    with pytest.raises(InputError, match=r"feat_s.*class\(es\) \[0\]"):
        prototype_info_nce(feat, labels, torch.randn(1, 3, 2, 2), labels, 2)


def test_uint8_label_maps_give_the_same_losses() -> None:
    feat_s, feat_t = _features(1, 3, 4, 4, seed=32).detach(), _features(1, 3, 4, 4, seed=33).detach()
    labels_s, labels_t = _labels(1, 4, 4, 3, seed=34), _labels(1, 4, 4, 3, seed=35)
    small_s, small_t = labels_s.to(torch.uint8), labels_t.to(torch.uint8)
    torch.testing.assert_close(
        pixel_supcon(feat_s, small_s, per_class=4, generator=_seeded(1)),
        pixel_supcon(feat_s, labels_s, per_class=4, generator=_seeded(1)),
    )
    torch.testing.assert_close(
        prototype_info_nce(feat_s, small_s, feat_t, small_t, 3),
        prototype_info_nce(feat_s, labels_s, feat_t, labels_t, 3),
    )


def test_sampler_refuses_float_labels() -> None:
    with pytest.raises(
        InputError, match="sample_pixels_per_class: argument 'labels' must hold integer class ids"
    ):
        sample_pixels_per_class(torch.zeros(2, 3))
