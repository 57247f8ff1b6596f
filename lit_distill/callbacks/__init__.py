"""Callbacks for the recipes: the student exported at the end of fit (a file or a pretrained-style folder), the
teacher checkpoint other recipes read, the fit summary, the sentence-encoder evaluation and the JSONL writer of
generated responses."""

from lit_distill.callbacks.embedding import EmbeddingEval
from lit_distill.callbacks.export import ExportPretrained, ExportStudent
from lit_distill.callbacks.fit import FitSummary, TeacherCheckpoint
from lit_distill.callbacks.generation import JsonlPredictionWriter

__all__ = [
    "ExportStudent",
    "ExportPretrained",
    "TeacherCheckpoint",
    "FitSummary",
    "EmbeddingEval",
    "JsonlPredictionWriter",
]
