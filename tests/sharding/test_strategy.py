"""The fsdp2 strategy and its plan: which strategies shard, and the refusals that name the fix."""

import pytest
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

from lit_distill.sharding.strategy import FSDP2Strategy, ShardingPlan, sharding_plan


class FakeMesh:
    def __init__(self, tp: int) -> None:
        self.tp = tp

    def __getitem__(self, name: str):
        return type("Dim", (), {"size": lambda _self: self.tp})()


def with_mesh(strategy, tp: int):
    strategy._device_mesh = FakeMesh(tp)
    return strategy


def test_only_model_parallel_strategies_shard_and_fsdp2_carries_its_plan():
    assert sharding_plan(None) is None and sharding_plan(DDPStrategy()) is None
    assert sharding_plan(with_mesh(ModelParallelStrategy(), 1)) == ShardingPlan()
    plan = sharding_plan(with_mesh(FSDP2Strategy(teacher="replicate"), 1))
    assert plan.teacher == "replicate"


def test_fsdp1_is_refused_naming_fsdp2():
    with pytest.raises(ValueError, match="use --trainer.strategy fsdp2.*bf16 beside an fp32 student"):
        sharding_plan(FSDPStrategy())


def test_tensor_parallel_sizes_are_refused_since_every_rank_would_see_the_same_data():
    with pytest.raises(ValueError, match="tensor_parallel_size=2.*--trainer.strategy fsdp2"):
        sharding_plan(with_mesh(ModelParallelStrategy(), 2))


def test_fsdp2_is_a_registered_strategy_name_with_its_plan():
    from lightning.pytorch.strategies import StrategyRegistry

    assert StrategyRegistry["fsdp2"]["strategy"] is FSDP2Strategy
    plan = FSDP2Strategy(block_classes=["Block"], activation_checkpointing=True, reshard_after_forward=False).plan
    assert plan == ShardingPlan(block_classes=("Block",), activation_checkpointing=True, reshard_after_forward=False)
    with pytest.raises(ValueError, match="teacher must be 'shard' or 'replicate'"):
        FSDP2Strategy(teacher="copy")
