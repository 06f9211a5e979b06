"""Claim (CRCC, METHODS.md 3.17): cross-subject/cross-site contrast plus a site classifier behind
gradient reversal raises balanced accuracy on an unseen site (the paper: +10.7 pp zero-shot).

    python experiments/cross_site.py            # 4 seeds x 6 folds x 6 arms, about 5 minutes on one thread
    python experiments/cross_site.py --quick    # a few seconds (a smoke test)

Setup: synthetic "EEG" feature vectors (32-d), patients (y = 1) vs controls (y = 0).

- Cohort: 6 sites x 8 subjects x 16 segments. Sites 0-2 hold 6 patients and 2 controls, sites
  3-5 the reverse: in every training split the site predicts the label (the confound).
- Features of a segment of subject s (label y) at site k:
      x = (2y - 1) a u + o_s + c_k + e,   e ~ N(0, I)
  u: a random unit class direction, a = CLASS_SHIFT; subject offsets o_s ~ N(0, SUBJECT_SD^2)
  in a random 4-d subspace; site offsets c_k ~ N(0, SITE_SD^2) in a random 3-d subspace (all
  sites vary along the same few nuisance directions, as amplifier gains and references do). A
  fresh cohort per seed.
- Model: MLP encoder 32 -> 64 -> 64 -> 16 (ReLU) giving h; a linear classifier on h; the
  contrast on z = h / ||h||; the site head GradientReversal -> 32 -> ReLU -> n_sites on h, with
  lambda_p = 2 / (1 + e^{-10 p}) - 1 over training. Adam lr 1e-3, batch 128 drawn at random
  from the 5 training sites, STEPS steps, inputs standardised with training statistics.
- Arms (same seed, cohort, initial weights and batches): CE; CE + cross-site SupCon
  (``cross_domain_supcon``, tau 0.1, weight 1); CE + reversal (site CE weight 1); CRCC = all three
  (METHODS: L = CE + 1.0 L_xcon + L_site); and two ablations of CRCC's positives: other subjects
  at any site (``require_cross_site=False``) and plain label SupCon (same-subject and same-site
  segments are positives too).
- Metrics: leave-one-site-out (train on 5 sites, test on the 6th, each site once) segment-level
  balanced accuracy, averaged over the folds; site decodability = accuracy of a linear probe
  (``linear_probe_accuracy``) predicting the training site from the frozen h, fitted on the even
  segments and scored on the odd ones (chance 20%), averaged over folds. Mean ± std over seeds.

The full run rewrites the marked block of docs/methods/domains.md; ``--quick`` writes nowhere
unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from contrastkit.eval.probe import linear_probe_accuracy
from contrastkit.losses.domains import crcc_loss
from contrastkit.losses.supervised import supcon
from contrastkit.models.reversal import GradientReversal, reversal_lambda
from contrastkit.report.blocks import clear_gain, mean_std, publish_result

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods" / "domains.md"
BEGIN, END = "<!-- cross-site-table:begin -->", "<!-- cross-site-table:end -->"
ARMS = ("ce", "xcon", "rev", "crcc", "crcc_any_site", "crcc_label_supcon")
LABELS = {
    "ce": "CE",
    "xcon": "CE + cross-site SupCon",
    "rev": "CE + reversal",
    "crcc": "CRCC (CE + cross-site SupCon + reversal)",
    "crcc_any_site": "CRCC, positives: other subjects, any site",
    "crcc_label_supcon": "CRCC, positives: any same-label segment",
}
DIM, HIDDEN, EMBED = 32, 64, 16
PATIENTS_PER_SITE = (6, 6, 6, 2, 2, 2)
CLASS_SHIFT, SUBJECT_SD, SITE_SD = 1.0, 1.0, 2.0
SUBJECT_RANK, SITE_RANK = 4, 3
TEMPERATURE = 0.1
BATCH, LR = 128, 1e-3
MIN_GAIN = 0.02  # a balanced-accuracy gain must also exceed 2 pp to count
PAPER_GAIN_PP = 10.7

# --------------------------------------------------------------------------------------------
# synthetic cohort
# --------------------------------------------------------------------------------------------


class Cohort(NamedTuple):
    """x (N, DIM) float32; labels, subject, site (N,) long; segment (N,) index within its subject."""

    x: torch.Tensor
    labels: torch.Tensor
    subject: torch.Tensor
    site: torch.Tensor
    segment: torch.Tensor

    def select(self, keep: torch.Tensor) -> Cohort:
        return Cohort(*(t[keep] for t in self))


def _subspace_offsets(n: int, rank: int, sd: float, g: torch.Generator) -> torch.Tensor:
    """n offsets N(0, sd^2) inside a random rank-``rank`` subspace of R^DIM: (n, DIM)."""
    basis, _ = torch.linalg.qr(torch.randn(DIM, rank, generator=g))
    return sd * torch.randn(n, rank, generator=g) @ basis.T


def make_cohort(
    seed: int, subjects_per_site: int = 8, segments: int = 16, patients: tuple[int, ...] = PATIENTS_PER_SITE
) -> Cohort:
    """x = (2y - 1) a u + subject offset + site offset + N(0, I) noise, site confounded with y."""
    g = torch.Generator().manual_seed(seed)
    n_sites = len(patients)
    n_subjects = n_sites * subjects_per_site
    u = F.normalize(torch.randn(DIM, generator=g), dim=0)
    subject_site = torch.arange(n_sites).repeat_interleave(subjects_per_site)
    rank_in_site = torch.arange(subjects_per_site).repeat(n_sites)
    subject_label = (rank_in_site < torch.tensor(patients)[subject_site]).long()
    subject_offset = _subspace_offsets(n_subjects, SUBJECT_RANK, SUBJECT_SD, g)
    site_offset = _subspace_offsets(n_sites, SITE_RANK, SITE_SD, g)
    subject = torch.arange(n_subjects).repeat_interleave(segments)
    labels, site = subject_label[subject], subject_site[subject]
    x = (
        (2 * labels[:, None] - 1) * CLASS_SHIFT * u
        + subject_offset[subject]
        + site_offset[site]
        + torch.randn(subject.shape[0], DIM, generator=g)
    )
    return Cohort(x, labels, subject, site, torch.arange(segments).repeat(n_subjects))


# --------------------------------------------------------------------------------------------
# model and training
# --------------------------------------------------------------------------------------------


class SiteAwareNet(nn.Module):
    """Encoder -> h (B, EMBED); class logits (B, 2); site logits behind gradient reversal."""

    def __init__(self, n_sites: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, EMBED)
        )
        self.classifier = nn.Linear(EMBED, 2)
        self.reversal = GradientReversal(0.0)
        self.site_head = nn.Sequential(nn.Linear(EMBED, 32), nn.ReLU(), nn.Linear(32, n_sites))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.classifier(h), self.site_head(self.reversal(h))


def train(arm: str, train_set: Cohort, *, steps: int, seed: int) -> SiteAwareNet:
    """Train one arm on ``train_set`` (sites renumbered 0..S-1); returns the net in eval mode."""
    sites, site_ids = torch.unique(train_set.site, return_inverse=True)
    torch.manual_seed(seed)
    net = SiteAwareNet(len(sites))
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed + 1)
    contrast = arm in ("xcon", "crcc", "crcc_any_site")
    adversary = arm in ("rev", "crcc", "crcc_any_site", "crcc_label_supcon")
    for step in range(steps):
        rows = torch.randint(0, train_set.x.shape[0], (BATCH,), generator=g)
        net.reversal.lambd = reversal_lambda(step / max(steps - 1, 1))
        h, class_logits, site_logits = net(train_set.x[rows])
        z = F.normalize(h, dim=1)
        labels = train_set.labels[rows]
        loss = crcc_loss(
            class_logits,
            z,
            site_logits if adversary else None,
            labels,
            train_set.subject[rows],
            site_ids[rows],
            temperature=TEMPERATURE,
            contrast_weight=1.0 if contrast else 0.0,
            require_cross_site=arm != "crcc_any_site",
        )
        if arm == "crcc_label_supcon":
            loss = loss + supcon(z, labels, TEMPERATURE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


# --------------------------------------------------------------------------------------------
# one fold, metrics
# --------------------------------------------------------------------------------------------


def standardise(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale every tensor with the training mean and std (per feature)."""
    mean, std = train_x.mean(0), train_x.std(0)
    return [(t - mean) / std for t in (train_x, *others)]


@torch.no_grad()
def evaluate(net: SiteAwareNet, train_set: Cohort, test_set: Cohort) -> dict[str, float]:
    """Balanced accuracy on the held-out site; site decodability from h on the training sites."""
    _, logits, _ = net(test_set.x)
    predicted = logits.argmax(1)
    balanced = balanced_accuracy_score(test_set.labels.numpy(), predicted.numpy())
    h_train = net.encoder(train_set.x)
    _, site = torch.unique(train_set.site, return_inverse=True)
    even = train_set.segment % 2 == 0
    decodability = linear_probe_accuracy(h_train[even], site[even], h_train[~even], site[~even], max_iter=100)
    return {"balanced_acc": 100 * float(balanced), "site_decodability": 100 * decodability}


def run_seed(seed: int, arms: tuple[str, ...], *, steps: int, folds: int, cohort: Cohort) -> dict[str, dict]:
    """Leave-one-site-out over the first ``folds`` sites: per arm, the metrics averaged over folds."""
    per_fold: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    for held_out in range(folds):
        test_mask = cohort.site == held_out
        train_set, test_set = cohort.select(~test_mask), cohort.select(test_mask)
        x_train, x_test = standardise(train_set.x, test_set.x)
        train_set, test_set = train_set._replace(x=x_train), test_set._replace(x=x_test)
        for arm in arms:
            net = train(arm, train_set, steps=steps, seed=1000 * seed + held_out)
            per_fold[arm].append(evaluate(net, train_set, test_set))
    return {
        arm: {key: statistics.fmean(f[key] for f in folds_) for key in folds_[0]}
        for arm, folds_ in per_fold.items()
    }


# --------------------------------------------------------------------------------------------
# table and verdict
# --------------------------------------------------------------------------------------------

COLUMNS = ("balanced_acc", "site_decodability")
HEADER = ("held-out-site balanced accuracy (%) ↑", "site decodability (%, chance 20) ↓")


def format_table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| arm | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for arm, runs in results.items():
        lines.append(
            f"| {LABELS[arm]} | " + " | ".join(mean_std([r[c] for r in runs], 1) for c in COLUMNS) + " |"
        )
    return "\n".join(lines)


def compare(results, better: str, worse: str, column: str = "balanced_acc") -> tuple[float, bool]:
    """(mean gain of ``column`` in pp, whether it exceeds 2 unpaired SE and MIN_GAIN)."""
    a = [r[column] for r in results[better]]
    b = [r[column] for r in results[worse]]
    return clear_gain(a, b, 100 * MIN_GAIN)


def _said(gain: float, clear: bool) -> str:
    return f"{gain:+.1f} pp ({'clear' if clear else 'not clear'})"


def verdict(results: dict[str, list[dict[str, float]]]) -> str:
    crcc_gain, crcc_clear = compare(results, "crcc", "ce")
    xcon_gain, xcon_clear = compare(results, "xcon", "ce")
    rev_gain, rev_clear = compare(results, "rev", "ce")
    site_gain, site_clear = compare(results, "crcc", "crcc_any_site")
    label_gain, label_clear = compare(results, "crcc", "crcc_label_supcon")
    if crcc_clear:
        outcome = "reproduced"
    elif xcon_clear or rev_clear:
        outcome = "partly reproduced"
    else:
        outcome = "did not reproduce"
    return (
        f"Held-out-site balanced accuracy vs CE: CRCC {_said(crcc_gain, crcc_clear)}, cross-site SupCon "
        f"alone {_said(xcon_gain, xcon_clear)}, reversal alone {_said(rev_gain, rev_clear)}; CRCC's "
        f"cross-site positives vs any-site positives {_said(site_gain, site_clear)}, vs plain label "
        f"positives {_said(label_gain, label_clear)}. Claim (CRCC raises zero-shot site-transfer balanced "
        f"accuracy; paper +{PAPER_GAIN_PP} pp) {outcome}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (4; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (300; 20 with --quick)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    steps = args.steps or (20 if args.quick else 300)
    seeds = args.seeds or (1 if args.quick else 4)
    folds = 1 if args.quick else len(PATIENTS_PER_SITE)
    subjects, segments = (4, 8) if args.quick else (8, 16)
    patients = (
        tuple(3 if p > subjects // 2 else 1 for p in PATIENTS_PER_SITE) if args.quick else PATIENTS_PER_SITE
    )
    docs = args.docs if args.quick else (args.docs or DOCS)

    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        cohort = make_cohort(seed, subjects, segments, patients)
        for arm, metrics in run_seed(seed, ARMS, steps=steps, folds=folds, cohort=cohort).items():
            results[arm].append(metrics)
            print(
                f"[{time.time() - start:6.1f}s] seed {seed} {arm}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()),
                flush=True,
            )

    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    caption = (
        f"Synthetic confounded cohort ({'--quick' if args.quick else 'full run'}): "
        f"{len(PATIENTS_PER_SITE)} sites x {subjects} subjects x {segments} segments, leave-one-site-out "
        f"over {folds} held-out site(s), {steps} steps x batch {BATCH}, {seeds} seed(s), mean ± std over "
        f"seeds; run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    command = "python experiments/cross_site.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
