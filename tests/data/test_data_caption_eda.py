"""caption_eda: EDA-style word swap and dropout, reproducible through a torch.Generator."""

from __future__ import annotations

import pytest
import torch

from contrastkit.data.caption_eda import caption_eda
from contrastkit.errors import InputError

TEXT = "a small red square on a blue background near the left edge"


def test_same_generator_same_caption_and_words_come_from_the_text():
    a = caption_eda(TEXT, torch.Generator().manual_seed(3), 0.2, 0.2)
    b = caption_eda(TEXT, torch.Generator().manual_seed(3), 0.2, 0.2)
    assert a == b
    words = TEXT.split()
    assert all(w in words for w in a.split()) and 1 <= len(a.split()) <= len(words)
    outs = {caption_eda(TEXT, torch.Generator().manual_seed(s), 0.2, 0.2) for s in range(10)}
    assert len(outs) > 1


def test_swap_only_permutes_and_dropout_only_deletes():
    g = torch.Generator().manual_seed(0)
    swapped = caption_eda(TEXT, g, word_dropout=0.0, word_swap=0.3)
    assert sorted(swapped.split()) == sorted(TEXT.split()) and swapped != TEXT
    dropped = caption_eda(TEXT, g, word_dropout=0.5, word_swap=0.0)
    kept = dropped.split()
    it = iter(TEXT.split())  # a subsequence, order kept
    assert all(any(w == v for v in it) for w in kept) and len(kept) < len(TEXT.split())
    assert caption_eda(TEXT, g, 0.0, 0.0) == TEXT


def test_everything_dropped_keeps_one_word():
    g = torch.Generator().manual_seed(1)
    assert all(len(caption_eda("one two three", g, 0.999, 0.0).split()) == 1 for _ in range(5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text": "   "}, "empty"),
        ({"text": 3}, "must be a str"),
        ({"word_dropout": 1.0}, "'word_dropout' must be in"),
        ({"word_swap": -0.1}, "'word_swap' must be in"),
        ({"generator": 5}, "torch.Generator"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        caption_eda(**{"text": TEXT, **kwargs})
