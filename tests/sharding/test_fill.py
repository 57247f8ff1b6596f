"""Building without memory and filling weights later (exact values from safetensors, checkpoints, or random; an
empty model with nothing to fill it is an error), and whole weights gathered back."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lit_distill.models import GPT
from lit_distill.sharding.fill import (
    WeightSource,
    empty_parameters,
    fill_empty,
    full_state_dict,
    is_sharded,
    materialize,
)
from lit_distill.weights import has_meta_parameters


def small_gpt(**kwargs):
    return GPT(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, **kwargs)


def test_empty_parameters_puts_parameters_on_meta_and_keeps_buffers_real():
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.register_buffer("freq", torch.arange(3.0), persistent=False)

    with empty_parameters():
        module = WithBuffer()
    assert module.lin.weight.is_meta and module.lin.bias.is_meta
    assert not module.freq.is_meta and torch.equal(module.freq, torch.arange(3.0))
    assert has_meta_parameters(module)
    assert not has_meta_parameters(nn.Linear(2, 2))  # the patch is gone outside the context


def test_materialize_from_safetensors_gives_the_saved_model_exactly(tmp_path):
    torch.manual_seed(0)
    ref = small_gpt(tie_weights=False)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    with empty_parameters():
        model = small_gpt(tie_weights=False)
    materialize(model, torch.device("cpu"), WeightSource(tmp_path))
    assert not has_meta_parameters(model)
    x = torch.randint(0, 50, (2, 7))
    assert torch.equal(ref(x), model(x))


def test_materialize_from_a_lightning_checkpoint_with_prefix(tmp_path):
    torch.manual_seed(1)
    ref = small_gpt()
    torch.save({"state_dict": {f"student.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "t.ckpt")
    with empty_parameters():
        model = small_gpt()
    materialize(model, torch.device("cpu"), WeightSource(tmp_path / "t.ckpt", prefix="student."))
    assert model.head.weight is model.wte.weight  # still tied
    x = torch.randint(0, 50, (1, 5))
    assert torch.equal(ref(x), model(x))


def test_random_materialize_draws_weights_and_unit_norms():
    with empty_parameters():
        model = small_gpt()
    materialize(model, torch.device("cpu"), None, std=0.5)
    assert torch.equal(model.norm.weight, torch.ones(16))
    assert 0.4 < float(model.wte.weight.detach().std()) < 0.6


def test_missing_keys_and_wrong_shapes_are_named(tmp_path):
    ref = small_gpt()
    state = {k: v for k, v in ref.state_dict().items() if k != "norm.weight"}
    save_file({k: v.clone() for k, v in state.items()}, str(tmp_path / "a.safetensors"))
    with empty_parameters():
        model = small_gpt()
    with pytest.raises(ValueError, match="lack 1 parameter.*norm.weight"):
        materialize(model, torch.device("cpu"), WeightSource(tmp_path / "a.safetensors"))
    bigger = GPT(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32).state_dict()
    save_file({k: v.clone() for k, v in bigger.items()}, str(tmp_path / "b.safetensors"))
    with empty_parameters():
        model = small_gpt()
    with pytest.raises(ValueError, match=r"hold shape \(50, 32\), the model \(50, 16\)"):
        materialize(model, torch.device("cpu"), WeightSource(tmp_path / "b.safetensors"))


def test_a_folder_without_weights_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        WeightSource(tmp_path)


def test_an_empty_model_without_weights_to_load_is_an_error_not_a_random_model():
    with empty_parameters():
        model = GPT(n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="teacher.*meta device and nothing to load.*teacher_checkpoint"):
        fill_empty(model, torch.device("cpu"), None, "teacher")
    fill_empty(GPT(n_layer=1, n_head=2, n_embd=16), torch.device("cpu"), None, "student")  # not empty: nothing to do


def test_the_whole_state_of_an_unsharded_model_is_its_detached_tensors_on_the_cpu():
    model = small_gpt()
    state = full_state_dict(model)
    assert not is_sharded(model) and sorted(state) == sorted(model.state_dict())
    assert all(not v.requires_grad and v.device.type == "cpu" for v in state.values())
    assert torch.equal(state["head.weight"], model.head.weight)
