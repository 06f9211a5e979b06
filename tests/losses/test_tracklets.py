"""tracklet_supcon against a float64 loop reference of METHODS 3.22 (SupCon on tracklets)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_dot, loop_lse, loop_reduce, unit_rows
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.losses.supervised import supcon
from contrastkit.losses.tracklets import tracklet_supcon

TRACKLETS = torch.tensor([3, 3, 7, 7, 7, 9, 9, 11])  # 11 is a singleton tracklet
COOCCUR = torch.tensor([[3, 7], [9, 3], [7, 11], [40, 41]])  # (40, 41): tracklets absent here
MERGED = torch.tensor([0, 0, 0, 0, 0, 1, 1, 0])  # 3, 7 and 11 clustered into one identity


def ref_tracklet_supcon(
    z: torch.Tensor,
    tracklet_id: torch.Tensor,
    cooccur: torch.Tensor | None,
    temperature: float,
    reduction: str = "mean",
    merged_id: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loops over anchors a = v*N + i: P(a) = same merged label and not a co-occurring pair (or
    the same frame), A(a) = every other anchor; L_a = -mean_P [l_ap - LSE_A l_aj]."""
    zz = z if z.dim() == 3 else z[:, None, :]
    n, views = zz.shape[0], zz.shape[1]
    track = [int(t) for t in tracklet_id]
    label = track if merged_id is None else [int(m) for m in merged_id]
    pairs = set()
    for a, b in [] if cooccur is None else cooccur.tolist():
        pairs.add((a, b))
        pairs.add((b, a))
    anchors = [(v, i) for v in range(views) for i in range(n)]
    out: list[torch.Tensor | None] = []
    for k, (va, i) in enumerate(anchors):
        logits, positives = [], []
        for m, (vb, j) in enumerate(anchors):
            if m == k:
                continue
            logit = loop_dot(zz[i, va], zz[j, vb]) / temperature
            logits.append(logit)
            same_identity = label[i] == label[j] and (track[i], track[j]) not in pairs
            if i == j or same_identity:
                positives.append(logit)
        if not positives:
            out.append(None)
            continue
        lse = loop_lse(logits)
        out.append(-sum(p - lse for p in positives) / len(positives))
    return loop_reduce(out, reduction)


def _views(n: int, v: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, v, d, generator=g, dtype=dtype), dim=-1).requires_grad_()


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_tracklet_labels_match_loop(temperature: float, reduction: str) -> None:
    z = unit_rows(8, 5, seed=1)
    assert_matches_reference(
        lambda x: tracklet_supcon(x, TRACKLETS, COOCCUR, temperature, reduction),
        lambda x: ref_tracklet_supcon(x, TRACKLETS, COOCCUR, temperature, reduction),
        z,
        rtol=1e-6,
    )


def test_merged_labels_with_cooccurrence_match_loop() -> None:
    z = unit_rows(8, 5, seed=2)
    assert_matches_reference(
        lambda x: tracklet_supcon(x, TRACKLETS, COOCCUR, 0.1, merged_id=MERGED),
        lambda x: ref_tracklet_supcon(x, TRACKLETS, COOCCUR, 0.1, merged_id=MERGED),
        z,
        rtol=1e-6,
    )


def test_two_views_reduction_none_match_loop() -> None:
    z = _views(8, 2, 4, seed=3)
    got = tracklet_supcon(z, TRACKLETS, COOCCUR, 0.2, "none", merged_id=MERGED)
    want = ref_tracklet_supcon(z, TRACKLETS, COOCCUR, 0.2, "none", merged_id=MERGED)
    assert got.shape == (16,)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-6)
    g_got = torch.autograd.grad(got.sum(), z)[0]
    g_want = torch.autograd.grad(want.sum(), z)[0]
    torch.testing.assert_close(g_got, g_want, atol=1e-10, rtol=1e-6)


def test_singleton_tracklet_is_nan_with_reduction_none() -> None:
    z = unit_rows(8, 5, seed=4)
    got = tracklet_supcon(z, TRACKLETS, None, 0.1, "none")
    assert torch.isnan(got).tolist() == [False] * 7 + [True]


def test_cooccurring_tracklets_are_never_positives_after_merging() -> None:
    z = unit_rows(8, 5, seed=5)
    merged = tracklet_supcon(z, TRACKLETS, COOCCUR, 0.1, "none", merged_id=MERGED)
    unguarded = tracklet_supcon(z, TRACKLETS, None, 0.1, "none", merged_id=MERGED)
    # Frame 0 (tracklet 3) would count tracklet 7's frames as positives without the guard.
    assert abs(merged[0].item() - unguarded[0].item()) > 1e-3
    # Its positives are then frame 1 and frame 7 (tracklet 11 does not co-occur with 3).
    logits = z.detach() @ z.detach().T / 0.1
    lse = torch.logsumexp(torch.cat([logits[0, 1:]]), dim=0)
    want = -((logits[0, 1] - lse) + (logits[0, 7] - lse)) / 2
    torch.testing.assert_close(merged[0].detach(), want, atol=1e-12, rtol=0)


def test_without_merging_cooccurrence_changes_nothing() -> None:
    # Co-occurring tracklets are already negatives of each other under tracklet labels.
    z = unit_rows(8, 5, seed=6)
    torch.testing.assert_close(
        tracklet_supcon(z, TRACKLETS, COOCCUR), tracklet_supcon(z, TRACKLETS, None), atol=0, rtol=0
    )


def test_equals_supcon_on_tracklet_labels() -> None:
    z = _views(8, 2, 4, seed=7)
    torch.testing.assert_close(tracklet_supcon(z, TRACKLETS), supcon(z, TRACKLETS, 0.1), atol=1e-12, rtol=0)


def test_identical_embeddings_value() -> None:
    z = torch.ones(8, 3, dtype=torch.float64)
    assert abs(tracklet_supcon(z, TRACKLETS, COOCCUR, 0.3).item() - math.log(7)) < 1e-12


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(8)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ids, merged = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 0, 1, 1])
    pairs = torch.tensor([[0, 1]])
    assert torch.autograd.gradcheck(lambda x: tracklet_supcon(x, ids, pairs, 0.5, merged_id=merged), (z,))


def test_float32_agrees_with_float64() -> None:
    z = unit_rows(8, 16, seed=9)
    want = tracklet_supcon(z, TRACKLETS, COOCCUR, 0.1, merged_id=MERGED)
    got = tracklet_supcon(z.detach().float(), TRACKLETS, COOCCUR, 0.1, merged_id=MERGED)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)


def test_bf16_is_finite() -> None:
    z = unit_rows(8, 16, seed=10).detach().bfloat16().requires_grad_()
    loss = tracklet_supcon(z, TRACKLETS, COOCCUR, 0.1, merged_id=MERGED)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad.float()).all()


# ---------------------------------------------------------------- errors


def test_every_tracklet_singleton_raises() -> None:
    with pytest.raises(NoPositivePairsError, match="tracklet_supcon: no frame has a positive"):
        tracklet_supcon(unit_rows(4, 3, seed=11), torch.arange(4))
    # merging cannot rescue a co-occurring pair
    with pytest.raises(NoPositivePairsError):
        tracklet_supcon(
            unit_rows(2, 3, seed=11),
            torch.tensor([0, 1]),
            torch.tensor([[1, 0]]),
            merged_id=torch.zeros(2).long(),
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"z": torch.randn(8)}, "'z' must have shape"),
        ({"z": torch.full((8, 3), float("nan"))}, "NaN"),
        ({"z": torch.randn(0, 3)}, "empty"),
        ({"tracklet_id": torch.zeros(7).long()}, "'tracklet_id' must have shape"),
        ({"tracklet_id": torch.zeros(8)}, "'tracklet_id' must be an integer"),
        ({"cooccur": torch.tensor([1, 2])}, r"'cooccur' must have shape \(K, 2\)"),
        ({"cooccur": torch.tensor([[1.0, 2.0]])}, "'cooccur' must be an integer"),
        ({"cooccur": torch.tensor([[3, 3]])}, "with itself"),
        ({"temperature": 0.0}, "'temperature'"),
        ({"reduction": "avg"}, "'reduction'"),
        ({"merged_id": torch.zeros(3).long()}, "'merged_id' must have shape"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, match: str) -> None:
    args = {"z": torch.randn(8, 3), "tracklet_id": TRACKLETS, "cooccur": COOCCUR} | kwargs
    with pytest.raises(InputError, match=match) as info:
        tracklet_supcon(**args)
    assert str(info.value).startswith("tracklet_supcon: ")
