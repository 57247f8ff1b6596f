"""How a distillation run is sharded with FSDP2: the settings users give the ``fsdp2`` strategy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ShardingPlan:
    """Settings of :class:`~lit_distill.sharding.FSDP2Strategy` that decide how student and teacher are sharded.

    Args:
        teacher: ``"shard"`` splits the frozen teacher across devices like the student (a teacher bigger than
            one device); ``"replicate"`` keeps a whole copy per device (no gathers in its forward: faster when
            it fits).
        block_classes: class names of the transformer blocks that are sharded one by one (gathered just
            before they run, freed after); None finds them (``_no_split_modules`` or the repeated layers).
        activation_checkpointing: recompute each student block's activations in backward instead of keeping
            them (less memory, about a third more student compute).
        reshard_after_forward: free the student's gathered blocks after forward and gather them again for
            backward (less memory, more communication).
    """

    teacher: Literal["shard", "replicate"] = "shard"
    block_classes: tuple[str, ...] | None = None
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        if self.teacher not in ("shard", "replicate"):
            raise ValueError(f"teacher must be 'shard' or 'replicate', got {self.teacher!r}.")
