"""Callbacks for the recipes: student export, teacher checkpoint and fit summary, embedding evaluation, generation
JSONL writer."""

from lit_distill.callbacks.embedding import (
    EmbeddingEval,
    compare_encoders,
    count_parameters,
    encode_rates,
    encode_times,
    format_table,
    mean_cosine,
    nearest_neighbours,
    neighbour_agreement,
    quantize_int8,
    size_bytes,
)
from lit_distill.callbacks.fit import ExportStudent, FitSummary, TeacherCheckpoint
from lit_distill.callbacks.generation import JsonlPredictionWriter

__all__ = [
    "ExportStudent",
    "FitSummary",
    "TeacherCheckpoint",
    "EmbeddingEval",
    "JsonlPredictionWriter",
    "compare_encoders",
    "count_parameters",
    "encode_rates",
    "encode_times",
    "format_table",
    "mean_cosine",
    "nearest_neighbours",
    "neighbour_agreement",
    "quantize_int8",
    "size_bytes",
]
