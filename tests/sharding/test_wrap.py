"""How models are wrapped: which blocks FSDP shards (lit-distill's GPT, a Hugging Face Llama, named classes, clear
errors), and the speed settings applied with it (inputs cast / channels-last, compile options)."""

import pytest
import torch
from torch import nn

from lit_distill.models import GPT
from lit_distill.sharding.wrap import blocks_of, compile_in_place, find_block_classes, prepare_input, uses_cuda_graphs


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


def test_inputs_are_cast_and_made_channels_last_only_when_floating_point():
    image = prepare_input(torch.zeros(2, 3, 4, 4), torch.bfloat16, True)
    assert image.dtype == torch.bfloat16 and image.is_contiguous(memory_format=torch.channels_last)
    assert prepare_input(torch.zeros(2, 3, 4, 4), None, False).is_contiguous()
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert prepare_input(ids, torch.bfloat16, True) is ids and prepare_input("text", None, True) == "text"


class Recorder(nn.Module):
    def compile(self, **options):
        self.options = options


@pytest.mark.parametrize(
    ("setting", "options", "graphs"),
    [(True, {}, False), ({"mode": "reduce-overhead"}, {"mode": "reduce-overhead"}, True),
     ({"mode": "max-autotune"}, {"mode": "max-autotune"}, True), ({"dynamic": True}, {"dynamic": True}, False)],
)  # fmt: skip
def test_compile_in_place_passes_its_options_and_says_when_cuda_graphs_record(setting, options, graphs):
    student, teacher = Recorder(), Recorder()
    assert compile_in_place((student, teacher, None), setting) is graphs == uses_cuda_graphs(setting)
    assert student.options == teacher.options == options
