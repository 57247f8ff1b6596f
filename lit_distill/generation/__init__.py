"""Generation: sampling from causal LMs, the predict-time :class:`GenerationModule` (sequence-level KD data) and
:class:`OnPolicyDistillationModule` (the student writes, the teacher grades)."""

from lit_distill.generation.onpolicy import OnPolicyDistillationModule
from lit_distill.generation.predict import GenerationModule
from lit_distill.generation.sampling import (
    IGNORE_INDEX,
    check_sampling,
    completion_batch,
    eval_mode,
    generate,
    left_pad,
    new_tokens,
    prompts_from_batch,
    sequence_nll,
)

__all__ = [
    "GenerationModule",
    "OnPolicyDistillationModule",
    "IGNORE_INDEX",
    "check_sampling",
    "completion_batch",
    "eval_mode",
    "generate",
    "left_pad",
    "new_tokens",
    "prompts_from_batch",
    "sequence_nll",
]
