"""Zero-shot classification: prompt-ensembled class embeddings and top-k accuracy (CLIP protocol)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from contrastkit.errors import InputError, check_same_device
from contrastkit.eval._checks import check_chunk_size, check_class_labels, check_emb, check_ks, unit_pair
from contrastkit.eval.retrieval import positive_ranks


def _check_strings(fn: str, name: str, values: object, example: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise InputError(
            f"{fn}: argument '{name}' must be a non-empty list of strings, e.g. {example}; got {values!r}."
        )
    if not all(isinstance(v, str) for v in values):
        bad = next(v for v in values if not isinstance(v, str))
        raise InputError(f"{fn}: argument '{name}' must hold strings only; got {bad!r}.")
    return list(values)


@torch.no_grad()
def class_embeddings(
    encode_text: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
) -> torch.Tensor:
    """One embedding per class: the renormalised mean of its normalised prompt embeddings.

        w_c = normalize( mean_t normalize(encode_text([template_t.format(name_c)])) )

    Args:
        encode_text: list of P strings -> (P, D) float tensor (called once per class).
        class_names: C class names.
        templates: prompts with one ``{}`` for the class name.

    Returns:
        (C, D) unit rows, in the dtype and on the device that ``encode_text`` returns.
    """
    fn = "class_embeddings"
    if not callable(encode_text):
        raise InputError(f"{fn}: argument 'encode_text' must be a callable list[str] -> (P, D) tensor.")
    class_names = _check_strings(fn, "class_names", class_names, "['cat', 'dog']")
    templates = _check_strings(fn, "templates", templates, "['a photo of a {}.']")
    for t in templates:
        if "{}" not in t:
            raise InputError(
                f"{fn}: argument 'templates' must hold prompts with a '{{}}' slot for the class name; "
                f"got {t!r}."
            )
    rows = []
    for name in class_names:
        emb = encode_text([t.format(name) for t in templates])
        emb = check_emb(fn, f"encode_text(prompts of {name})", emb, rows=len(templates))
        if rows and emb.shape[1] != rows[0].shape[0]:
            raise InputError(
                f"{fn}: encode_text returned embedding size {emb.shape[1]} for {name!r} but "
                f"{rows[0].shape[0]} for {class_names[0]!r}; it must return one size."
            )
        rows.append(F.normalize(F.normalize(emb, dim=1).mean(dim=0), dim=0))
    return torch.stack(rows)


@torch.no_grad()
def zero_shot_accuracy(
    image_emb: torch.Tensor,
    class_emb: torch.Tensor,
    labels: torch.Tensor,
    topk: tuple[int, ...] = (1, 5),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Top-k accuracy of cosine-similarity classification against class embeddings.

    Image n is correct at k if rank_n <= min(k, C), with the pessimistic rank
    rank_n = 1 + #{c != y_n : cos(x_n, w_c) >= cos(x_n, w_{y_n})} (a tie counts as a miss).

    Args:
        image_emb: (N, D); class_emb: (C, D); labels: (N,) int in [0, C).
        topk: cutoffs k, clipped to C.
        chunk_size: image rows scored at once.

    Returns:
        {"top{k}": fraction in [0, 1] for k in topk}.
    """
    fn = "zero_shot_accuracy"
    check_same_device(fn, image_emb=image_emb, class_emb=class_emb, labels=labels)
    image_emb = check_emb(fn, "image_emb", image_emb)
    class_emb = check_emb(fn, "class_emb", class_emb, dim=image_emb.shape[1], like="image_emb")
    n, c = image_emb.shape[0], class_emb.shape[0]
    labels = check_class_labels(fn, "labels", labels, n).long()
    if int(labels.max()) >= c:
        raise InputError(
            f"{fn}: argument 'labels' must hold class ids in [0, {c}) (one row of 'class_emb' per class); "
            f"got {int(labels.max())}. Build class_emb for every class."
        )
    topk = check_ks(fn, "topk", topk)
    chunk_size = check_chunk_size(fn, chunk_size)
    x, w = unit_pair(image_emb, class_emb)
    ranks = positive_ranks(x, w, labels, chunk_size)
    return {f"top{k}": float((ranks <= min(k, c)).double().mean()) for k in topk}
