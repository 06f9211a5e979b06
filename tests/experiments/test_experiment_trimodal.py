"""experiments/trimodal.py --quick: runs in seconds, prints the tables, leaves the doc alone."""

from __future__ import annotations

import pytest
import torch

from experiment_scripts import load_experiment


def test_quick_run_prints_the_tables(capsys):
    module = load_experiment("trimodal")
    if module.load_truce() is None:
        pytest.skip(f"TRUCE data absent under {module.TRUCE}")
    doc_before = module.DOC.read_text(encoding="utf-8") if module.DOC.is_file() else None
    threads = torch.get_num_threads()
    try:
        out = module.main(["--quick"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "| pair | stage | mutual kNN@10 | CKA (unbiased) | CKNNA@10 | SVCCA-10 | R@1 (a→b) |" in printed
    for pair in ("ts–img", "ts–txt", "img–txt"):
        for stage in ("raw", "before", "after"):
            assert f"| {pair} | {stage} |" in printed
    assert "Images bridge" in printed and "Caption density" in printed
    main = out["main"]
    for pair in ("ts-img", "ts-txt", "img-txt"):
        for key in ("mutual_knn", "cknna", "R@1"):
            assert 0.0 <= main["after"][pair][key] <= 1.0
    assert set(out["densities"]) == {1, 2, 3}
    after = module.DOC.read_text(encoding="utf-8") if module.DOC.is_file() else None
    assert after == doc_before  # --quick never rewrites the doc


def test_missing_data_skips_with_a_reason(tmp_path, monkeypatch, capsys):
    module = load_experiment("trimodal")
    monkeypatch.setattr(module, "TRUCE", tmp_path)
    out = module.main(["--quick"])
    assert out["skipped"].startswith("skipped: TRUCE")
    assert "not found" in capsys.readouterr().out


def test_render_draws_the_polyline():
    module = load_experiment("trimodal")
    series = module.minmax(torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 3.0, 3.0, 3.0]]))
    img = module.render(series, size=16, width=1.0, margin=2.0)
    assert img.shape == (2, 1, 16, 16) and 0 <= float(img.min()) and float(img.max()) <= 1
    # a rising line: ink at the bottom-left and the top-right corners of the plot area
    assert img[0, 0, 13, 2] > 0.9 and img[0, 0, 2, 13] > 0.9 and img[0, 0, 2, 2] == 0
    # a constant series is a horizontal line through the middle
    row = img[1, 0].sum(dim=1).argmax()
    assert int(row) in (7, 8)
