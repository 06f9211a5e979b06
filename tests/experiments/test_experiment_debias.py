"""experiments/debias_clip.py --quick: runs in seconds, prints the probe table, leaves the doc alone."""

from __future__ import annotations

from experiment_scripts import load_experiment


def test_quick_run_prints_the_probe_table(capsys):
    module = load_experiment("debias_clip")
    doc_before = module.DOC.read_text(encoding="utf-8") if module.DOC.is_file() else None
    out = module.main(["--quick"])
    printed = capsys.readouterr().out
    assert "| data | training | keep | move | remove | pad_1 | pad_3 | pad_5 |" in printed
    assert "| shapes | long-clip |" in printed and "| shapes | debias |" in printed
    assert "claim" in printed
    results = out["results"]["shapes"]
    for method in ("long-clip", "debias"):
        for key in ("keep", "move", "remove", "pad_1", "pad_3", "pad_5"):
            assert 0.0 <= results[method][key] <= 1.0
    after = module.DOC.read_text(encoding="utf-8") if module.DOC.is_file() else None
    assert after == doc_before  # --quick never rewrites the doc


def test_table_and_verdict_helpers():
    module = load_experiment("debias_clip")
    r = {"keep": 0.5, "move": 0.4, "remove": 0.3, "pad_1": 0.5, "pad_3": 0.5, "pad_5": 0.4}
    better = {**r, "move": 0.45, "remove": 0.35}
    assert module.verdict({"long-clip": r, "debias": better}).startswith("reproduced")
    assert module.verdict({"long-clip": better, "debias": r}).startswith("NOT reproduced")
    text = module.table({"shapes": {"long-clip": r, "debias": better}}, ["note"])
    assert "| shapes | long-clip | 50.0 | 40.0 | 30.0 | 50.0 | 50.0 | 40.0 | 10.0 | 20.0 |" in text
    assert text.endswith("note")


def test_verdict_is_inconclusive_near_chance():
    module = load_experiment("debias_clip")
    weak = {"keep": 0.01, "move": 0.005, "remove": 0.004}
    weaker = {"keep": 0.008, "move": 0.004, "remove": 0.003}
    assert module.verdict({"long-clip": weaker, "debias": weak}).startswith("inconclusive")
