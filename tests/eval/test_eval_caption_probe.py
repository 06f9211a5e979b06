"""edit_caption (exact strings) and caption_probe (R@1 per edit, via paired_retrieval)."""

from __future__ import annotations

import pytest
import torch

from contrastkit.errors import InputError
from contrastkit.eval import caption_probe, edit_caption, paired_retrieval

CAP = "S0 summary. S1 one. S2 two. S3 three. S4 four. S5 five."


def test_edit_caption_exact():
    assert edit_caption(CAP, "keep") == CAP
    assert edit_caption("  S0  a.  S1 b. ", "keep") == "S0 a. S1 b."
    assert edit_caption(CAP, "move") == "S1 one. S2 two. S3 three. S4 four. S0 summary. S5 five."
    assert edit_caption("A. B. C.", "move") == "B. C. A."  # shorter: to the end
    assert edit_caption("A. B. C.", "move", move_to=1) == "B. A. C."
    assert edit_caption("A. B. C.", "move", move_to=0) == "A. B. C."
    assert edit_caption(CAP, "remove") == "S1 one. S2 two. S3 three. S4 four. S5 five."
    assert edit_caption("Only one.", "remove") == "Only one."  # never an empty caption
    assert edit_caption("A. B.", "pad", 0) == "A. B."
    assert edit_caption("A. B.", "pad", 2) == "This is a photo. This is a photo. A. B."


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        (("A.", "shuffle"), {}, "'mode'"),
        (("A.", "pad", -1), {}, "'n'"),
        (("A.", "pad", 1.0), {}, "'n'"),
        (("A.", "move"), {"move_to": -1}, "'move_to'"),
        (("  ", "keep"), {}, "'text'"),
    ],
)
def test_edit_caption_errors(args, kwargs, name):
    with pytest.raises(InputError, match=name):
        edit_caption(*args, **kwargs)


def first_sentence_encoder(vocab: list[str]):
    """A toy text encoder that reads only the caption's first sentence (the bias the probe finds)."""

    def encode(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), len(vocab), dtype=torch.float64)
        for i, t in enumerate(texts):
            first = t.split(". ")[0].rstrip(".")
            if first in vocab:
                out[i, vocab.index(first)] = 1.0
            else:
                out[i, 0] = 1e-3  # an uninformative embedding
        return out

    return encode


def test_probe_on_a_first_sentence_reader():
    names = [f"obj{i}" for i in range(6)]
    captions = [f"{n}. filler a. filler b." for n in names]
    images = torch.eye(6, dtype=torch.float64)
    out = caption_probe(images, first_sentence_encoder(names), captions, pad_copies=(0, 2))
    assert list(out) == ["keep", "move", "remove", "pad_0", "pad_2"]
    assert out["keep"] == 1.0 and out["pad_0"] == 1.0
    # move / remove / pad put a filler first: every edited caption embeds on image 0, so only caption 0 hits
    for key in ("move", "remove", "pad_2"):
        assert out[key] == pytest.approx(1 / 6)


def test_probe_equals_paired_retrieval_per_edit():
    g = torch.Generator().manual_seed(0)
    table = {}

    def encode(texts):
        rows = []
        for t in texts:
            if t not in table:
                table[t] = torch.randn(8, generator=g, dtype=torch.float64)
            rows.append(table[t])
        return torch.stack(rows)

    captions = [f"Cap {i}. More {i}. Yet {i}." for i in range(10)]
    image_emb = torch.randn(5, 8, generator=g, dtype=torch.float64)
    owner = torch.arange(10) % 5
    out = caption_probe(
        image_emb, encode, captions, modes=("move", "pad"), pad_copies=(3,), text_to_image=owner
    )
    for key, texts in (
        ("move", [edit_caption(c, "move") for c in captions]),
        ("pad_3", [edit_caption(c, "pad", 3) for c in captions]),
    ):
        want = paired_retrieval(image_emb, encode(texts), owner, ks=(1,))["t2i_R@1"]
        assert out[key] == want


def test_probe_errors():
    images = torch.eye(3)
    enc = first_sentence_encoder(["a", "b", "c"])
    caps = ["a.", "b.", "c."]
    with pytest.raises(InputError, match="'modes'"):
        caption_probe(images, enc, caps, modes=("keep", "swap"))
    with pytest.raises(InputError, match="'pad_copies'"):
        caption_probe(images, enc, caps, pad_copies=(-1,))
    with pytest.raises(InputError, match="'captions'"):
        caption_probe(images, enc, caps[:2])
    with pytest.raises(InputError, match="'captions'"):
        caption_probe(images, enc, "a.")
    with pytest.raises(InputError, match="'encode_text'"):
        caption_probe(images, lambda texts: torch.zeros(len(texts), 2), caps)
    with pytest.raises(InputError, match="'encode_text'"):
        caption_probe(images, None, caps)
