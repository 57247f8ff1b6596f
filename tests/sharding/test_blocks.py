"""Which blocks FSDP shards: lit-distill's GPT, a Hugging Face Llama, named classes, and clear errors."""

import pytest
from torch import nn

from lit_distill.models import GPT
from lit_distill.sharding.blocks import blocks_of, find_block_classes


def test_gpt_blocks_are_found():
    model = GPT(n_layer=3, n_head=2, n_embd=16)
    classes = find_block_classes(model)
    assert [c.__name__ for c in classes] == ["Block"]
    assert blocks_of(model, classes) == list(model.blocks)


def test_hugging_face_decoder_layers_are_found():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    model = transformers.LlamaForCausalLM(cfg)
    classes = find_block_classes(model)
    assert [c.__name__ for c in classes] == ["LlamaDecoderLayer"]
    assert blocks_of(model, classes) == list(model.model.layers)


def test_repeated_layers_are_found_without_a_declaration():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(4, 4)
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3))
            self.short = nn.ModuleList([nn.Linear(4, 4)])

    model = Net()
    assert find_block_classes(model) == (nn.Sequential,)


def test_named_classes_win_and_unknown_names_are_refused_with_the_closest():
    model = GPT(n_layer=2, n_head=2, n_embd=16)
    assert find_block_classes(model, ["Attention"])[0].__name__ == "Attention"
    with pytest.raises(ValueError, match=r"\['Blok'\].*closest.*'Block'"):
        find_block_classes(model, ["Blok"])


def test_nothing_repeated_is_an_error_that_says_how_to_name_blocks():
    with pytest.raises(ValueError, match="block_classes"):
        find_block_classes(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


def test_nested_blocks_are_listed_once():
    outer = nn.ModuleList([nn.Sequential(nn.Sequential(nn.Linear(2, 2))) for _ in range(2)])
    found = blocks_of(outer, (nn.Sequential,))
    assert found == list(outer)
