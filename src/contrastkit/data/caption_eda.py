"""EDA-style caption augmentation (random word swap and word dropout) for CleanCLIP's text views.

CleanCLIP augments captions with EDA (Wei & Zou 2019, arXiv 1901.11196). This is its two
operations that need no thesaurus: random swap and random deletion (no synonym replacement or
insertion). Every draw goes through the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import torch

from contrastkit.errors import InputError, check_range


def caption_eda(
    text: str,
    generator: torch.Generator | None = None,
    word_dropout: float = 0.1,
    word_swap: float = 0.1,
) -> str:
    """Swap random word pairs, then drop words at random.

    With n words (whitespace-split): max(1, int(word_swap * n)) swaps of two distinct random
    positions (none when word_swap = 0 or n < 2), then each word is dropped with probability
    word_dropout; if every word would go, one random word is kept (as EDA does).

    Args:
        text: a non-empty caption.
        generator: the source of randomness (None: torch's global generator).
        word_dropout: deletion probability in [0, 1).
        word_swap: share of the words swapped, in [0, 1].

    Returns:
        The augmented caption, words joined by single spaces.

    Example:
        >>> caption_eda("a photo of a red square", torch.Generator().manual_seed(0))  # doctest: +SKIP
        'a photo a of square'
    """
    fn = "caption_eda"
    if not isinstance(text, str):
        raise InputError(f"{fn}: argument 'text' must be a str; got {type(text).__name__}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(
            f"{fn}: argument 'generator' must be a torch.Generator or None; got {type(generator).__name__}."
        )
    word_dropout = check_range(fn, "word_dropout", word_dropout, 0.0, 1.0, high_open=True)
    word_swap = check_range(fn, "word_swap", word_swap, 0.0, 1.0)
    words = text.split()
    if not words:
        raise InputError(f"{fn}: argument 'text' is empty or whitespace only.")
    n = len(words)
    swaps = max(1, int(word_swap * n)) if word_swap > 0 and n >= 2 else 0
    for _ in range(swaps):
        i, j = torch.randperm(n, generator=generator)[:2].tolist()
        words[i], words[j] = words[j], words[i]
    if word_dropout > 0:
        kept = torch.rand(n, generator=generator) >= word_dropout
        if not bool(kept.any()):
            kept[int(torch.randint(n, (), generator=generator))] = True
        words = [w for w, keep in zip(words, kept.tolist(), strict=True) if keep]
    return " ".join(words)
