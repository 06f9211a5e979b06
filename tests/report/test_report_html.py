"""write_report on a fake run directory: sections, values, embedded images, escaping, errors, atomicity."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from contrastkit.errors import InputError
from contrastkit.report import write_report
from contrastkit.report.plots import downsample
from contrastkit.report.sections import config_summary

PNG = "data:image/png;base64,"
EVIL = '<script>alert("x")</script> & a dog'
CONFIG = {
    "model": {"towers": {"image": {"type": "vit_tiny"}, "text": "minilm"}},
    "loss": {"name": "siglip", "options": {}},
    "train": {"steps": 300, "batch_size": 64},
}
METRICS = {
    "retrieval/i2t_R@1": 0.62,
    "retrieval/i2t_R@5": 0.875,
    "retrieval/t2i_R@1": 0.5432,
    "retrieval/i2t_mean_rank": 3.25,
    "zeroshot/top1": 0.9,
    "geometry/modality_gap": 0.8123,
    "train/steps": 300,
    "train/seconds": 120.5,
}


def make_run(root: Path, *, n_steps: int = 40, optional: bool = True, bias: bool = True) -> Path:
    """A run directory as the trainer writes it (small arrays)."""
    run = root / "run-a"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (run / "metrics.json").write_text(json.dumps(METRICS))
    cols = ["step", "epoch", "loss", "scale", "lr", "samples_per_s", "elapsed_s"] + (["bias"] if bias else [])
    lines = [",".join(cols)]
    for s in range(n_steps):
        row = [s, s // 10, 4.0 / (1 + s), 10 + s * 0.1, 1e-3, 500.0, s * 0.2]
        row += [-10 + 0.01 * s] if bias else []
        lines.append(",".join(str(v) for v in row))
    (run / "log.csv").write_text("\n".join(lines) + "\n")
    if optional:
        rng = np.random.default_rng(0)
        sim = rng.uniform(-0.2, 0.3, (6, 6)).astype(np.float32) + 0.5 * np.eye(6, dtype=np.float32)
        np.save(run / "eval" / "similarity.npy", sim)
        np.save(run / "eval" / "thumbnails.npy", rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8))
        examples = [
            {"query": EVIL, "target": 2, "retrieved": [2, 5, 1], "scores": [0.91, 0.52, 0.33]},
            {"query": "two cats", "target": 7, "retrieved": [0, 3], "scores": [0.71, 0.62]},
        ]
        (run / "eval" / "examples.json").write_text(json.dumps(examples))
        (run / "data_issues.txt").write_text("skipped 2 records: <bad.jpg> unreadable\n")
    return run


def test_full_report(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    start = time.perf_counter()
    path = write_report(run)
    elapsed = time.perf_counter() - start
    assert path == run / "report.html" and path.is_file()
    page = path.read_text(encoding="utf-8")
    for section in ("curves", "metrics", "similarity", "examples", "data-issues"):
        assert f'<section id="{section}">' in page
    assert "run-a" in page and "vit_tiny" in page and "siglip" in page and "64" in page
    assert "image: vit_tiny, text: minilm" in page
    for value in ("0.62", "0.875", "0.5432", "3.25", "0.9", "0.8123", "120.5", "300"):
        assert f"<td>{value}</td>" in page, value
    assert "<th>R@10</th>" in page and "<td>—</td>" in page  # absent cells of the retrieval table
    assert "<h3>zeroshot</h3>" in page and "<h3>geometry</h3>" in page
    # curves + heatmap + the distinct thumbnails shown (2, 5, 1, 0, 3 and the missed target 7)
    assert page.count(PNG) == 2 + 6
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?:", page) and "http" not in page.lower()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a dog" in page
    assert "&lt;bad.jpg&gt;" in page
    assert page.count('class="hit"') == 1 and page.count('class="miss"') == 4
    assert "not available" not in page
    assert elapsed < 5.0  # generous: the target is < 2 s


def test_missing_optional_files(tmp_path: Path) -> None:
    run = make_run(tmp_path, optional=False, bias=False)
    (run / "config.yaml").unlink()
    page = write_report(run).read_text(encoding="utf-8")
    for missing in ("config.yaml", "eval/similarity.npy", "eval/examples.json", "data_issues.txt"):
        assert f"{missing} not available." in page
    assert page.count(PNG) == 1  # the curves only
    assert "Not logged: bias." in page


def test_examples_without_thumbnails(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "eval" / "thumbnails.npy").unlink()
    page = write_report(run).read_text(encoding="utf-8")
    assert "eval/thumbnails.npy (indices shown instead) not available." in page
    assert page.count(PNG) == 2 and "no thumbnail" in page


def test_custom_out_and_long_log(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_steps=20_000)
    out = tmp_path / "elsewhere" / "r.html"
    start = time.perf_counter()
    assert write_report(str(run), out=out) == out
    assert time.perf_counter() - start < 5.0
    assert out.is_file() and not (run / "report.html").exists()
    assert len(downsample(20_000, 2000)) <= 2000 and downsample(20_000, 2000)[-1] == 19_999


def test_extra_columns_and_truncated_last_row(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_steps=5)
    lines = (run / "log.csv").read_text().splitlines()
    lines[0] += ",phase"
    lines[1:] = [line + ",warmup" for line in lines[1:]] + ["5,0,0.5"]
    (run / "log.csv").write_text("\n".join(lines) + "\n")
    page = write_report(run).read_text(encoding="utf-8")
    assert "5 logged steps" in page and "last row of log.csv is incomplete" in page


def test_degenerate_but_valid_files(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "log.csv").write_text("step,loss,scale\n")
    (run / "metrics.json").write_text("{}")
    np.save(run / "eval" / "similarity.npy", np.full((3, 3), np.nan, dtype=np.float32))
    (run / "eval" / "examples.json").write_text("[]")
    page = write_report(run).read_text(encoding="utf-8")
    assert "log.csv has no rows yet." in page and "metrics.json is empty" in page
    assert "9 NaN/inf entries" in page and "No examples recorded." in page
    assert page.count(PNG) == 1  # the (blank) heatmap


def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"run directory .*nope does not exist.*contrastkit train"):
        write_report(tmp_path / "nope")


@pytest.mark.parametrize("name", ["log.csv", "metrics.json"])
def test_missing_required_file(tmp_path: Path, name: str) -> None:
    run = make_run(tmp_path)
    (run / name).unlink()
    message = rf"{re.escape(name)} is missing from the run directory.*contrastkit train"
    with pytest.raises(InputError, match=message):
        write_report(run)
    assert not (run / "report.html").exists()


@pytest.mark.parametrize(
    ("relpath", "content", "detail"),
    [
        ("metrics.json", '{"retrieval/i2t_R@1": 0.6', "not valid JSON"),
        ("metrics.json", "[1, 2]", "expected a JSON object"),
        ("log.csv", "epoch,loss\n0,1.0\n", "lacks the required column"),
        ("log.csv", "step,loss\n0,1.0\n1,abc\n", "line 3, column 'loss': 'abc' is not a number"),
        ("log.csv", "step,loss\n0,1.0,7\n1,0.5\n", "line 2 has 3 fields"),
        ("eval/similarity.npy", b"\x93NUMPY garbage", "not a readable .npy array"),
        ("eval/examples.json", '[{"query": "a", "target": 99, "retrieved": [1]}]', "outside thumbnails.npy"),
        ("config.yaml", "model: [unclosed", "not readable YAML"),
    ],
)
def test_corrupt_file(tmp_path: Path, relpath: str, content: str | bytes, detail: str) -> None:
    run = make_run(tmp_path)
    target = run / relpath
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=rf"{re.escape(str(target))} is corrupt: .*{re.escape(detail)}"):
        write_report(run)


def test_similarity_wrong_shape(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    np.save(run / "eval" / "similarity.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(InputError, match=r"similarity\.npy is corrupt: expected a non-empty float \(n, n\)"):
        write_report(run)


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path)
    write_report(run)
    before = (run / "report.html").read_bytes()
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("contrastkit.report.html.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report(run)
    assert (run / "report.html").read_bytes() == before  # the old report is intact
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_config_summary_reads_the_trainer_schema_and_tolerates_gaps() -> None:
    config = {"model": {"towers": {"image": {"type": "cnn"}, "text": {"type": "hf"}}}, "train": {"steps": 9}}
    summary = config_summary(config)
    assert summary == {"towers": "image: cnn, text: hf", "loss": "—", "batch size": "—", "steps": "9"}
    assert config_summary({}) == {"towers": "—", "loss": "—", "batch size": "—", "steps": "—"}
    assert config_summary({"model": "odd", "train": [1]})["towers"] == "—"
