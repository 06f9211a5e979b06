"""experiments/domain_adaptation.py --quick runs end to end in seconds and rewrites only its marked
block; its data, loss assembly and metrics do what the page says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contrastkit.losses.pixel import pixel_supcon, prototype_info_nce
from contrastkit.train.mean_teacher import MeanTeacher, pseudo_labels
from experiment_scripts import load_experiment, run_quick


@pytest.fixture(scope="module")
def module():
    return load_experiment("domain_adaptation")


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("domain_adaptation", tmp_path)
    for label in (
        "| source only |",
        "| mean teacher (MT) |",
        "| MT + local (pixel SupCon) |",
        "| MT + global (prototype InfoNCE) |",
        "| MT + local + global (GLCL) |",
        "target lesion IoU",
        "small-lesion recall",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- domain-adaptation-table:begin -->") == 1
    assert text.count("<!-- domain-adaptation-table:end -->") == 1 and "| source only |" in text


def test_metrics_on_known_maps(module) -> None:
    lesion = module.LESION
    target = torch.tensor([[[0, lesion, lesion], [1, 1, 0]]])
    pred = torch.tensor([[[lesion, lesion, 0], [1, 0, 0]]])
    # lesion: intersection 1, union 3; vessel: intersection 1, union 2; a class absent from both: 1
    assert module.class_iou(pred, target, lesion) == pytest.approx(1 / 3)
    assert module.class_iou(pred, target, 1) == pytest.approx(1 / 2)
    assert module.class_iou(pred, torch.zeros_like(target), 1) == 0.0
    assert module.class_iou(torch.zeros_like(pred), torch.zeros_like(target), lesion) == 1.0

    instances = torch.zeros(2, 4, 4, dtype=torch.long)
    instances[0, 0, :2] = 1  # 2 px, hit below
    instances[0, 2:, 2:] = 2  # 4 px, missed
    instances[1, 0, 0] = 1  # 1 px, hit (ids restart per image)
    instances[1, 1:, :] = 2  # 12 px: not small, hit but not counted
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[0, 0, 1] = lesion
    pred[0, 2, 2] = 1  # the vessel class is not a hit
    pred[1, 0, 0] = lesion
    pred[1, 3, 3] = lesion
    assert module.small_lesion_recall(pred, instances, max_area=4) == pytest.approx(2 / 3)
    assert module.small_lesion_recall(pred, instances, max_area=12) == pytest.approx(3 / 4)
    assert torch.isnan(torch.tensor(module.small_lesion_recall(pred, torch.zeros_like(instances))))


def test_images_lesions_and_target_shift(module) -> None:
    images, labels, instances = module.make_images(64, torch.Generator().manual_seed(0))
    again = module.make_images(64, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((images, labels, instances), again, strict=True))
    assert images.shape == (64, 1, module.SIZE, module.SIZE) and labels.shape == (
        64,
        module.SIZE,
        module.SIZE,
    )
    assert set(labels.unique().tolist()) == {0, 1, module.LESION}
    assert torch.equal(instances > 0, labels == module.LESION)
    areas = torch.stack([(instances == k).sum((1, 2)) for k in range(1, 5)])
    assert int(areas.max()) <= 12 and bool(((areas > 0) & (areas <= module.SMALL_AREA)).any())
    x = images[:, 0]
    assert x[labels == 1].mean() > x[labels == module.LESION].mean() + 0.3  # a dark filling defect
    assert x[labels == 1].mean() > x[labels == 0].mean() + 0.4
    target = module.to_target(images, torch.Generator().manual_seed(1))[:, 0]
    assert target[labels == 0].mean() > x[labels == 0].mean() + 0.1  # brighter background

    def contrast(img):
        return img[labels == 1].mean() - img[labels == module.LESION].mean()

    assert contrast(target) < 0.8 * contrast(x)  # remap and blur wash the lesions out


def _batch(module, n: int = 2):
    g = torch.Generator().manual_seed(3)
    images, labels, _ = module.make_images(2 * n, g)
    target = module.to_target(images[n:], g)
    return images[:n], labels[:n], target


@pytest.mark.parametrize("arm", ["source", "mt", "local", "global", "both"])
def test_adaptation_loss_is_the_sum_of_the_arms_terms(module, arm: str) -> None:
    torch.manual_seed(0)
    student = module.SegNet()
    teacher = MeanTeacher(student, decay=module.EMA_DECAY)
    x_s, y_s, x_t = _batch(module)
    loss, used = module.adaptation_loss(
        arm, student, teacher, x_s, y_s, x_t, torch.Generator().manual_seed(5)
    )

    g = torch.Generator().manual_seed(5)
    logits_s, feat_s = student(x_s)
    weight = torch.ones(module.N_CLASSES)
    weight[module.LESION] = module.LESION_WEIGHT
    expected = F.cross_entropy(logits_s, y_s, weight=weight)
    terms = module.TERMS[arm]
    if terms:
        logits_t, feat_t = student(module.perturb(x_t, g))
        probs = teacher(x_t)[0].softmax(1)
        expected = expected + (logits_t.softmax(1) - probs).square().mean()
        y_t = pseudo_labels(probs, 0.9)
        if "pix" in terms and used["pix"]:
            features, labels = torch.cat([feat_s, feat_t]), torch.cat([y_s, y_t])
            expected = expected + 0.1 * pixel_supcon(features, labels, 255, 256, 0.1, generator=g)
        if "proto" in terms and used["proto"]:
            expected = expected + 0.1 * prototype_info_nce(feat_s, y_s, feat_t, y_t, 3, 0.1)
    assert used["pix"] == ("pix" in terms)  # the source labels alone give contrast
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_a_term_without_pairs_is_skipped_not_zeroed(module) -> None:
    torch.manual_seed(0)
    student = module.SegNet()
    torch.nn.init.zeros_(student.classifier.weight)
    torch.nn.init.zeros_(student.classifier.bias)  # uniform teacher: no confident pseudo-label
    teacher = MeanTeacher(student)
    x_s, y_s, x_t = _batch(module)
    loss, used = module.adaptation_loss("both", student, teacher, x_s, y_s, x_t, torch.Generator())
    assert used == {"pix": True, "proto": False, "lesion_pseudo": 0.0}
    assert torch.isfinite(loss)


def test_verdict_follows_the_numbers(module) -> None:
    def runs(*values):
        return [{"lesion_iou": v} for v in values]

    results = {
        "source": runs(0.10, 0.11, 0.12),
        "mt": runs(0.20, 0.21, 0.22),
        "local": runs(0.30, 0.31, 0.32),
        "global": runs(0.20, 0.22, 0.21),
        "both": runs(0.40, 0.41, 0.42),
    }
    assert module.verdict(results).endswith("partly reproduced.")
    results["global"] = runs(0.25, 0.26, 0.27)
    assert module.verdict(results).endswith(" reproduced.") and "partly" not in module.verdict(results)
    results["local"] = results["global"] = runs(0.10, 0.30, 0.20)  # mean gain -0.01, noisy
    assert module.verdict(results).endswith("did not reproduce.")
    # paired by seed: +0.02 on every seed is a gain although the seeds spread far more than that
    results["mt"] = runs(0.05, 0.30, 0.55)
    results["local"] = results["global"] = runs(0.07, 0.32, 0.57)
    assert module.compare(results, "local", "mt")[2]
    assert module.verdict(results).endswith(" reproduced.") and "partly" not in module.verdict(results)
