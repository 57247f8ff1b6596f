"""Generation: sampling from causal LMs, the predict-time :class:`GenerationModule` (sequence-level KD data) and
:class:`OnPolicyDistillationModule` (the student writes, the teacher grades)."""

from lit_distill.generation.onpolicy import OnPolicyDistillationModule
from lit_distill.generation.predict import GenerationModule
from lit_distill.generation.sampling import generate

__all__ = ["GenerationModule", "OnPolicyDistillationModule", "generate"]
