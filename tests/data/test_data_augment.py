"""DeBias-CLIP caption augmentation: sentence split, drop/subsample/permute, prefix pads, truncation."""

from __future__ import annotations

import pytest
import torch

from contrastkit.data import (
    BPETokenizer,
    ByteTokenizer,
    DeBiasCaptionAugment,
    ShapesSource,
    debias_caption,
    split_sentences,
)
from contrastkit.errors import InputError
from contrastkit.models import TextTransformer

CAPTION = "Summary sentence zero. One is here. Two is there. Three is last. Four ends it."
SENTENCES = split_sentences(CAPTION)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_split_sentences():
    assert SENTENCES == [
        "Summary sentence zero.",
        "One is here.",
        "Two is there.",
        "Three is last.",
        "Four ends it.",
    ]
    assert split_sentences("  A  b.   C!  D? e ") == ["A b.", "C!", "D?", "e"]
    assert split_sentences("no end") == ["no end"]
    assert split_sentences("   ") == []


def test_debias_caption_drops_sentence_zero_and_permutes_a_subset():
    counts = set()
    orders = set()
    for seed in range(200):
        out = split_sentences(debias_caption(CAPTION, gen(seed)))
        assert SENTENCES[0] not in out
        assert 1 <= len(out) <= 4
        assert len(set(out)) == len(out) and set(out) <= set(SENTENCES[1:])
        counts.add(len(out))
        orders.add(tuple(out))
    assert counts == {1, 2, 3, 4}  # k ~ U{1..m} reaches every size
    full = {o for o in orders if len(o) == 4}
    assert len(full) > 1  # the kept sentences are permuted, not kept in order


def test_debias_caption_deterministic_and_n_sent():
    assert debias_caption(CAPTION, gen(3)) == debias_caption(CAPTION, gen(3))
    for seed in range(20):
        assert len(split_sentences(debias_caption(CAPTION, gen(seed), n_sent=2))) == 2
    assert len(split_sentences(debias_caption(CAPTION, gen(0), n_sent=10))) == 4  # capped at m


def test_debias_caption_single_sentence_is_kept():
    assert debias_caption("Only   one sentence.", gen(0)) == "Only one sentence."
    assert debias_caption("No full stop at all", gen(0)) == "No full stop at all"


def test_augment_matches_string_helper_and_pads_after_start():
    tok = ByteTokenizer(200)
    aug = DeBiasCaptionAugment(tok, ctx_len=200, n_pad=7)
    out = aug(CAPTION, gen(5))
    text = debias_caption(CAPTION, gen(5))  # the string part draws first from the same stream
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (1, len(tok.encode(text)) + 7)
    assert ids.dtype == mask.dtype == torch.int64
    row = ids[0].tolist()
    assert row[0] == tok.bos_id and row[1:8] == [tok.pad_id] * 7 and row[-1] == tok.eos_id
    assert row[8:] == tok.encode(text)[1:]
    assert mask[0].tolist() == [1] + [0] * 7 + [1] * (len(row) - 8)
    assert tok.decode(ids[0]) == text


def test_random_pad_count_fills_at_most_the_context():
    tok = ByteTokenizer(120)
    aug = DeBiasCaptionAugment(tok, ctx_len=120)
    seen = set()
    for seed in range(60):
        out = aug(CAPTION, gen(seed))
        ids, mask = out["input_ids"][0], out["attention_mask"][0]
        n_pad = int((mask == 0).sum())
        assert ids.shape[0] <= 120 and ids[-1] == tok.eos_id
        assert (ids[1 : 1 + n_pad] == tok.pad_id).all() and mask[1 + n_pad :].all()
        assert set(split_sentences(tok.decode(ids))) <= set(SENTENCES[1:])  # whole sentences: no cut
        seen.add(n_pad)
    assert len(seen) > 10 and min(seen) >= 0


def test_deterministic_given_seed_and_generator_stream():
    tok = ByteTokenizer(128)
    a = DeBiasCaptionAugment(tok, ctx_len=128, generator=gen(11))
    b = DeBiasCaptionAugment(tok, ctx_len=128, generator=gen(11))
    first = [a(CAPTION)["input_ids"] for _ in range(5)]
    second = [b(CAPTION)["input_ids"] for _ in range(5)]
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)
    assert len({tuple(x[0].tolist()) for x in first}) > 1  # the stream advances between calls


def test_truncation_keeps_end_token():
    tok = ByteTokenizer(40)
    aug = DeBiasCaptionAugment(tok, ctx_len=40, n_sent=4, n_pad=30)
    out = aug(CAPTION, gen(0))
    ids, mask = out["input_ids"][0], out["attention_mask"][0]
    assert ids.shape[0] == 40
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert (ids[1:31] == tok.pad_id).all() and not mask[1:31].any()
    assert mask[31:].all() and mask[0] == 1


def test_single_sentence_caption_keeps_sentence_zero():
    tok = ByteTokenizer(64)
    out = DeBiasCaptionAugment(tok, ctx_len=64, n_pad=0)("A lone sentence.", gen(0))
    assert torch.equal(out["input_ids"], tok(["A lone sentence."])["input_ids"])
    assert torch.equal(out["attention_mask"], tok(["A lone sentence."])["attention_mask"])


def test_batch_of_captions_and_tower_accepts_it():
    src = ShapesSource("train", n=16, seed=0)
    captions = [s.caption() for s in src.scenes]
    tok = BPETokenizer.train(captions, vocab_size=400, max_length=96)
    aug = DeBiasCaptionAugment(tok, ctx_len=96, generator=gen(1))
    out = aug(captions)
    assert out["input_ids"].shape[0] == 16 and out["input_ids"].shape[1] <= 96
    for caption, ids, mask in zip(captions, out["input_ids"], out["attention_mask"], strict=True):
        real = ids[mask.bool()]
        assert real[0] == tok.bos_id and real[-1] == tok.eos_id
        first = split_sentences(caption)[0].lower()
        assert first not in tok.decode(real)
    tower = TextTransformer(tok.vocab_size, max_length=96, dim=16, depth=1, heads=2)
    assert tower(out).shape == (16, 16)


def test_prefix_pads_only_shift_positions():
    """With a zero positional table the inserted (masked) pads change nothing in the output."""
    tok = ByteTokenizer(64)
    tower = TextTransformer(tok.vocab_size, max_length=64, dim=16, depth=1, heads=2).eval()
    with torch.no_grad():
        tower.pos_embed.zero_()
    no_pad = DeBiasCaptionAugment(tok, ctx_len=64, n_sent=1, n_pad=0)("A. Hello there.", gen(0))
    padded = DeBiasCaptionAugment(tok, ctx_len=64, n_sent=1, n_pad=9)("A. Hello there.", gen(0))
    torch.testing.assert_close(tower(no_pad), tower(padded), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ctx_len": 2}, "ctx_len"),
        ({"ctx_len": 65}, "ctx_len"),
        ({"ctx_len": 1.5}, "ctx_len"),
        ({"ctx_len": 64, "n_sent": 0}, "n_sent"),
        ({"ctx_len": 64, "n_sent": True}, "n_sent"),
        ({"ctx_len": 64, "n_pad": -1}, "n_pad"),
        ({"ctx_len": 64, "generator": 3}, "generator"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(InputError, match=f"'{name}'"):
        DeBiasCaptionAugment(ByteTokenizer(64), **kwargs)


def test_bad_calls():
    aug = DeBiasCaptionAugment(ByteTokenizer(64), ctx_len=64)
    with pytest.raises(InputError, match="'captions'"):
        aug(["ok.", "   "])
    with pytest.raises(InputError, match="'captions'"):
        aug([])
    with pytest.raises(InputError, match="'captions'"):
        aug(3)
    with pytest.raises(InputError, match="'tokenizer'"):
        DeBiasCaptionAugment("not a tokenizer")
    with pytest.raises(InputError, match="'text'"):
        debias_caption("   ", gen(0))
    with pytest.raises(InputError, match="'text'"):
        debias_caption(None, gen(0))
    with pytest.raises(InputError, match="'n_sent'"):
        debias_caption(CAPTION, gen(0), n_sent=0)
    with pytest.raises(InputError, match="'generator'"):
        debias_caption(CAPTION, "seed")
