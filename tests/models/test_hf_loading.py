"""Building Hugging Face models: the optional fused kernels (Liger) and their refusals."""

import importlib.util
import sys

import pytest
import torch

pytest.importorskip("transformers")

from lit_distill.models.hf import HFCausalLM  # noqa: E402

LLAMA = {
    "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
}  # fmt: skip
HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None


def test_an_unknown_kernel_set_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"kernels must be one of \['liger'\] or null, got 'fast'"):
        HFCausalLM(config=LLAMA, kernels="fast")


def test_liger_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'lit-distill\[liger\]'"):
        HFCausalLM(config=LLAMA, kernels="liger")


@pytest.mark.skipif(not HAS_LIGER, reason="liger-kernel is not installed")
def test_liger_refuses_a_model_family_it_has_no_kernels_for_and_cpu_inputs():
    with pytest.raises(ValueError, match="no kernels for model type 'gpt2'"):
        HFCausalLM(
            config={"model_type": "gpt2", "vocab_size": 64, "n_embd": 32, "n_layer": 1, "n_head": 2}, kernels="liger"
        )
    model = HFCausalLM(config=LLAMA, kernels="liger")
    with pytest.raises(ValueError, match="runs on CUDA only; the inputs are on cpu"):
        model(torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_LIGER and torch.cuda.is_available()), reason="needs CUDA and liger-kernel")
def test_liger_kernels_give_the_same_logits_and_gradients_as_the_plain_model():
    torch.manual_seed(0)
    plain = HFCausalLM(config=LLAMA).cuda()
    fused = HFCausalLM(config=LLAMA, kernels="liger").cuda()
    fused.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 64, (2, 16), device="cuda")
    a, b = plain(ids), fused(ids)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    a.float().square().mean().backward()
    b.float().square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)
