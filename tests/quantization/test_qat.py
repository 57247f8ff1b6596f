"""Fake quantization: which layers, what it computes (against a direct implementation), the switch, and that the
conversion computes exactly what training saw."""

import pytest
import torch
from torch import nn

from lit_distill.models import GPT
from lit_distill.quantization import quantize_model
from lit_distill.quantization.qat import (
    convert_qat,
    fake_quantized_layers,
    layers_to_quantize,
    prepare_qat,
    set_fake_quant,
)
from lit_distill.quantization.schemes import get_scheme

TRAINABLE = ["int8_dynamic_int4_weight", "int4_weight_only", "int8_weight_only"]


def gpt(**kw):
    torch.manual_seed(0)
    return GPT(vocab_size=258, block_size=32, n_layer=2, n_head=2, n_embd=64, **kw)


def symmetric_fake_quant(w, bits, group):
    """Textbook symmetric quantization: per group of ``group`` inputs (None: the whole row), scale = max|w| over
    half the integer range, values rounded to integers in [-2^(b-1), 2^(b-1)-1], then scaled back. Also returns
    where ``w / scale`` is a rounding tie (the group's extreme lands on k + 1/2), which float32 may round either way."""
    rows = w.reshape(w.shape[0], -1, group or w.shape[1]).double()
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = rows.abs().amax(-1, keepdim=True) / ((qmax - qmin) / 2)
    q = rows / scale
    tie = ((q - q.floor()) - 0.5).abs() < 1e-4
    return (torch.clamp(torch.round(q), qmin, qmax) * scale).reshape(w.shape), tie.reshape(w.shape)


@pytest.mark.parametrize("name,bits,group", [("int4_weight_only", 4, 32), ("int8_weight_only", 8, None)])
def test_weights_are_rounded_as_the_textbook_formula_says(name, bits, group):
    torch.manual_seed(1)
    layer = nn.Sequential(nn.Linear(64, 16))
    prepare_qat(layer, get_scheme(name), group_size=32)
    fq = layer[0].weight_fake_quantizer(layer[0].weight).double()
    expected, tie = symmetric_fake_quant(layer[0].weight.detach(), bits, group)
    close = (fq - expected).abs() <= 1e-6 * float(expected.abs().max())
    assert close[~tie].all() and tie.sum() <= fq.shape[0] * fq.shape[1] // (group or fq.shape[1])
    assert len(torch.unique(fq[0, :32])) <= 2**bits


def test_the_head_and_a_tied_embedding_stay_in_full_precision_unless_asked():
    names = layers_to_quantize(gpt(), get_scheme("int4_weight_only"))
    assert "head" not in names and len(names) == 8  # qkv, proj, 2 MLP layers per block
    assert "head" in layers_to_quantize(gpt(), get_scheme("int4_weight_only"), quantize_head=True)
    untied = layers_to_quantize(gpt(tie_weights=False), get_scheme("int4_weight_only"))
    assert "head" not in untied  # the LM head is left out whether or not it is tied


def test_skip_patterns_leave_layers_out():
    names = layers_to_quantize(gpt(), get_scheme("int4_weight_only"), skip=["blocks.0.*"])
    assert names and not any(n.startswith("blocks.0.") for n in names)


def test_a_group_size_that_does_not_divide_a_width_names_the_layer_and_the_fix():
    with pytest.raises(ValueError, match=r"group_size=48 .*blocks.0.attn.qkv \(64\).*skip"):
        layers_to_quantize(gpt(), get_scheme("int4_weight_only"), group_size=48)
    # a per-row scheme has no groups: any width is fine
    assert layers_to_quantize(gpt(), get_scheme("int8_weight_only"), group_size=48)


def test_a_model_without_linear_layers_is_refused():
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        layers_to_quantize(nn.Sequential(nn.Conv2d(1, 1, 3)), get_scheme("int4_weight_only"))


@pytest.mark.parametrize("name", TRAINABLE)
def test_prepare_keeps_parameters_and_names_and_gradients_flow(name):
    model = gpt()
    before = dict(model.named_parameters())
    keys = list(model.state_dict())
    prepared = prepare_qat(model, get_scheme(name))
    assert fake_quantized_layers(model) == prepared
    assert list(model.state_dict()) == keys
    assert all(p is before[n] for n, p in model.named_parameters())  # same objects: optimizers, DDP see no change
    model(torch.randint(0, 258, (2, 16))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "qkv" in n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", TRAINABLE)
def test_conversion_computes_what_fake_quantization_trained(name, dtype):
    model = gpt().to(dtype)
    x = torch.randint(0, 258, (2, 16))
    prepare_qat(model, get_scheme(name))
    with torch.no_grad():
        fake = model(x).float()
        convert_qat(model, get_scheme(name))
        real = model(x).float()
    assert not fake_quantized_layers(model)
    assert type(model.blocks[0].attn.qkv.weight).__name__ != "Parameter"
    # int4 schemes round identically; int8 weight-only differs only by its fp32 scale vs the weights' dtype
    tol = 0 if "int4" in name else 2e-2 * float(fake.abs().max())
    assert float((fake - real).abs().max()) <= tol


def test_switching_fake_quantization_off_computes_the_plain_model():
    plain, model = gpt(), gpt()
    prepare_qat(model, get_scheme("int8_dynamic_int4_weight"))
    x = torch.randint(0, 258, (2, 16))
    with torch.no_grad():
        assert not torch.equal(model(x), plain(x))
        set_fake_quant(model, False)
        assert torch.equal(model(x), plain(x))


def test_post_training_quantization_of_a_trained_qat_model_equals_its_conversion():
    scheme = get_scheme("int4_weight_only")
    trained = gpt()
    prepare_qat(trained, scheme)
    plain = gpt()
    plain.load_state_dict(trained.state_dict())  # what ExportPretrained writes: the same keys, full precision
    x = torch.randint(0, 258, (2, 16))
    with torch.no_grad():
        convert_qat(trained, scheme)
        quantize_model(plain, scheme)
        assert torch.equal(trained(x), plain(x))


def test_convert_without_prepare_is_refused():
    with pytest.raises(ValueError, match="no fake-quantized layer"):
        convert_qat(gpt(), get_scheme("int4_weight_only"))
