"""Generation: sampling from causal LMs (:func:`generate`), the predict-time :class:`GenerationModule` (sequence-level
KD data) and :class:`OnPolicyDistillationModule` (the student writes, the teacher grades).

``sampling.py``: ``generate``, the plain paths, ranks of a sharded model in step, samples into training batches.
``fast.py``: the static KV cache sampler with its compiled decode step, and the ``fast`` option. ``modules.py``: the
two Lightning modules. What is sampled (length, temperature, top-k/p, eos, pad, real vocabulary) is one
:class:`~lit_distill.models.next_token.SamplingSpec`.
"""

from lit_distill.generation.modules import GenerationModule, OnPolicyDistillationModule
from lit_distill.generation.sampling import generate

__all__ = ["GenerationModule", "OnPolicyDistillationModule", "generate"]
