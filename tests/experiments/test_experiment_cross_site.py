"""experiments/cross_site.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("cross_site", tmp_path)
    for label in (
        "| CE |",
        "| CE + cross-site SupCon |",
        "| CE + reversal |",
        "| CRCC (CE + cross-site SupCon + reversal) |",
        "| CRCC, positives: other subjects, any site |",
        "| CRCC, positives: any same-label segment |",
        "balanced accuracy",
        "site decodability",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- cross-site-table:begin -->") == 1 and "| CRCC (CE" in text


def test_cohort_is_confounded_and_consistent() -> None:
    module = load_experiment("cross_site")
    cohort = module.make_cohort(0, subjects_per_site=8, segments=4)
    assert cohort.x.shape == (6 * 8 * 4, module.DIM) and torch.isfinite(cohort.x).all()
    for s in cohort.subject.unique():
        rows = cohort.subject == s
        assert cohort.labels[rows].unique().numel() == 1 and cohort.site[rows].unique().numel() == 1
    for k, patients in enumerate(module.PATIENTS_PER_SITE):
        subjects = cohort.subject[(cohort.site == k) & (cohort.labels == 1)].unique()
        assert subjects.numel() == patients
    # Same seed, same cohort; another seed, another one.
    assert torch.equal(module.make_cohort(0, 8, 4).x, cohort.x)
    assert not torch.equal(module.make_cohort(1, 8, 4).x, cohort.x)


def test_site_offsets_separate_sites() -> None:
    # The site means differ by far more than the noise of a mean over 128 segments.
    module = load_experiment("cross_site")
    cohort = module.make_cohort(2)
    means = torch.stack([cohort.x[cohort.site == k].mean(0) for k in range(6)])
    gaps = torch.cdist(means, means)[~torch.eye(6, dtype=torch.bool)]
    assert gaps.min() > 0.5


def test_verdict_follows_the_numbers() -> None:
    module = load_experiment("cross_site")

    def results(crcc: list[float], xcon: list[float]) -> dict:
        runs = {
            arm: [{"balanced_acc": 60.0 + i, "site_decodability": 50.0} for i in range(3)]
            for arm in module.ARMS
        }
        runs["crcc"] = [{"balanced_acc": v, "site_decodability": 30.0} for v in crcc]
        runs["xcon"] = [{"balanced_acc": v, "site_decodability": 30.0} for v in xcon]
        return runs

    assert module.verdict(results([70.0, 71.0, 72.0], [61.0, 62.0, 60.0])).endswith(") reproduced.")
    assert "partly reproduced" in module.verdict(results([60.0, 61.0, 62.0], [70.0, 71.0, 72.0]))
    assert "did not reproduce" in module.verdict(results([55.0, 70.0, 62.0], [61.0, 60.0, 62.0]))
