"""paired_retrieval / retrieval_ranks / top_k_neighbours against loop references in float64."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from contrastkit import InputError
from contrastkit.eval import paired_retrieval, retrieval_ranks, top_k_neighbours


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))


def _ref_ranks(img: torch.Tensor, txt: torch.Tensor, owner: list[int]) -> tuple[list[int], list[int]]:
    """Pessimistic ranks from the definition, one pair at a time."""
    sim = [[_cos(i, t) for t in txt] for i in img]
    i2t = []
    for i, row in enumerate(sim):
        best = max(row[j] for j in range(len(txt)) if owner[j] == i)
        i2t.append(1 + sum(1 for j in range(len(txt)) if owner[j] != i and row[j] >= best))
    t2i = []
    for j, o in enumerate(owner):
        pos = sim[o][j]
        t2i.append(1 + sum(1 for i in range(len(img)) if i != o and sim[i][j] >= pos))
    return i2t, t2i


def exact_unit_rows(n: int, *, seed: int) -> torch.Tensor:
    """(n, 4) float64 rows drawn from +-e_i and (+-1/2, +-1/2, +-1/2, +-1/2): unit norm exactly, and every
    dot product is a multiple of 1/4 computed without rounding, so equal cosines are exact ties."""
    halves = torch.tensor([[(s >> i & 1) - 0.5 for i in range(4)] for s in range(16)], dtype=torch.float64)
    pool = torch.cat([torch.eye(4, dtype=torch.float64), -torch.eye(4, dtype=torch.float64), halves])
    return pool[torch.randint(0, len(pool), (n,), generator=torch.Generator().manual_seed(seed))]


def _tied_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ties everywhere, duplicate images and captions, 1-4 captions per image."""
    g = torch.Generator().manual_seed(seed)
    img = exact_unit_rows(9, seed=seed)
    img[5] = img[2]  # duplicate image
    owner = torch.cat([torch.arange(9), torch.randint(0, 9, (14,), generator=g)])
    txt = exact_unit_rows(23, seed=seed + 100)
    txt[7] = txt[3]  # duplicate caption
    txt[11] = img[owner[11]]  # a caption equal to its image
    return img, txt, owner


def _random_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(11, 6, generator=g, dtype=torch.float64)
    owner = torch.cat([torch.arange(11), torch.randint(0, 11, (30,), generator=g)])
    txt = img[owner] + 1.5 * torch.randn(41, 6, generator=g, dtype=torch.float64)
    return img, txt, owner


@pytest.mark.parametrize("make", [_tied_inputs, _random_inputs])
@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_ranks_match_the_loop_reference(make, chunk_size):
    img, txt, owner = make()
    i2t, t2i = retrieval_ranks(img, txt, owner, chunk_size=chunk_size)
    want_i2t, want_t2i = _ref_ranks(img, txt, owner.tolist())
    assert i2t.tolist() == want_i2t
    assert t2i.tolist() == want_t2i
    assert i2t.dtype == t2i.dtype == torch.int64


@pytest.mark.parametrize("make", [_tied_inputs, _random_inputs])
def test_metrics_are_the_summaries_of_the_reference_ranks(make):
    img, txt, owner = make()
    got = paired_retrieval(img, txt, owner, ks=(1, 2, 5, 10))
    want_i2t, want_t2i = _ref_ranks(img, txt, owner.tolist())
    for prefix, ranks in (("i2t", want_i2t), ("t2i", want_t2i)):
        for k in (1, 2, 5, 10):
            assert got[f"{prefix}_R@{k}"] == pytest.approx(sum(r <= k for r in ranks) / len(ranks), abs=1e-15)
        assert got[f"{prefix}_mean_rank"] == pytest.approx(statistics.mean(ranks), abs=1e-12)
        assert got[f"{prefix}_median_rank"] == statistics.median(ranks)


def test_keys_and_default_ks():
    img, txt, owner = _random_inputs()
    keys = list(paired_retrieval(img, txt, owner))
    assert keys == [
        f"{p}_{m}" for p in ("i2t", "t2i") for m in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")
    ]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 40, 10_000])
def test_chunk_size_does_not_change_anything(chunk_size):
    img, txt, owner = _random_inputs(seed=5)
    assert paired_retrieval(img, txt, owner, chunk_size=chunk_size) == paired_retrieval(img, txt, owner)
    img, txt, owner = _tied_inputs(seed=5)
    assert paired_retrieval(img, txt, owner, chunk_size=chunk_size) == paired_retrieval(img, txt, owner)


def test_identity_embeddings_give_perfect_recall():
    img = torch.eye(4)
    txt = torch.cat([torch.eye(4), 3 * torch.eye(4)])  # two captions per image, scale does not matter
    got = paired_retrieval(img, txt, torch.arange(8) % 4)
    assert all(got[f"{p}_R@1"] == 1.0 and got[f"{p}_median_rank"] == 1.0 for p in ("i2t", "t2i"))


def test_collapsed_embeddings_get_the_worst_ranks():
    """All scores tie: every other candidate counts ahead of the positive."""
    owner = torch.tensor([0, 0, 0, 1, 2, 2])
    i2t, t2i = retrieval_ranks(torch.ones(3, 2), torch.ones(6, 2), owner)
    assert i2t.tolist() == [4, 6, 5]  # 1 + captions of the other images
    assert t2i.tolist() == [3] * 6


def test_own_captions_do_not_push_the_best_one_down():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0]])  # two tied captions of image 0
    i2t, t2i = retrieval_ranks(img, txt, torch.tensor([0, 0, 1]))
    assert i2t.tolist() == [1, 1]  # image 0: its two tied captions share the top, neither pushes the other
    assert t2i.tolist() == [1, 1, 2]  # (1, 1) is equally close to both images: pessimistic


def test_float32_and_float16_inputs():
    img, txt, owner = _random_inputs(seed=3)
    want = retrieval_ranks(img, txt, owner)
    got32 = retrieval_ranks(img.float(), txt.float(), owner)
    assert (got32[0] - want[0]).abs().max() <= 1 and (got32[1] - want[1]).abs().max() <= 1
    assert paired_retrieval(img.half(), txt.half(), owner)["t2i_R@10"] >= 0.0


def _ref_top_k(q: torch.Tensor, g: torch.Tensor, k: int, cosine: bool) -> tuple[list, list]:
    scores, indices = [], []
    for a in q:
        row = [(_cos(a, b) if cosine else float(a @ b), j) for j, b in enumerate(g)]
        row.sort(key=lambda sj: (-sj[0], sj[1]))
        scores.append([s for s, _ in row[:k]])
        indices.append([j for _, j in row[:k]])
    return scores, indices


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 4, 100])
@pytest.mark.parametrize("k", [1, 3, 12])
def test_top_k_matches_sorted_reference_with_ties(normalize, chunk_size, k):
    gallery = exact_unit_rows(12, seed=7)
    gallery[9] = gallery[1]
    if not normalize:
        gallery = gallery * torch.arange(1, 13, dtype=torch.float64)[:, None]
    query = torch.cat(
        [exact_unit_rows(4, seed=8), torch.randn(5, 4, generator=torch.Generator().manual_seed(9))]
    )
    query = query.double()
    scores, idx = top_k_neighbours(query, gallery, k, chunk_size, normalize=normalize)
    want_scores, want_idx = _ref_top_k(query, gallery, k, normalize)
    assert idx.tolist() == want_idx
    torch.testing.assert_close(scores, torch.tensor(want_scores, dtype=torch.float64), atol=1e-14, rtol=0)


def test_top_k_all_ties_keeps_gallery_order():
    scores, idx = top_k_neighbours(torch.ones(2, 3), torch.ones(6, 3), 4)
    assert idx.tolist() == [[0, 1, 2, 3]] * 2
    assert scores.shape == (2, 4)


# ----- bad inputs ---------------------------------------------------------------------------------


def _ok() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: (torch.zeros(0, 4), a[1], a[2]), "'image_emb' is empty"),
        (lambda a: (a[0], torch.zeros(0, 4), a[2][:0]), "'text_emb' is empty"),
        (lambda a: (a[0], torch.randn(5, 3), a[2]), "'text_emb' must have embedding size 4"),
        (
            lambda a: (a[0].masked_fill(torch.eye(3, 4, dtype=torch.bool), torch.nan), a[1], a[2]),
            "'image_emb'.*NaN",
        ),
        (lambda a: (a[0], a[1], torch.tensor([0, 1, 3, 0, 1])), r"'text_to_image'.*\[0, 3\).*Map ids"),
        (lambda a: (a[0], a[1], torch.tensor([0, 1, -1, 0, 2])), r"'text_to_image'.*\[0, 3\)"),
        (lambda a: (a[0], a[1], torch.tensor([0, 1, 2, 0])), r"'text_to_image' must have shape \(5,\)"),
        (lambda a: (a[0], a[1], a[2].float()), "'text_to_image' must be an integer tensor"),
        (lambda a: (a[0], a[1], torch.tensor([0, 1, 0, 0, 1])), "image.*have none.*first: \\[2\\]"),
        (lambda a: (torch.zeros(3, 4), a[1], a[2]), "'image_emb' has 3 all-zero row"),
        (lambda a: (a[0].long(), a[1], a[2]), "'image_emb' must be a floating-point tensor"),
    ],
)
def test_bad_inputs_raise_with_the_argument_named(change, match):
    with pytest.raises(InputError, match=f"paired_retrieval: .*{match}"):
        paired_retrieval(*change(_ok()))


@pytest.mark.parametrize(
    ("ks", "match"),
    [((0, 5), "'ks' must be an int >= 1; got 0"), ((), "'ks' is empty"), ((1.5,), "'ks'"), ("15", "'ks'")],
)
def test_bad_ks(ks, match):
    with pytest.raises(InputError, match=match):
        paired_retrieval(*_ok(), ks=ks)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size(chunk_size):
    with pytest.raises(InputError, match="'chunk_size' must be an int >= 1"):
        retrieval_ranks(*_ok(), chunk_size=chunk_size)


def test_top_k_bad_inputs():
    q, g = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(InputError, match="'k' must be <= the gallery size 5; got 6"):
        top_k_neighbours(q, g, 6)
    with pytest.raises(InputError, match="'k' must be an int >= 1; got 0"):
        top_k_neighbours(q, g, 0)
    with pytest.raises(InputError, match="'gallery' must have embedding size 4"):
        top_k_neighbours(q, torch.randn(5, 2), 1)
    with pytest.raises(InputError, match="'query' is empty"):
        top_k_neighbours(torch.zeros(0, 4), g, 1)
    with pytest.raises(InputError, match="'normalize' must be True or False"):
        top_k_neighbours(q, g, 1, normalize="yes")
