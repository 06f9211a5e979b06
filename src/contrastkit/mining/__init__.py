"""Mining: hard negatives for retrieval training (first stage, teacher, filters, JSONL), and
pseudo-labels where no one labelled the data: PSQE pseudo-seeds, constrained clustering of
tracklets, GradCON severity bins."""

from contrastkit.mining.clustering import constrained_cluster, cooccurring_pairs, merge_tracklets
from contrastkit.mining.first_stage import BM25Index, dense_top_k
from contrastkit.mining.hard_negatives import MinedNegatives, mine_hard_negatives
from contrastkit.mining.jsonl import read_mined_jsonl, write_mined_jsonl
from contrastkit.mining.seeds import (
    ClusterSeeds,
    add_unseeded_pairs,
    cluster_resample_seeds,
    global_top_seeds,
    greedy_one_to_one,
    neighbour_expand,
    row_max_filter,
)
from contrastkit.mining.severity import (
    GradientReference,
    bin_scores,
    decoder_weight_names,
    gradcon_scores,
    gradcon_training_loss,
)
from contrastkit.mining.teachers import cross_encoder_scorer, embedding_scorer, sentence_encoder

__all__ = [
    "BM25Index",
    "ClusterSeeds",
    "GradientReference",
    "MinedNegatives",
    "add_unseeded_pairs",
    "bin_scores",
    "cluster_resample_seeds",
    "constrained_cluster",
    "cooccurring_pairs",
    "cross_encoder_scorer",
    "decoder_weight_names",
    "dense_top_k",
    "embedding_scorer",
    "global_top_seeds",
    "gradcon_scores",
    "gradcon_training_loss",
    "greedy_one_to_one",
    "merge_tracklets",
    "mine_hard_negatives",
    "neighbour_expand",
    "read_mined_jsonl",
    "row_max_filter",
    "sentence_encoder",
    "write_mined_jsonl",
]
