"""Evaluation of embeddings: retrieval, BEIR-style IR metrics, zero-shot, probes, geometry and
cross-model alignment (mutual kNN, CKA, CKNNA, SVCCA).

Every function works on given embeddings (no model calls, except ``class_embeddings`` which takes
a text encoder), is exact and deterministic, and scores large sets in query chunks.
"""

from contrastkit.eval.alignment import (
    alignment_metrics,
    alignment_score,
    bridge_retrieval,
    cka,
    cknna,
    mutual_knn,
    svcca,
)
from contrastkit.eval.caption_probe import caption_probe, edit_caption
from contrastkit.eval.geometry import (
    alignment_loss,
    mean_matched_cosine,
    modality_gap,
    representation_metrics,
    uniformity,
)
from contrastkit.eval.ir import ir_metrics
from contrastkit.eval.kway import kway_zero_shot
from contrastkit.eval.probe import knn_accuracy, linear_probe_accuracy
from contrastkit.eval.prototype import PristinePrototype
from contrastkit.eval.retrieval import paired_retrieval, retrieval_ranks, top_k_neighbours
from contrastkit.eval.zeroshot import class_embeddings, zero_shot_accuracy

__all__ = [
    "PristinePrototype",
    "alignment_loss",
    "alignment_metrics",
    "alignment_score",
    "bridge_retrieval",
    "caption_probe",
    "cka",
    "cknna",
    "class_embeddings",
    "edit_caption",
    "ir_metrics",
    "knn_accuracy",
    "kway_zero_shot",
    "linear_probe_accuracy",
    "mean_matched_cosine",
    "modality_gap",
    "mutual_knn",
    "paired_retrieval",
    "representation_metrics",
    "retrieval_ranks",
    "svcca",
    "top_k_neighbours",
    "uniformity",
    "zero_shot_accuracy",
]
