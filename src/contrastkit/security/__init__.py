"""Trust: backdoor evaluation (triggers, poisoning, attack success rate and its persistence),
poisoned-pair detectors, the audit behind ``contrastkit audit``, and the defenses that
``loss.defense`` selects (CleanCLIP, RoCLIP, SafeCLIP, similarity unlearning; METHODS 3.6).

The trigger and poisoning code exists to measure attacks in experiments and red-team tests.
"""

from contrastkit.security.asr import (
    PERSISTENCE_STEPS,
    AttackResult,
    PersistenceCurve,
    attack_success_rate,
    persistence_curve,
)
from contrastkit.security.audit import run_audit, score_pairs
from contrastkit.security.defenses import (
    TextMemoryBank,
    cleanclip_loss,
    flag_top_pairs,
    nn_positive_contrast,
    roclip_swap,
    safe_fraction_schedule,
    safeclip_loss,
    safeclip_split,
    unlearn_clip_loss,
    unlearn_penalty,
)
from contrastkit.security.detectors import (
    GmmSplit,
    detection_auroc,
    gmm_safe_split,
    knn_outlier_scores,
)
from contrastkit.security.poison import PoisonedSource, poison_dataset
from contrastkit.security.triggers import Trigger, badnet_patch, blended_trigger, checkerboard

__all__ = [
    "AttackResult",
    "GmmSplit",
    "PERSISTENCE_STEPS",
    "PersistenceCurve",
    "PoisonedSource",
    "TextMemoryBank",
    "Trigger",
    "attack_success_rate",
    "badnet_patch",
    "blended_trigger",
    "checkerboard",
    "cleanclip_loss",
    "detection_auroc",
    "flag_top_pairs",
    "gmm_safe_split",
    "knn_outlier_scores",
    "nn_positive_contrast",
    "persistence_curve",
    "poison_dataset",
    "roclip_swap",
    "run_audit",
    "safe_fraction_schedule",
    "safeclip_loss",
    "safeclip_split",
    "score_pairs",
    "unlearn_clip_loss",
    "unlearn_penalty",
]
