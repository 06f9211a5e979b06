"""The HTML sections of the report. Every piece of text read from a file goes through ``esc``."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import yaml

from contrastkit.report.load import RunData
from contrastkit.report.plots import curves_png, heatmap_png, thumbnail_png

RETRIEVAL_COLUMNS = (("R@1", "R@1"), ("R@5", "R@5"), ("R@10", "R@10"), ("mean_rank", "mean rank"))
RETRIEVAL_COLUMNS += (("median_rank", "median rank"),)
RETRIEVAL_DIRECTIONS = (("i2t", "image → text"), ("t2i", "text → image"))
_RETRIEVAL_KEY = re.compile(r"retrieval/(i2t|t2i)_(R@1|R@5|R@10|mean_rank|median_rank)")
MAX_EXAMPLES, TOP_K, MAX_ISSUE_LINES = 16, 5, 200


def esc(value: object) -> str:
    """``html.escape`` of ``str(value)``, quotes included."""
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """A metric value for display (escaped): ints as is, floats to 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return esc(str(value).lower() if value is not None else "null")
    if isinstance(value, int):
        return esc(value)
    if isinstance(value, float):
        if math.isfinite(value) and 1e4 <= abs(value) < 1e15:
            return f"{value:.1f}"
        return esc(f"{value:.4g}")
    return esc(value)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def _na(what: str) -> str:
    return f'<p class="na">{esc(what)} not available.</p>'


def _section_of(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = config.get(name)
    return value if isinstance(value, Mapping) else {}


def _describe(spec: Any) -> str:
    """A tower spec {"type": "cnn", ...} -> "cnn"; anything else as text."""
    if isinstance(spec, Mapping):
        return str(spec.get("type", "custom"))
    return str(spec)


def config_summary(config: Mapping[str, Any]) -> dict[str, str]:
    """Towers, loss, batch size and steps from a run's config.yaml (missing keys show as "—")."""
    towers = _section_of(_section_of(config, "model"), "towers")
    train = _section_of(config, "train")
    found = {
        "towers": ", ".join(f"{k}: {_describe(v)}" for k, v in towers.items()) or None,
        "loss": _section_of(config, "loss").get("name"),
        "batch size": train.get("batch_size"),
        "steps": train.get("steps"),
    }
    return {k: ("—" if v is None else str(v)) for k, v in found.items()}


def header(run: RunData, written: str) -> str:
    """Title, date and the config summary (with the full config folded away)."""
    rows = [("run directory", str(run.run_dir.resolve())), ("written", written)]
    if run.config is None:
        summary = _na("config.yaml")
    else:
        rows += list(config_summary(run.config).items())
        dumped = yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True)
        summary = f"<details><summary>full config</summary><pre>{esc(dumped)}</pre></details>"
    for key, label in (("train/steps", "steps run"), ("train/seconds", "training seconds")):
        if key in run.metrics:
            rows.append((label, run.metrics[key]))
    table = "".join(f"<tr><th>{esc(k)}</th><td>{fmt(v)}</td></tr>" for k, v in rows)
    title = f"<h1>contrastkit report — {esc(run.run_dir.resolve().name)}</h1>"
    return f'<header>\n{title}\n<table class="kv">{table}</table>\n{summary}\n</header>'


def curves(run: RunData) -> str:
    """The loss / scale / bias / lr curves against step."""
    n = len(run.log["step"])
    note = f'<p class="note">{esc(run.log_note)}</p>' if run.log_note else ""
    if n == 0:
        return _section("curves", "Training curves", f'<p class="na">log.csv has no rows yet.</p>{note}')
    uri = curves_png(run.log)
    missing = [c for c in ("scale", "bias") if c not in run.log]
    extra = f'<p class="note">Not logged: {esc(", ".join(missing))}.</p>' if missing else ""
    body = f'<img class="plot" alt="training curves" src="{uri}">' if uri else ""
    body = body or '<p class="na">No finite loss, scale, bias or lr values to plot.</p>'
    steps = f"<p>{n} logged step{'s' if n != 1 else ''}.</p>"
    return _section("curves", "Training curves", f"{steps}{body}{extra}{note}")


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def metrics(run: RunData) -> str:
    """The retrieval table (when its keys exist), then every other metric grouped by section."""
    parts = []
    in_table = {k for k in run.metrics if _RETRIEVAL_KEY.fullmatch(k)}
    if in_table:
        rows = []
        for code, label in RETRIEVAL_DIRECTIONS:
            keys = [f"retrieval/{code}_{c}" for c, _ in RETRIEVAL_COLUMNS]
            if any(k in in_table for k in keys):
                rows.append([esc(label)] + [fmt(run.metrics[k]) if k in in_table else "—" for k in keys])
        parts.append(
            "<h3>retrieval</h3>" + _table(["direction"] + [esc(h) for _, h in RETRIEVAL_COLUMNS], rows)
        )
    groups: dict[str, list[list[str]]] = {}
    for key, value in run.metrics.items():
        if key not in in_table:
            section, _, name = str(key).rpartition("/")
            groups.setdefault(section or "other", []).append([esc(name), fmt(value)])
    for section, rows in groups.items():
        parts.append(f"<h3>{esc(section)}</h3>" + _table(["metric", "value"], rows))
    return _section("metrics", "Metrics", "\n".join(parts) or '<p class="na">metrics.json is empty.</p>')


def _finite_mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def similarity(run: RunData) -> str:
    """The image-by-caption similarity heatmap with a short diagonal/off-diagonal summary."""
    sim = run.similarity
    if sim is None:
        return _section("similarity", "Similarity matrix", _na("eval/similarity.npy"))
    body = f'<img class="plot" alt="similarity heatmap" src="{heatmap_png(sim)}">'
    k = min(sim.shape)
    if k > 1:
        diag = np.diagonal(sim)[:k]
        off = sim[:k, :k][~np.eye(k, dtype=bool)]
        body += f"<p>mean matching-pair similarity {fmt(_finite_mean(diag))}, "
        body += f"mean non-matching {fmt(_finite_mean(off))} ({sim.shape[0]}×{sim.shape[1]}).</p>"
    bad = int((~np.isfinite(sim)).sum())
    if bad:
        body += f'<p class="note">{bad} NaN/inf entries (left blank).</p>'
    return _section("similarity", "Similarity matrix", body)


def _tile(uri: str | None, index: int, score: str, cls: str, mark: str) -> str:
    img = f'<img alt="gallery item {index}" src="{uri}">' if uri else '<div class="noimg">no thumbnail</div>'
    return f'<figure class="{cls}">{img}<figcaption>{mark} #{index}{score}</figcaption></figure>'


def _example(ex: dict[str, Any], uri: Callable[[int], str | None]) -> str:
    """One query caption and its top-k tiles (plus the target, dashed, when it was missed)."""
    shown, target, tiles = ex["retrieved"][:TOP_K], ex["target"], []
    for rank, idx in enumerate(shown):
        score = f" · {fmt(float(ex['scores'][rank]))}" if ex["scores"] else ""
        ok = idx == target
        tiles.append(_tile(uri(idx), idx, score, "hit" if ok else "miss", "✓" if ok else "✗"))
    if target not in shown:
        tiles.append(_tile(uri(target), target, f" · not in top {len(shown)}", "hit target", "target"))
    return f'<div class="example"><p class="query">“{esc(ex["query"])}”</p>{"".join(tiles)}</div>'


def examples(run: RunData) -> str:
    """Each query caption, then its top retrieved thumbnails: green = correct, red = wrong."""
    if run.examples is None:
        return _section("examples", "Example retrievals", _na("eval/examples.json"))
    if not run.examples:
        return _section("examples", "Example retrievals", "<p class='na'>No examples recorded.</p>")
    thumbs, cache = run.thumbnails, {}

    def uri(i: int) -> str | None:
        if thumbs is None:
            return None
        if i not in cache:
            cache[i] = thumbnail_png(thumbs[i])
        return cache[i]

    parts = [] if thumbs is not None else [_na("eval/thumbnails.npy (indices shown instead)")]
    parts += [_example(ex, uri) for ex in run.examples[:MAX_EXAMPLES]]
    if len(run.examples) > MAX_EXAMPLES:
        parts.append(f'<p class="note">{MAX_EXAMPLES} of {len(run.examples)} examples shown.</p>')
    return _section("examples", "Example retrievals", "\n".join(parts))


def data_issues(run: RunData) -> str:
    """The trainer's notes on skipped bad records."""
    if run.data_issues is None:
        return _section("data-issues", "Data issues", _na("data_issues.txt"))
    lines = run.data_issues.splitlines()
    text = "\n".join(lines[:MAX_ISSUE_LINES])
    more = (
        f'<p class="note">{MAX_ISSUE_LINES} of {len(lines)} lines shown.</p>'
        if len(lines) > MAX_ISSUE_LINES
        else ""
    )
    body = f"<pre>{esc(text)}</pre>{more}" if text.strip() else "<p>No data issues recorded.</p>"
    return _section("data-issues", "Data issues", body)
