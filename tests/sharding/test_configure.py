"""Which strategies shard, and the refusals that name the fix."""

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

from lit_distill.models import GPT
from lit_distill.sharding import FSDP2Strategy
from lit_distill.sharding.configure import fill_empty, sharding_plan
from lit_distill.sharding.materialize import empty_parameters
from lit_distill.sharding.plan import ShardingPlan


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


def test_an_empty_model_without_weights_to_load_is_an_error_not_a_random_model():
    with empty_parameters():
        model = GPT(n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="teacher.*meta device and nothing to load.*teacher_checkpoint"):
        fill_empty(model, torch.device("cpu"), None, "teacher")
    fill_empty(GPT(n_layer=1, n_head=2, n_embd=16), torch.device("cpu"), None, "student")  # not empty: nothing to do
