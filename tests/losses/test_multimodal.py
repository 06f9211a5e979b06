"""multimodal_info_nce against the explicit sum of pairwise CLIP losses (float64 loop reference)."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_matches_reference, loop_dot, loop_lse, unit_rows
from contrastkit import InputError
from contrastkit.losses import LogitScale, clip_loss, multimodal_info_nce

MODS = ("ts", "image", "text")


def _embeddings(b: int = 5, d: int = 4) -> dict[str, torch.Tensor]:
    return {m: unit_rows(b, d, seed=i) for i, m in enumerate(MODS)}


def _ref_clip(x: torch.Tensor, y: torch.Tensor, s) -> torch.Tensor:
    """1/2 [CE(s x y^T, i) + CE(s y x^T, i)] by loops."""
    b = x.shape[0]
    logits = [[s * loop_dot(x[i], y[j]) for j in range(b)] for i in range(b)]
    rows = sum(loop_lse(logits[i]) - logits[i][i] for i in range(b)) / b
    cols = sum(loop_lse([logits[j][i] for j in range(b)]) - logits[i][i] for i in range(b)) / b
    return 0.5 * (rows + cols)


def test_default_pairs_equal_the_explicit_sum_values_and_gradients():
    z = _embeddings()
    scales = {("ts", "image"): 3.0, ("ts", "text"): 7.5, ("image", "text"): 12.0}

    def loss(a, b, c):
        return multimodal_info_nce({"ts": a, "image": b, "text": c}, scales)

    def ref(a, b, c):
        return _ref_clip(a, b, 3.0) + _ref_clip(a, c, 7.5) + _ref_clip(b, c, 12.0)

    assert_matches_reference(loss, ref, z["ts"], z["image"], z["text"], atol=1e-12)


def test_learnable_scales_get_their_pair_gradient():
    z = _embeddings()
    t = {
        p: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for p, v in zip([("ts", "image"), ("ts", "text"), ("image", "text")], [1.0, 2.0, 2.5], strict=True)
    }

    def loss(a, b, c, s1, s2, s3):
        return multimodal_info_nce(
            {"ts": a, "image": b, "text": c},
            {("ts", "image"): s1.exp(), ("text", "ts"): s2.exp(), ("image", "text"): s3.exp()},
        )

    def ref(a, b, c, s1, s2, s3):
        return _ref_clip(a, b, s1.exp()) + _ref_clip(a, c, s2.exp()) + _ref_clip(b, c, s3.exp())

    assert_matches_reference(loss, ref, z["ts"], z["image"], z["text"], *t.values(), atol=1e-12)
    args = (*z.values(), *t.values())
    assert torch.autograd.gradcheck(loss, args)


def test_pair_selection_and_terms():
    z = _embeddings()
    got, terms = multimodal_info_nce(z, 10.0, pairs=[("text", "ts")], return_terms=True)
    want = clip_loss(z["text"], z["ts"], 10.0)
    torch.testing.assert_close(got, want)
    assert list(terms) == [("text", "ts")]
    _, all_terms = multimodal_info_nce(z, 10.0, return_terms=True)
    assert list(all_terms) == [("ts", "image"), ("ts", "text"), ("image", "text")]
    # keys of pairs not in use are ignored
    multimodal_info_nce(z, {("ts", "image"): 2.0, ("ts", "text"): 3.0}, pairs=[("image", "ts")])


def test_logit_scale_modules_are_called():
    z = _embeddings()
    scales = {("ts", "image"): LogitScale(5.0), ("ts", "text"): LogitScale(2.0), ("image", "text"): 4.0}
    got = multimodal_info_nce(z, scales)
    want = clip_loss(z["ts"], z["image"], 5.0) + clip_loss(z["ts"], z["text"], 2.0)
    want = want + clip_loss(z["image"], z["text"], 4.0)
    torch.testing.assert_close(got, want.to(got.dtype))
    got.backward()
    assert scales[("ts", "image")].log_scale.grad is not None


def test_two_modalities_is_clip_loss_and_label_smoothing_passes_through():
    x, y = unit_rows(6, 3, seed=1), unit_rows(6, 3, seed=2)
    got = multimodal_info_nce({"a": x, "b": y}, 4.0, label_smoothing=0.1)
    torch.testing.assert_close(got, clip_loss(x, y, 4.0, label_smoothing=0.1))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda z: multimodal_info_nce({"ts": z["ts"]}, 1.0), "at least two"),
        (lambda z: multimodal_info_nce({**z, "text": z["text"][:3]}, 1.0), "embeddings\\['text'\\]"),
        (lambda z: multimodal_info_nce({**z, "text": unit_rows(5, 6)}, 1.0), "share the embedding size"),
        (lambda z: multimodal_info_nce(z, {("ts", "image"): 1.0}), "no scale for pair \\('ts', 'text'\\)"),
        (
            lambda z: multimodal_info_nce(z, {("ts", "image"): 1.0, ("image", "ts"): 2.0}, [("ts", "image")]),
            "holds both",
        ),
        (lambda z: multimodal_info_nce(z, "hot"), "argument 'scales'"),
        (lambda z: multimodal_info_nce(z, -1.0), "'scale'"),
        (lambda z: multimodal_info_nce(z, 1.0, pairs=[]), "argument 'pairs'"),
        (lambda z: multimodal_info_nce(z, 1.0, pairs=[("ts", "audio")]), "unknown modalities \\['audio'\\]"),
        (lambda z: multimodal_info_nce(z, 1.0, pairs=[("ts", "ts")]), "with itself"),
        (lambda z: multimodal_info_nce(z, 1.0, pairs=[("ts", "text"), ("text", "ts")]), "twice"),
        (lambda z: multimodal_info_nce(z, 1.0, pairs=["ts"]), "\\(str, str\\) tuple"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(InputError, match=match):
        call(_embeddings())
