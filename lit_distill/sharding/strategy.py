"""``--trainer.strategy fsdp2``: Lightning's ModelParallelStrategy used as plain FSDP2 over all devices, the
:class:`ShardingPlan` its options make, and which strategies shard at all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch.distributed.constants import default_pg_timeout


@dataclass(frozen=True)
class ShardingPlan:
    """Settings of :class:`FSDP2Strategy` that decide how student and teacher are sharded.

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


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallelism (FSDP2) for distillation: every device holds a shard of each model.

    A thin layer over Lightning's :class:`~lightning.pytorch.strategies.ModelParallelStrategy`: all devices of
    all nodes form the data-parallel dimension (no tensor parallelism), and the :class:`ShardingPlan` below
    tells :class:`~lit_distill.DistillationModule` how to shard student and teacher in ``configure_model``.
    Registered as ``"fsdp2"``, so a recipe scales by trainer flags alone::

        lit-distill fit --config configs/llm/token_kd.yaml --trainer.strategy fsdp2 --trainer.devices 8

    Checkpoints are sharded folders by default (every rank writes its part, in parallel); the student's
    weights in them load on one device or the CPU through ``student_checkpoint:`` / ``teacher_checkpoint:``.

    Args:
        teacher: ``"shard"`` (default) or ``"replicate"``; see :class:`ShardingPlan`.
        block_classes: transformer block class names to shard one by one; None finds them.
        activation_checkpointing: recompute student block activations in backward.
        reshard_after_forward: free gathered student blocks between forward and backward.
        save_distributed_checkpoint: sharded checkpoint folders (True) or one full file written by rank 0.
        process_group_backend: ``"nccl"``/``"gloo"``; None picks by device.
        timeout: collective timeout.

    Example:
        >>> strategy = FSDP2Strategy(teacher="replicate", activation_checkpointing=True)
        >>> strategy.plan.teacher
        'replicate'
    """

    strategy_name = "fsdp2"

    def __init__(
        self,
        teacher: Literal["shard", "replicate"] = "shard",
        block_classes: list[str] | None = None,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.plan = ShardingPlan(
            teacher=teacher,
            block_classes=tuple(block_classes) if block_classes else None,
            activation_checkpointing=activation_checkpointing,
            reshard_after_forward=reshard_after_forward,
        )

    def setup_environment(self) -> None:
        # Every process of every node is one data-parallel rank that holds a shard.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


if "fsdp2" not in StrategyRegistry:
    StrategyRegistry.register("fsdp2", FSDP2Strategy, description="FSDP2 sharding of student and teacher (lit-distill)")


def sharding_plan(strategy: Any) -> ShardingPlan | None:
    """The plan when ``strategy`` is Lightning's ModelParallelStrategy (``fsdp2`` or plain), else None.

    A plain ModelParallelStrategy with a tensor-parallel size above 1 is refused: lit-distill shards over the
    data-parallel dimension only (FSDP2) and would silently feed every tensor-parallel rank the same data.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ValueError(
            "lit-distill shards with FSDP2: use --trainer.strategy fsdp2 (lit_distill.sharding.FSDP2Strategy), not "
            "Lightning's FSDP1 strategy 'fsdp'. FSDP1 flattens the teacher and the student into shared units, which "
            "fails for a teacher in its own dtype (bf16 beside an fp32 student) and for checkpoints without it."
        )
    if not isinstance(strategy, ModelParallelStrategy):
        return None
    tp = strategy.device_mesh["tensor_parallel"].size()
    if tp != 1:
        raise ValueError(
            f"ModelParallelStrategy has tensor_parallel_size={tp}; lit-distill shards with FSDP2 over data-parallel "
            "ranks only. Use --trainer.strategy fsdp2 (or ModelParallelStrategy(data_parallel_size=<all devices>, "
            "tensor_parallel_size=1))."
        )
    return getattr(strategy, "plan", None) or ShardingPlan()
