"""Tokenizers for the built-in text tower: raw UTF-8 bytes, or a byte-level BPE trained on the corpus.

Both follow the tokenizer contract: ``tok(texts) -> {"input_ids", "attention_mask"}``, int64
(B, L) padded with id 0 to the longest sequence of the batch (L <= ``max_length``, truncation
keeps BOS ... EOS), plus ``vocab_size``, ``max_length`` and ``pad_id == 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from contrastkit.errors import InputError

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"


def _check_texts(fn: str, texts: object) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise InputError(f"{fn}: argument 'texts' must be a list of str; got {type(texts).__name__}.")
    if not texts:
        raise InputError(f"{fn}: argument 'texts' is empty; tokenize at least one text.")
    return list(texts)


def _check_max_length(fn: str, max_length: object) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise InputError(
            f"{fn}: argument 'max_length' must be an int >= 3 (BOS, a token, EOS); got {max_length!r}."
        )
    return max_length


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Token id lists -> {"input_ids", "attention_mask"}: int64 (B, L), L the longest sequence."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(sequences), longest), dtype=torch.int64)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        mask[i, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class ByteTokenizer:
    """UTF-8 bytes as tokens: id = byte + 3, with pad 0, BOS 1, EOS 2 (``vocab_size`` 259).

    Needs no training and never meets an unknown token; sequences are long (one token per byte),
    so keep ``max_length`` >= the typical caption length in bytes.

    Example:
        >>> tok = ByteTokenizer(max_length=8)
        >>> tok(["hi", "hello world"])["input_ids"]
        tensor([[  1, 107, 108,   2,   0,   0,   0,   0],
                [  1, 107, 104, 111, 111, 114,  35,   2]])
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    offset = 3
    vocab_size = 256 + 3

    def __init__(self, max_length: int = 64) -> None:
        self.max_length = _check_max_length("ByteTokenizer", max_length)

    def encode(self, text: str) -> list[int]:
        """One text -> [BOS, bytes + 3 ..., EOS], truncated to ``max_length`` ids."""
        body = [b + self.offset for b in text.encode("utf-8")[: self.max_length - 2]]
        return [self.bos_id, *body, self.eos_id]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """texts -> {"input_ids", "attention_mask"}: int64 (B, L), L = longest (<= max_length)."""
        texts = _check_texts("ByteTokenizer", texts)
        return pad_sequences([self.encode(t) for t in texts], self.pad_id)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Token ids (specials and padding skipped) -> text; a byte sequence cut mid-character is dropped."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        data = bytes(i - self.offset for i in ids if self.offset <= i < self.vocab_size)
        return data.decode("utf-8", errors="ignore")

    def __repr__(self) -> str:
        return f"ByteTokenizer(max_length={self.max_length})"


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) trained with the Hugging Face ``tokenizers`` library.

    Special ids: [PAD] 0, [UNK] 1, [BOS] 2, [EOS] 3; every sequence is [BOS] ... [EOS]. Training
    is deterministic for a given corpus. Build one with ``BPETokenizer.train`` or ``load``.

    Example:
        >>> tok = BPETokenizer.train(captions, vocab_size=1000, max_length=32)  # doctest: +SKIP
        >>> tok.save("tokenizer.json"); tok = BPETokenizer.load("tokenizer.json")  # doctest: +SKIP
    """

    pad_id = 0
    bos_id = 2
    eos_id = 3

    def __init__(self, tokenizer, max_length: int = 64) -> None:
        self.max_length = _check_max_length("BPETokenizer", max_length)
        if tokenizer.token_to_id(PAD) != 0 or tokenizer.token_to_id(EOS) != self.eos_id:
            raise InputError(
                f"BPETokenizer: the tokenizer must map {PAD} to 0 and {EOS} to {self.eos_id}; build it with "
                f"BPETokenizer.train."
            )
        from tokenizers import processors

        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, self.bos_id), (EOS, self.eos_id)]
        )
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(pad_id=0, pad_token=PAD)
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 4096,
        max_length: int = 64,
        *,
        lowercase: bool = True,
        min_frequency: int = 2,
    ) -> BPETokenizer:
        """Learn merges from ``texts`` (the vocabulary may stay below ``vocab_size`` on a small corpus).

        Args:
            texts: the training captions.
            vocab_size: target vocabulary size, including the 4 specials and the 256 byte symbols.
            max_length: truncation length in tokens (BOS and EOS included).
            lowercase: lowercase (after NFKC) before tokenizing.
            min_frequency: a pair must occur this often to be merged.
        """
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        texts = _check_texts("BPETokenizer.train", list(texts))
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 260:
            raise InputError(
                f"BPETokenizer.train: argument 'vocab_size' must be an int >= 260 (4 specials + 256 bytes); "
                f"got {vocab_size!r}."
            )
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        steps = [normalizers.NFKC(), normalizers.Lowercase()] if lowercase else [normalizers.NFKC()]
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[PAD, UNK, BOS, EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer, max_length)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """texts -> {"input_ids", "attention_mask"}: int64 (B, L), L = longest (<= max_length)."""
        texts = _check_texts("BPETokenizer", texts)
        encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.int64),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64),
        }

    def encode(self, text: str) -> list[int]:
        """One text -> its ids ([BOS] ... [EOS], truncated, unpadded)."""
        return self(text)["input_ids"][0].tolist()

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Token ids -> text (specials and padding skipped)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer (vocabulary, merges, truncation length) as one JSON file."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by ``save``."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise InputError(f"BPETokenizer.load: tokenizer file {path} does not exist.")
        tokenizer = Tokenizer.from_file(str(path))
        truncation = tokenizer.truncation or {}
        return cls(tokenizer, int(truncation.get("max_length", 64)))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"
