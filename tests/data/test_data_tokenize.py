"""ByteTokenizer and BPETokenizer: the tokenizer contract, round trips, truncation, save/load."""

from __future__ import annotations

import pytest
import torch

from contrastkit.data import BPETokenizer, ByteTokenizer, ShapesSource
from contrastkit.errors import InputError


@pytest.fixture(scope="module")
def captions() -> list[str]:
    src = ShapesSource("train", n=400, seed=0)
    return [s.caption() for s in src.scenes]


@pytest.fixture(scope="module")
def bpe(captions) -> BPETokenizer:
    return BPETokenizer.train(captions, vocab_size=600, max_length=24)


def check_contract(tok, texts: list[str]) -> dict[str, torch.Tensor]:
    out = tok(texts)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64 and ids.shape == mask.shape
    assert ids.shape[0] == len(texts) and ids.shape[1] <= tok.max_length
    assert int(mask.sum(1).max()) == ids.shape[1]  # padded to the longest of the batch
    assert torch.equal(ids == tok.pad_id, mask == 0) and tok.pad_id == 0
    assert int(ids.max()) < tok.vocab_size
    return out


def test_byte_tokenizer_round_trip_and_padding():
    tok = ByteTokenizer(max_length=32)
    texts = ["hi", "héllo wörld ✓", "a"]
    out = check_contract(tok, texts)
    assert [tok.decode(row) for row in out["input_ids"]] == texts
    assert out["input_ids"][0, :4].tolist() == [tok.bos_id, ord("h") + 3, ord("i") + 3, tok.eos_id]
    assert tok.vocab_size == 259


def test_byte_tokenizer_truncation_keeps_bos_and_eos():
    tok = ByteTokenizer(max_length=6)
    out = check_contract(tok, ["abcdefghij", "ab"])
    assert out["input_ids"].shape == (2, 6)
    assert out["input_ids"][0].tolist() == [1, *(b + 3 for b in b"abcd"), 2]
    assert tok.decode(tok.encode("aééé")) == "aé"  # a character cut in half is dropped


def test_byte_tokenizer_errors():
    with pytest.raises(InputError, match="max_length"):
        ByteTokenizer(max_length=2)
    with pytest.raises(InputError, match="list of str"):
        ByteTokenizer()([1, 2])
    with pytest.raises(InputError, match="empty"):
        ByteTokenizer()([])


def test_bpe_contract_round_trip_and_compression(bpe, captions):
    out = check_contract(bpe, captions[:8])
    for caption, row in zip(captions[:8], out["input_ids"], strict=True):
        decoded = bpe.decode(row)  # truncated to 24 tokens: a prefix of the lowercased caption
        assert len(decoded) > 20 and caption.lower().startswith(decoded)
    first = captions[0].split(". ")[0] + "."
    ids = bpe.encode(first)
    assert ids[0] == bpe.bos_id and ids[-1] == bpe.eos_id and bpe.decode(ids) == first.lower()
    assert len(ids) < len(first.encode()) / 2  # merges were learned
    assert 260 < bpe.vocab_size <= 600


def test_bpe_truncation_and_unseen_characters(bpe):
    long = "a red star " * 40
    ids = bpe([long])["input_ids"][0]
    assert ids.shape == (24,) and ids[0] == bpe.bos_id and ids[-1] == bpe.eos_id
    assert bpe.decode(bpe.encode("zebra ✓")) == "zebra ✓"  # byte level: nothing is unknown


def test_bpe_training_is_deterministic_and_save_load(bpe, captions, tmp_path):
    again = BPETokenizer.train(captions, vocab_size=600, max_length=24)
    assert again.tokenizer.to_str() == bpe.tokenizer.to_str()
    path = tmp_path / "sub" / "tok.json"
    bpe.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.max_length == 24 and loaded.vocab_size == bpe.vocab_size
    texts = captions[:5] + ["unseen words here"]
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(loaded(texts)[key], bpe(texts)[key])


def test_bpe_keeps_case_when_asked(captions):
    tok = BPETokenizer.train(captions[:50], vocab_size=300, max_length=16, lowercase=False)
    assert tok.decode(tok.encode("A Red")) == "A Red"


def test_bpe_errors(tmp_path):
    with pytest.raises(InputError, match="vocab_size"):
        BPETokenizer.train(["a b"], vocab_size=100)
    with pytest.raises(InputError, match="empty"):
        BPETokenizer.train([])
    with pytest.raises(InputError, match="does not exist"):
        BPETokenizer.load(tmp_path / "none.json")
