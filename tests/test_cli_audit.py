"""contrastkit audit end to end: a tiny CLIP trained on a poisoned shapes manifest, audited."""

from __future__ import annotations

import csv
import functools
import json
import math

import pytest
import torch

from conftest import TINY_IMAGE_ONLY_RUN, TINY_RUN
from contrastkit.cli import _load_for_eval, main
from contrastkit.data import get_source
from contrastkit.data.transforms import image_to_tensor, load_image
from contrastkit.errors import InputError
from contrastkit.security.asr import attack_success_rate
from contrastkit.security.audit import COLUMNS, score_pairs
from contrastkit.security.detectors import detection_auroc, knn_outlier_scores
from contrastkit.security.poison import poison_dataset
from contrastkit.security.triggers import badnet_patch

TARGET = "a photo of a <banana> & co."
PATCH = functools.partial(badnet_patch, size=6)


def _set(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """(manifest path, run directory): 64 shapes pairs, 6 of them poisoned, and a 2-step CLIP on them."""
    folder = tmp_path_factory.mktemp("audit")
    source = poison_dataset(get_source("shapes", "test", n=64, image_size=16), 0.1, TARGET, PATCH, seed=0)
    manifest = source.to_manifest(folder / "data")
    run = folder / "run"
    overrides = [*TINY_RUN, "train.steps=2", f"data.train={{manifest: {manifest}}}", "data.eval=null"]
    assert main(["train", *_set(overrides), "--out", str(run)]) == 0
    return manifest, run


def _audit(manifest, run, out, *extra: str) -> int:
    return main(["audit", str(manifest), "--checkpoint", str(run), "--out", str(out), "--k", "8", *extra])


def _rows(folder) -> list[dict[str, str]]:
    with (folder / "audit.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_writes_every_pair_ranked_and_the_top_with_thumbnails(poisoned, tmp_path, capsys):
    manifest, run = poisoned
    assert _audit(manifest, run, tmp_path, "--top", "64") == 0
    printed = capsys.readouterr().out
    assert "suspicion" in printed and "64 pairs ->" in printed and len(printed.splitlines()) == 66
    rows = _rows(tmp_path)
    assert [int(r["rank"]) for r in rows] == list(range(1, 65))
    assert sorted(int(r["index"]) for r in rows) == list(range(64))
    suspicion = [float(r["suspicion"]) for r in rows]
    assert suspicion == sorted(suspicion, reverse=True) and all(0 < s <= 1 for s in suspicion)
    truth = [json.loads(line)["poisoned"] for line in manifest.read_text().splitlines()]
    for r in rows:  # the CSV row is the manifest row it names
        assert (r["text"] == TARGET) == truth[int(r["index"])]
        assert r["safe"] in ("True", "False") and 0 <= float(r["safe_posterior"]) <= 1
    # the poisoned pairs rank above chance (here through their repeated, off-distribution caption)
    poisoned_rows = torch.tensor([r["text"] == TARGET for r in rows])
    assert detection_auroc(torch.tensor(suspicion), poisoned_rows) > 0.5
    page = (tmp_path / "audit.html").read_text()
    assert page.count("data:image/png;base64,") == 64
    assert "&lt;banana&gt; &amp; co." in page and "<banana>" not in page


def test_another_method_and_a_short_page(poisoned, tmp_path, capsys):
    manifest, run = poisoned
    assert _audit(manifest, run, tmp_path, "--method", "lid", "--top", "3") == 0
    assert len(capsys.readouterr().out.splitlines()) == 5  # header, 3 pairs, the summary
    assert len(_rows(tmp_path)) == 64
    assert (tmp_path / "audit.html").read_text().count("data:image/png;base64,") == 3


def test_errors_are_one_line(poisoned, tmp_path, capsys):
    manifest, run = poisoned
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("a red circle.", "a star.")))
    cases = [
        (["audit", str(manifest), "--checkpoint", str(tmp_path / "none")], "no checkpoint at"),
        (["audit", str(manifest), "--checkpoint", str(run), "--k", "64"], "--k 64 needs more than k pairs"),
        (["audit", str(texts), "--checkpoint", str(run)], "needs image-caption pairs"),
        (["audit", str(manifest), "--checkpoint", str(run), "--top", "0"], "--top must be an int >= 1"),
        (["audit", str(manifest), "--checkpoint", str(run), "--k", "0"], "--k must be an int >= 1"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("contrastkit audit: error:") and message in err and err.count("\n") == 1


def test_refuses_an_image_only_checkpoint(poisoned, tmp_path, capsys):
    manifest, _ = poisoned
    run = tmp_path / "views"
    assert main(["train", *_set(TINY_IMAGE_ONLY_RUN), "--out", str(run)]) == 0
    assert main(["audit", str(manifest), "--checkpoint", str(run), "--out", str(tmp_path / "a")]) == 2
    assert "needs an image-text checkpoint" in capsys.readouterr().err


def test_attack_success_rate_on_the_trained_checkpoint(poisoned):
    _, run = poisoned
    _, model, tokenizer = _load_for_eval(str(run))
    source = get_source("shapes", "test", n=40, image_size=16, seed=5)
    images = torch.stack([image_to_tensor(load_image(source[i]["image"])).float() / 255 for i in range(40)])
    labels = source.labels()
    result = attack_success_rate(model, tokenizer, images, labels, 0, PATCH, source.classes)
    assert result.n_clean == 40 and result.n_triggered == int((labels != 0).sum())
    assert 0 <= result.asr <= 1 and 0 <= result.clean_accuracy <= 1


def _loop_rank(values: list[float], i: int) -> float:
    """Average 1-based rank of values[i]: the ones below it, plus the middle of its tie block."""
    below = sum(v < values[i] for v in values)
    tied = sum(v == values[i] for v in values)
    return below + (tied + 1) / 2


def test_score_pairs_is_the_mean_percentile_rank():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    got = score_pairs(x, y, method="k_distance", k=5)
    image = knn_outlier_scores(x, k=5, method="k_distance").tolist()
    text = knn_outlier_scores(y, k=5, method="k_distance").tolist()
    for i in range(40):
        want = (_loop_rank(image, i) + _loop_rank(text, i)) / 80
        assert math.isclose(float(got["suspicion"][i]), want, rel_tol=1e-12)
        cosine = sum(float(x[i, d] * y[i, d]) for d in range(8))
        assert math.isclose(float(got["cosine"][i]), cosine, rel_tol=1e-9)
    assert torch.equal(got["safe"], got["safe_posterior"] > 0.5)
    with pytest.raises(InputError, match="score_pairs: 'image_emb' and 'text_emb' must have one row"):
        score_pairs(x, y[:39])


def test_csv_cells_from_the_data_cannot_run_as_spreadsheet_formulas(tmp_path):
    from contrastkit.security.audit import run_audit

    formula = '=HYPERLINK("http://x", "banana")'
    source = poison_dataset(get_source("shapes", "test", n=24, image_size=16), 0.25, formula, PATCH, seed=1)
    g = torch.Generator().manual_seed(0)

    def embed(src, modality, indices):  # any embeddings will do: the test is about the CSV cells
        return torch.randn(len(indices), 4, generator=g), list(indices)

    rows = run_audit(embed, source, tmp_path, method="k_distance", k=3, top=3)
    assert sum(r["text"] == formula for r in rows) == 6  # the returned rows keep the data as it is
    written = _rows(tmp_path)
    assert sum(r["text"] == "'" + formula for r in written) == 6
    assert not any(r["text"].startswith(("=", "+", "-", "@")) for r in written)
    plain = [r for r in written if not r["text"].startswith("'")]
    assert len(plain) == 18 and all(r["text"] == source[int(r["index"])]["text"] for r in plain)
