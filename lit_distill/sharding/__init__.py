"""Sharded training of big students and teachers with FSDP2, through Lightning's strategies.

- :mod:`~lit_distill.sharding.strategy`: ``--trainer.strategy fsdp2`` (:class:`FSDP2Strategy`) and its options
  (``ShardingPlan``).
- :mod:`~lit_distill.sharding.wrap`: how models are wrapped (blocks found, sharded one by one, activation
  checkpointing, compiled in place) when the module is configured.
- :mod:`~lit_distill.sharding.fill`: how big weights are filled (models built on the meta device with
  ``empty_parameters``, filled shard by shard by ``materialize``) and gathered back for export.
"""

from lit_distill.sharding.strategy import FSDP2Strategy

__all__ = ["FSDP2Strategy"]
