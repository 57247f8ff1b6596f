"""Sharded training of big students and teachers with FSDP2, through Lightning's strategies.

``--trainer.strategy fsdp2`` (:class:`FSDP2Strategy`) shards both models block by block; models too big for one
device are built on the meta device and filled shard by shard (:mod:`lit_distill.sharding.materialize`);
:mod:`lit_distill.sharding.state` gathers full weights for export.
"""

from lit_distill.sharding.strategy import FSDP2Strategy

__all__ = ["FSDP2Strategy"]
