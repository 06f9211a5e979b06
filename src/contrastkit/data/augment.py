"""Caption augmentation for long-caption CLIP training: DeBias-CLIP (arXiv 2602.22419).

DeBias-CLIP removes a text encoder's reliance on the opening summary sentence of a long caption:
it drops that sentence, keeps a random subset of the others in a random order, and shifts the
tokens by a random number of pad tokens inserted right after the start token, so that the late
positional embeddings get trained too (METHODS 3.1). Every random draw goes through the
``torch.Generator`` passed in, so the augmentation is reproducible.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> debias_caption("A red square. It is large. The background is blue.", g)  # doctest: +SKIP
    'The background is blue. It is large.'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from contrastkit.errors import InputError, check_generator

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Split a caption into sentences: after ``.``, ``!`` or ``?`` followed by whitespace.

    Whitespace is collapsed first and empty pieces are dropped, so "A. B." and "A.  B. " both give
    ["A.", "B."]; a text without sentence ends is one sentence. Abbreviations ("Dr. Smith") split
    too, as the paper's plain ``". "`` rule does.
    """
    if not isinstance(text, str):
        raise InputError(f"split_sentences: argument 'text' must be a str; got {type(text).__name__}.")
    text = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(text) if s]


def _check_optional_int(fn: str, name: str, value: object, low: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{fn}: argument '{name}' must be None or an int >= {low}; got {value!r}.")
    return value


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """A uniform int in {low, ..., high} (inclusive)."""
    return low + int(torch.randint(high - low + 1, (), generator=generator))


def debias_sentences(
    sentences: Sequence[str], generator: torch.Generator | None = None, n_sent: int | None = None
) -> list[str]:
    """Drop sentence 0, keep k of the m others (k ~ U{1..m}, or ``n_sent`` capped at m) in random order.

    With m = 0 (a one-sentence caption) sentence 0 is kept. Returns the chosen sentences.
    """
    fn = "debias_sentences"
    n_sent = _check_optional_int(fn, "n_sent", n_sent, 1)
    generator = check_generator(fn, generator)
    sentences = list(sentences)
    if not sentences:
        raise InputError(f"{fn}: argument 'sentences' is empty; a caption needs at least one sentence.")
    rest = sentences[1:]
    m = len(rest)
    if m == 0:
        return sentences[:1]
    k = _randint(1, m, generator) if n_sent is None else min(n_sent, m)
    order = torch.randperm(m, generator=generator)[:k].tolist()
    return [rest[i] for i in order]


def debias_caption(text: str, generator: torch.Generator | None = None, n_sent: int | None = None) -> str:
    """The string part of the DeBias augmentation: drop sentence 0, subsample and permute the rest.

    Args:
        text: a caption whose sentences end with ". " (or "!", "?").
        generator: the source of randomness (None: torch's global generator).
        n_sent: the number k of sentences to keep (capped at the m available); None draws
            k ~ U{1..m}.

    Returns:
        The chosen sentences joined by single spaces; a one-sentence caption is returned as it is
        (whitespace collapsed).
    """
    if not isinstance(text, str):
        raise InputError(f"debias_caption: argument 'text' must be a str; got {type(text).__name__}.")
    sentences = split_sentences(text)
    if not sentences:
        raise InputError("debias_caption: argument 'text' is empty or whitespace only.")
    return " ".join(debias_sentences(sentences, generator, n_sent))


def _encode(tokenizer, text: str) -> list[int]:
    """One text -> its unpadded ids [BOS, ..., EOS] via the tokenizer contract."""
    out = tokenizer([text])
    ids, mask = out["input_ids"][0], out["attention_mask"][0]
    return ids[mask.bool()].tolist()


class DeBiasCaptionAugment:
    """DeBias-CLIP caption augmentation: caption(s) -> token dict with prefix padding.

    Steps (METHODS 3.1): split the caption into sentences, drop sentence 0, keep k ~ U{1..m} of the
    m others in a random order (m = 0 keeps sentence 0), tokenize, insert ``n_pad`` pad tokens right
    after the start token (n_pad ~ U{0..ctx_len - len} with len the token count, or fixed), and
    truncate to ``ctx_len`` keeping the end token last. The inserted pads have attention mask 0, so
    they only shift the positions of the real tokens; eos pooling (the last real token) still finds
    the end token.

    Args:
        tokenizer: follows the tokenizer contract (``tok(texts) -> {"input_ids", "attention_mask"}``,
            ``pad_id``, ``max_length``), e.g. ``ByteTokenizer`` or ``BPETokenizer``.
        ctx_len: the text context length (Long-CLIP: 248); must be >= 3 and <= the tokenizer's
            ``max_length`` (so the tokenizer does not cut the caption shorter than the context).
        n_sent: fixed number of sentences to keep (capped at m); None draws k ~ U{1..m}.
        n_pad: fixed number of pad tokens; None draws n_pad ~ U{0..ctx_len - len}.
        generator: default torch.Generator for the draws (a call may pass its own).

    Calling it with one str returns {"input_ids", "attention_mask"} int64 (1, L), L <= ctx_len, as
    ``tokenizer([caption])`` does; with a list of str, (B, L) right-padded to the longest row.

    Example:
        >>> aug = DeBiasCaptionAugment(ByteTokenizer(64), ctx_len=64,
        ...                            generator=torch.Generator().manual_seed(0))
        >>> aug("A red square. It is large. The background is blue.")["input_ids"].shape  # doctest: +SKIP
        torch.Size([1, 37])
    """

    def __init__(
        self,
        tokenizer,
        ctx_len: int = 248,
        n_sent: int | None = None,
        n_pad: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        fn = "DeBiasCaptionAugment"
        if not callable(tokenizer):
            raise InputError(
                f"{fn}: argument 'tokenizer' must be a callable tokenizer (texts -> dict of input_ids, "
                f"attention_mask); got {type(tokenizer).__name__}."
            )
        if isinstance(ctx_len, bool) or not isinstance(ctx_len, int) or ctx_len < 3:
            raise InputError(
                f"{fn}: argument 'ctx_len' must be an int >= 3 (start, a token, end); got {ctx_len!r}."
            )
        max_length = getattr(tokenizer, "max_length", None)
        if isinstance(max_length, int) and ctx_len > max_length:
            raise InputError(
                f"{fn}: argument 'ctx_len' ({ctx_len}) exceeds the tokenizer's max_length ({max_length}), "
                f"which would cut captions before the context is full; build the tokenizer with "
                f"max_length >= {ctx_len} or lower ctx_len."
            )
        self.tokenizer = tokenizer
        self.ctx_len = ctx_len
        self.n_sent = _check_optional_int(fn, "n_sent", n_sent, 1)
        self.n_pad = _check_optional_int(fn, "n_pad", n_pad, 0)
        self.generator = check_generator(fn, generator)
        self.pad_id = int(getattr(tokenizer, "pad_id", 0))
        self.eos_id = getattr(tokenizer, "eos_id", None)

    def augment_ids(self, ids: Sequence[int], generator: torch.Generator | None = None) -> list[int]:
        """Insert the pads after the start token of ``ids`` ([BOS, ..., EOS]) and truncate to ctx_len."""
        return self._pad_ids(ids, generator)[0]

    def _pad_ids(self, ids: Sequence[int], generator: torch.Generator | None) -> tuple[list[int], list[int]]:
        """(ids with the pads inserted and truncated, its mask: 0 on the inserted pads, else 1)."""
        ids = list(ids)
        if len(ids) < 2:
            raise InputError(
                f"DeBiasCaptionAugment: a tokenized caption needs a start and an end token; got {ids!r}."
            )
        n_pad = self.n_pad
        if n_pad is None:
            n_pad = _randint(0, max(self.ctx_len - len(ids), 0), generator)
        out = [ids[0], *([self.pad_id] * n_pad), *ids[1:]]
        mask = [1, *([0] * n_pad), *([1] * (len(ids) - 1))]
        if len(out) > self.ctx_len:  # keep the end token last
            out = [*out[: self.ctx_len - 1], ids[-1]]
            mask = [*mask[: self.ctx_len - 1], 1]
        return out, mask

    def __call__(self, captions: str | Sequence[str], generator: torch.Generator | None = None) -> dict:
        """caption (str) -> {"input_ids", "attention_mask"} (1, L); list of str -> (B, L)."""
        fn = "DeBiasCaptionAugment"
        generator = check_generator(fn, generator) or self.generator
        single = isinstance(captions, str)
        texts = [captions] if single else captions
        if not isinstance(texts, Sequence) or not texts or not all(isinstance(t, str) for t in texts):
            raise InputError(
                f"{fn}: argument 'captions' must be a str or a non-empty list of str; got "
                f"{type(captions).__name__}."
            )
        rows = []
        for text in texts:
            if not text.strip():
                raise InputError(f"{fn}: argument 'captions' holds an empty or whitespace-only caption.")
            augmented = debias_caption(text, generator, self.n_sent)
            rows.append(self._pad_ids(_encode(self.tokenizer, augmented), generator))
        longest = max(len(r) for r, _ in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), longest), dtype=torch.int64)
        for i, (row, real) in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
            mask[i, : len(row)] = torch.tensor(real, dtype=torch.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def __repr__(self) -> str:
        return (
            f"DeBiasCaptionAugment(tokenizer={self.tokenizer!r}, ctx_len={self.ctx_len}, "
            f"n_sent={self.n_sent}, n_pad={self.n_pad})"
        )
