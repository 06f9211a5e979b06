"""Mining: hard negatives for retrieval training (first stage, teacher, filters, JSONL)."""

from contrastkit.mining.first_stage import BM25Index, dense_top_k
from contrastkit.mining.hard_negatives import MinedNegatives, mine_hard_negatives
from contrastkit.mining.jsonl import read_mined_jsonl, write_mined_jsonl
from contrastkit.mining.teachers import cross_encoder_scorer, embedding_scorer, sentence_encoder

__all__ = [
    "BM25Index",
    "MinedNegatives",
    "cross_encoder_scorer",
    "dense_top_k",
    "embedding_scorer",
    "mine_hard_negatives",
    "read_mined_jsonl",
    "sentence_encoder",
    "write_mined_jsonl",
]
