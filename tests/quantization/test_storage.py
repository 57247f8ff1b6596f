"""Quantized exports: int4 packed two values a byte, reloaded on the CPU computing what was saved."""

import json

import pytest
import torch

from lit_distill.models import GPT, MLP
from lit_distill.quantization import load_quantized, quantize_model, save_quantized
from lit_distill.quantization.schemes import get_scheme
from lit_distill.quantization.storage import _pack_int4, _unpack_int4, read_record


def gpt(width=64, layers=2):
    torch.manual_seed(0)
    return GPT(vocab_size=258, block_size=32, n_layer=layers, n_head=2, n_embd=width)


def quantized(model, name, dtype=torch.bfloat16):
    model.to(dtype)
    layers = quantize_model(model, get_scheme(name))
    return model, {"scheme": name, "group_size": 32, "layers": layers}


def test_int4_packing_round_trips_every_value():
    values = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)
    packed = _pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16)
    assert torch.equal(_unpack_int4(packed), values)
    with pytest.raises(ValueError, match="odd"):
        _pack_int4(torch.zeros(2, 3, dtype=torch.int8))


@pytest.mark.parametrize("name", ["int8_dynamic_int4_weight", "int4_weight_only", "int8_weight_only",
                                  "int8_dynamic_int8_weight"])  # fmt: skip
def test_a_quantized_gpt_reloads_from_its_folder_alone_and_computes_the_same(tmp_path, name):
    model, record = quantized(gpt(), name)
    save_quantized(model, tmp_path / "q", record)
    reloaded = load_quantized(tmp_path / "q")
    assert type(reloaded.blocks[0].attn.qkv.weight) is type(model.blocks[0].attn.qkv.weight)
    x = torch.randint(0, 258, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert read_record(tmp_path / "q")["scheme"] == name
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["layers"] == record["layers"]


def test_int4_export_is_at_most_035_of_the_bf16_file(tmp_path):
    plain = gpt(width=128, layers=4).to(torch.bfloat16)
    GPT.save_pretrained(plain, tmp_path / "bf16")
    model, record = quantized(gpt(width=128, layers=4), "int4_weight_only")
    save_quantized(model, tmp_path / "int4", record)
    size = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("bf16", "int4")}
    # ~0.30x for the blocks alone; the embeddings (one copy for the tied head) stay bf16
    assert size["int4"] <= 0.35 * size["bf16"]
    reloaded = load_quantized(tmp_path / "int4")
    assert reloaded.head.weight is reloaded.wte.weight  # the tie survives the single stored copy


def test_a_model_without_config_needs_its_architecture(tmp_path):
    torch.manual_seed(0)
    model, record = quantized(MLP(64, [32], 10), "int8_weight_only", torch.float32)
    save_quantized(model, tmp_path / "q", record)
    with pytest.raises(FileNotFoundError, match=r"load_quantized\(folder, model=MyStudent"):
        load_quantized(tmp_path / "q")
    reloaded = load_quantized(tmp_path / "q", model=MLP(64, [32], 10))
    x = torch.rand(4, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))


def test_a_non_empty_folder_is_not_overwritten_unless_asked(tmp_path):
    model, record = quantized(gpt(), "int4_weight_only")
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        save_quantized(model, tmp_path / "q", record)
    save_quantized(model, tmp_path / "q", record, overwrite=True)
    assert (tmp_path / "q" / "notes.txt").read_text() == "mine"


def test_a_plain_safetensors_file_is_not_taken_for_a_quantized_export(tmp_path):
    GPT.save_pretrained(gpt(), tmp_path / "plain")
    with pytest.raises(ValueError, match="not a lit-distill quantized export"):
        load_quantized(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_quantized(tmp_path / "missing")


def test_a_hugging_face_student_reloads_from_its_folder(tmp_path):
    pytest.importorskip("transformers")
    from lit_distill.models.hf import HFCausalLM

    config = dict(model_type="llama", vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                  tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    student = HFCausalLM(config=config, tokenizer_id="bytes")
    model, record = quantized(student, "int8_dynamic_int4_weight", torch.float32)  # bf16 would cast RoPE buffers
    assert "model.lm_head" not in record["layers"] and len(record["layers"]) == 7
    save_quantized(model, tmp_path / "q", record)
    reloaded = load_quantized(tmp_path / "q")
    assert reloaded.tokenizer_id == "bytes"
    x = torch.randint(0, 258, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["int8_dynamic_int4_weight", "int4_weight_only", "int8_weight_only"])
def test_an_export_reloads_on_the_gpu_and_computes_what_the_cpu_does(tmp_path, name):
    model, record = quantized(gpt(), name)
    save_quantized(model, tmp_path / "q", record)
    on_gpu = load_quantized(tmp_path / "q", device="cuda")
    x = torch.randint(0, 258, (2, 16))
    with torch.no_grad():
        cpu, gpu = model(x).float(), on_gpu(x.cuda()).float().cpu()
    assert torch.allclose(cpu, gpu, atol=0.05 * float(cpu.abs().max()))  # bf16 matmuls in another order
