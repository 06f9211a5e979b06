"""``contrastkit audit``: rank the image-text pairs of a data set by how suspicious they look.

Each pair i gets three detector readings from the checkpoint's embeddings:

- ``image_score``: ``knn_outlier_scores`` of its image embedding among all images of the set;
- ``text_score``: the same on its caption embedding among all captions;
- ``cosine``: cos(x_i, y_i) of the matched pair, with SafeCLIP's GMM split of it
  (``safe_posterior`` = P(high-cosine component), ``safe`` = posterior > 0.5).

``suspicion`` = mean of the two percentile ranks rank(image_score) / N and rank(text_score) / N
(average ranks for ties), in (0, 1]: it combines detectors on different scales without tuning.
The cosine and the GMM split are reported beside it, not folded in: whether a poisoned pair has
a high or a low cosine depends on whether the model has learned the backdoor.

The captions and paths come from untrusted data: audit.html escapes them, and audit.csv puts a '
before a cell that a spreadsheet would run as a formula (one starting with = + - @ tab or CR).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.data.sources import Source
from contrastkit.data.transforms import load_image
from contrastkit.errors import InputError
from contrastkit.security.detectors import average_ranks, gmm_safe_split, knn_outlier_scores

#: Columns of audit.csv, in order.
COLUMNS = (
    "rank",
    "index",
    "suspicion",
    "image_score",
    "text_score",
    "cosine",
    "safe_posterior",
    "safe",
    "image",
    "text",
)
THUMBNAIL = 96

#: embed(source, modality, indices) -> (embeddings (n, D), the indices that loaded), as
#: ``contrastkit.train.evaluate.Embedder`` does.
EmbedFn = Callable[[Source, str, Sequence[int]], tuple[torch.Tensor, list[int]]]


def score_pairs(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    method: str = "dao",
    k: int = 32,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Per-pair detector readings and the combined suspicion (see the module docstring).

    Args:
        image_emb, text_emb: (N, D) embeddings of the N pairs (row i of each is pair i).
        method: ``knn_outlier_scores`` method ("k_distance", "lid", "dao").
        k: neighbours.
        seed: seed of the GMM split.

    Returns:
        {"suspicion", "image_score", "text_score", "cosine", "safe_posterior": (N,) float64,
        "safe": (N,) bool}.
    """
    fn = "score_pairs"
    n = image_emb.shape[0] if isinstance(image_emb, torch.Tensor) else 0
    if isinstance(text_emb, torch.Tensor) and text_emb.shape[0] != n:
        raise InputError(
            f"{fn}: 'image_emb' and 'text_emb' must have one row per pair; got {n} and {text_emb.shape[0]}."
        )
    image_score = knn_outlier_scores(image_emb, k=k, method=method).double()
    text_score = knn_outlier_scores(text_emb, k=k, method=method).double()
    cosine = F.cosine_similarity(image_emb.double(), text_emb.double(), dim=1)
    split = gmm_safe_split(cosine, seed=seed)
    suspicion = (average_ranks(image_score) + average_ranks(text_score)) / (2 * n)
    return {
        "suspicion": suspicion,
        "image_score": image_score,
        "text_score": text_score,
        "cosine": cosine,
        "safe_posterior": split.posterior,
        "safe": split.safe,
    }


def _pair_embeddings(embed: EmbedFn, source: Source) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The records whose image and caption both load, with their image and text embeddings.

    Each distinct image (group) is embedded once and shared by its captions, so that its copies
    are identical rows (distance 0: not each other's neighbours)."""
    _, group_of = source.groups()
    first: dict[int, int] = {}
    for index, group in enumerate(group_of.tolist()):
        first.setdefault(group, index)
    images, image_kept = embed(source, "image", list(first.values()))
    row_of_group = {int(group_of[i]): row for row, i in enumerate(image_kept)}
    texts, text_kept = embed(source, "text", list(range(len(source))))
    pairs = [(i, t) for t, i in enumerate(text_kept) if int(group_of[i]) in row_of_group]
    records = [i for i, _ in pairs]
    image_rows = torch.tensor([row_of_group[int(group_of[i])] for i in records], dtype=torch.int64)
    text_rows = torch.tensor([t for _, t in pairs], dtype=torch.int64)
    return records, images[image_rows], texts[text_rows]


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _inert(cell: str) -> str:
    """A caption or path of the audited (untrusted) data as a CSV cell a spreadsheet will not run as
    a formula: a leading = + - @ tab or CR gets a ' in front (OWASP CSV injection)."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def _thumbnail(item: Any) -> str:
    """An image item -> an <img> tag with an inline base64 PNG (or a note when it cannot load)."""
    try:
        image = load_image(item)
    except (OSError, ValueError) as err:
        return f"<em>unreadable: {html.escape(str(err))}</em>"
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return (
        f'<img alt="pair image" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
    )


def _write_html(path: Path, source: Source, rows: list[dict[str, Any]], method: str, k: int) -> None:
    header = "".join(f"<th>{c}</th>" for c in ("rank", "image", "caption", *COLUMNS[1:8]))
    body = []
    for row in rows:
        cells = [str(row["rank"]), _thumbnail(source[row["index"]]["image"]), html.escape(row["text"])]
        cells += [html.escape(str(row[c])) for c in COLUMNS[1:8]]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    title = f"contrastkit audit: {html.escape(source.name)}"
    path.write_text(
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>{title}</h1><p>The {len(rows)} most suspicious pairs (method {html.escape(method)}, "
        f"k = {k}); suspicion = mean percentile rank of the image and text scores.</p>"
        f"<table><tr>{header}</tr>{''.join(body)}</table></body></html>\n",
        encoding="utf-8",
    )


def run_audit(
    embed: EmbedFn,
    source: Source,
    out: str | Path,
    *,
    method: str = "dao",
    k: int = 32,
    top: int = 20,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Score every image-text pair of ``source``, write ``out``/audit.csv (all pairs, most
    suspicious first) and ``out``/audit.html (the ``top`` first, with thumbnails).

    Args:
        embed: the checkpoint's embedder (``contrastkit.train.evaluate.Embedder``).
        source: image-text pairs (a built-in set or a manifest).
        out: output folder (created).
        method, k, seed: as in ``score_pairs``.
        top: pairs shown in the HTML page (and printed by the command).

    Returns:
        The rows of audit.csv as dicts (keys ``COLUMNS``), most suspicious first; ties by index.
    """
    fn = "audit"
    missing = [m for m in ("image", "text") if m not in source.modalities]
    if missing:
        raise InputError(
            f"{fn}: needs image-caption pairs; the data {source.name!r} has {list(source.modalities)} "
            f"(missing {missing})."
        )
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"{fn}: --top must be an int >= 1; got {top!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"{fn}: --k must be an int >= 1; got {k!r}.")
    records, images, texts = _pair_embeddings(embed, source)
    if k >= len(records):
        raise InputError(
            f"{fn}: --k {k} needs more than k pairs; {source.name!r} has {len(records)} readable pairs. "
            f"Use --k {max(1, len(records) - 1)} or less."
        )
    scores = score_pairs(images, texts, method=method, k=k, seed=seed)
    order = sorted(range(len(records)), key=lambda r: (-float(scores["suspicion"][r]), records[r]))
    rows = []
    for rank, r in enumerate(order, start=1):
        record = source[records[r]]
        image = record["image"]
        row: dict[str, Any] = {"rank": rank, "index": records[r]}
        for key in ("suspicion", "image_score", "text_score", "cosine", "safe_posterior"):
            row[key] = round(float(scores[key][r]), 6)
        row["safe"] = bool(scores["safe"][r])
        row["image"] = str(image) if isinstance(image, (str, Path)) else ""
        row["text"] = record["text"]
        rows.append(row)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "audit.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({**row, "image": _inert(row["image"]), "text": _inert(row["text"])} for row in rows)
    _write_html(folder / "audit.html", source, rows[:top], method, k)
    return rows


def format_top(rows: list[dict[str, Any]], top: int) -> str:
    """The first ``top`` rows of ``run_audit`` as a plain-text table (what the command prints)."""
    lines = [f"{'rank':>4}  {'suspicion':>9}  {'image':>8}  {'text':>8}  {'cosine':>7}  safe  index  caption"]
    for row in rows[:top]:
        lines.append(
            f"{row['rank']:>4}  {row['suspicion']:>9.4f}  {row['image_score']:>8.3f}  "
            f"{row['text_score']:>8.3f}  {row['cosine']:>7.3f}  {'yes' if row['safe'] else 'no ':4}  "
            f"{row['index']:>5}  {row['text'][:60]}"
        )
    return "\n".join(lines)
