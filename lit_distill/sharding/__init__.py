"""Sharded training of big students and teachers with FSDP2, through Lightning's strategies.

``--trainer.strategy fsdp2`` (:class:`FSDP2Strategy`) shards both models block by block; models too big
for one device are built on the meta device (:func:`empty_parameters`) and filled shard by shard
(:func:`materialize`). :mod:`lit_distill.sharding.state` gathers full weights for export.
"""

from lit_distill.sharding.blocks import blocks_of, find_block_classes
from lit_distill.sharding.materialize import WeightSource, empty_parameters, materialize
from lit_distill.sharding.plan import ShardingPlan
from lit_distill.sharding.strategy import FSDP2Strategy
from lit_distill.weights import has_meta_parameters

__all__ = [
    "FSDP2Strategy",
    "ShardingPlan",
    "WeightSource",
    "blocks_of",
    "empty_parameters",
    "find_block_classes",
    "has_meta_parameters",
    "materialize",
]
