"""The DeBias-CLIP caption probe: text->image R@1 under edits of a caption's first sentence.

A model that reads a long caption mostly through its opening summary sentence loses recall when
that sentence is moved, removed, or pushed back by filler (METHODS 3.1, "Probe"). The edits:

* ``keep``   the caption as it is;
* ``move``   sentence 0 moved to index ``move_to`` (0-based, default 4) among the sentences, or to
             the end when the caption is shorter;
* ``remove`` sentence 0 dropped (a one-sentence caption is kept, since the text cannot be empty);
* ``pad``    n copies of "This is a photo." prepended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from contrastkit.data.augment import split_sentences
from contrastkit.errors import InputError
from contrastkit.eval.retrieval import paired_retrieval

MODES = ("keep", "move", "remove", "pad")
PAD_SENTENCE = "This is a photo."


def edit_caption(text: str, mode: str, n: int = 1, *, move_to: int = 4) -> str:
    """One probe edit of a caption's first sentence; sentences are re-joined by single spaces.

    Args:
        text: the caption (sentences end with ". ", "!" or "?").
        mode: "keep", "move", "remove" or "pad".
        n: pad copies of "This is a photo." (mode "pad" only), >= 0.
        move_to: the 0-based index sentence 0 moves to (mode "move"), clipped to the end.

    Example:
        >>> edit_caption("A. B. C.", "move")
        'B. C. A.'
        >>> edit_caption("A. B.", "pad", 2)
        'This is a photo. This is a photo. A. B.'
    """
    fn = "edit_caption"
    if mode not in MODES:
        raise InputError(f"{fn}: argument 'mode' must be one of {MODES}; got {mode!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"{fn}: argument 'n' must be an int >= 0; got {n!r}.")
    if isinstance(move_to, bool) or not isinstance(move_to, int) or move_to < 0:
        raise InputError(f"{fn}: argument 'move_to' must be an int >= 0; got {move_to!r}.")
    sentences = split_sentences(text)
    if not sentences:
        raise InputError(f"{fn}: argument 'text' is empty or whitespace only.")
    if mode == "move":
        rest = sentences[1:]
        rest.insert(min(move_to, len(rest)), sentences[0])
        sentences = rest
    elif mode == "remove" and len(sentences) > 1:
        sentences = sentences[1:]
    elif mode == "pad":
        sentences = [PAD_SENTENCE] * n + sentences
    return " ".join(sentences)


def caption_probe(
    image_emb: torch.Tensor,
    encode_text: Callable[[list[str]], torch.Tensor],
    captions: Sequence[str],
    modes: Sequence[str] = MODES,
    pad_copies: Sequence[int] = (1, 3, 5),
    *,
    text_to_image: torch.Tensor | None = None,
    move_to: int = 4,
) -> dict[str, float]:
    """Text->image R@1 of the edited captions against fixed image embeddings.

    Args:
        image_emb: (I, D) image embeddings.
        encode_text: list of T str -> (T, D) embeddings (e.g. tokenizer + model.encode, no grad).
        captions: T captions; caption t belongs to image ``text_to_image[t]`` (default: image t).
        modes: edits to score, from "keep", "move", "remove", "pad".
        pad_copies: the numbers of "This is a photo." copies scored under "pad" (each >= 0).
        text_to_image: (T,) int64 image row of each caption; None pairs caption t with image t.
        move_to: the 0-based sentence index of the "move" edit.

    Returns:
        {"keep": R@1, "move": R@1, "remove": R@1, "pad_1": R@1, "pad_3": ...} for the chosen
        modes, R@1 in [0, 1] (ties pessimistic, as ``paired_retrieval``).
    """
    fn = "caption_probe"
    if not callable(encode_text):
        raise InputError(f"{fn}: argument 'encode_text' must be callable (list of str -> (T, D)).")
    if isinstance(captions, str) or not isinstance(captions, Sequence) or not captions:
        raise InputError(f"{fn}: argument 'captions' must be a non-empty list of str.")
    if isinstance(modes, str) or not modes or any(m not in MODES for m in modes):
        raise InputError(f"{fn}: argument 'modes' must be a non-empty list from {MODES}; got {modes!r}.")
    if "pad" in modes and (
        isinstance(pad_copies, int)
        or not pad_copies
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in pad_copies)
    ):
        raise InputError(
            f"{fn}: argument 'pad_copies' must be a non-empty list of ints >= 0; got {pad_copies!r}."
        )
    if text_to_image is None:
        if len(captions) != image_emb.shape[0]:
            raise InputError(
                f"{fn}: without 'text_to_image', 'captions' ({len(captions)}) must pair one to one with "
                f"'image_emb' rows ({image_emb.shape[0]})."
            )
        text_to_image = torch.arange(len(captions), device=image_emb.device)
    edits: list[tuple[str, str, int]] = []
    for mode in modes:
        if mode == "pad":
            edits += [(f"pad_{c}", "pad", c) for c in pad_copies]
        else:
            edits.append((mode, mode, 0))
    out = {}
    for key, mode, n in edits:
        texts = [edit_caption(c, mode, n, move_to=move_to) for c in captions]
        text_emb = encode_text(texts)
        if not isinstance(text_emb, torch.Tensor) or text_emb.shape != (len(texts), image_emb.shape[1]):
            got = tuple(text_emb.shape) if isinstance(text_emb, torch.Tensor) else type(text_emb).__name__
            raise InputError(
                f"{fn}: 'encode_text' must return a ({len(texts)}, {image_emb.shape[1]}) tensor; got {got}."
            )
        metrics = paired_retrieval(image_emb, text_emb.to(image_emb.device), text_to_image, ks=(1,))
        out[key] = metrics["t2i_R@1"]
    return out
