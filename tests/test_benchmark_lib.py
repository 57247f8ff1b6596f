"""The benchmarks' shared helpers (benchmarks/_lib): model sizes, FLOPs, synthetic data, the library-built random
pairs, the clock on a Lightning fit, and the hand loop's loss against the module's. The scripts themselves run in
tests/test_benchmark_scripts.py."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._lib import llm as C
from benchmarks._lib.synthetic import SyntheticTokenData, SyntheticTokens, synthetic_batch, synthetic_row
from benchmarks._lib.timing import FitClock, mean_std_text
from benchmarks.scale import llm_loop
from lit_distill import DistillationModule
from lit_distill.losses import TokenKD
from lit_distill.models import MLP
from tests.helpers import trainer

transformers = pytest.importorskip("transformers")


def tiny(**overrides):
    shape = dict(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=48, vocab=97)
    return C.LlamaShape(**{**shape, **overrides})


@pytest.mark.parametrize(
    "config",
    [
        tiny().config(),
        tiny(tied=True).config(),
        tiny(kv_heads=4).config(attention_bias=True, mlp_bias=True),
        tiny().config(head_dim=12),  # attention width 48 != hidden 32
    ],
    ids=["gqa", "tied", "biases", "head_dim"],
)
def test_parameter_count_from_the_config_equals_the_built_model(config):
    model = transformers.LlamaForCausalLM(config)
    counts = C.count_params(config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["embedding"] == model.model.embed_tokens.weight.numel()
    layer = model.model.layers[0]
    assert counts["attention"] == config.num_hidden_layers * sum(p.numel() for p in layer.self_attn.parameters())
    assert counts["mlp"] == config.num_hidden_layers * sum(p.numel() for p in layer.mlp.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert counts["matmul"] == linear  # every Linear weight, the LM head included even when tied


def test_the_stated_pair_sizes_are_the_built_sizes():
    stated = {("a", 0): 1_498_482_688, ("a", 1): 384_320_512, ("b", 0): 70_553_706_496, ("b", 1): 1_235_814_400}
    for (pair, side), params in stated.items():
        config = C.PAIRS[pair][side].config()
        model = C.llama(C.PAIRS[pair][side], device=None)  # left empty: the 70B teacher is built in ~0.1 s
        assert sum(p.numel() for p in model.parameters()) == params == C.count_params(config)["total"]
    assert C.pair_shapes("b", teacher_layers=2, student_layers=3)[0].layers == 2
    with pytest.raises(ValueError, match="teacher_layers must be >= 1"):
        C.pair_shapes("a", teacher_layers=0)


def test_flops_per_token_equal_the_flop_counter_on_real_models():
    teacher_shape, student_shape = tiny(layers=3, hidden=48, heads=6, kv_heads=3), tiny()
    t_cfg, s_cfg = teacher_shape.config("eager"), student_shape.config("eager")  # eager: attention as matmuls
    teacher = C.llama(teacher_shape, attn_implementation="eager").model
    student = C.llama(student_shape, attn_implementation="eager").model
    batch, seq = 2, 24
    ids = synthetic_batch(batch, seq, 97)["input_ids"]
    with FlopCounterMode(display=False) as count_student:
        student(ids).logits.float().pow(2).mean().backward()
    with FlopCounterMode(display=False) as count_teacher, torch.no_grad():
        teacher(ids)
    flops = C.flops_per_token(s_cfg, t_cfg, seq)
    assert flops["student"] * batch * seq == count_student.get_total_flops()
    assert flops["teacher"] * batch * seq == count_teacher.get_total_flops()
    causal = C.flops_per_token(s_cfg, t_cfg, seq, causal=True)
    attention = 3 * 4 * 2 * 32 * seq + 4 * 3 * 48 * seq  # student fwd+bwd, teacher fwd: 4 * L * d * T each
    assert flops["total"] - causal["total"] == attention // 2


def test_mfu_against_the_datasheet_peak():
    assert C.mfu(100_000, 4.0e9) == pytest.approx(4.0e14 / 989.5e12)
    assert C.mfu(200_000, 4.0e9, n_gpus=2) == pytest.approx(4.0e14 / 989.5e12)
    with pytest.raises(ValueError, match="n_gpus >= 1"):
        C.mfu(1.0, 1.0, n_gpus=0)


def test_synthetic_tokens_are_seeded_rows_with_labels_equal_to_inputs():
    data = SyntheticTokenData(batch_size=4, seq_len=16, vocab=50, seed=3)
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (4, 16)
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert 0 <= int(batch["input_ids"].min()) and int(batch["input_ids"].max()) < 50
    assert torch.equal(batch["input_ids"], synthetic_batch(4, 16, 50, seed=3)["input_ids"])
    assert torch.equal(data.dataset[2]["input_ids"], synthetic_row(2, 16, 50, seed=3))  # row = f(seed, index)
    assert not torch.equal(batch["input_ids"], synthetic_batch(4, 16, 50, seed=4)["input_ids"])
    masked = SyntheticTokens(2, 16, 50, attention_mask=True)[0]
    assert masked["attention_mask"].sum() == 16


def test_random_pairs_are_built_by_the_library_and_filled_like_a_llama_init():
    """``llama()`` builds through ``HFCausalLM(config=..., empty_init=True)`` and fills with the library's own init:
    norm scales 1, matrices N(0, 0.02), rotary buffers as a normally built model has them."""
    model = C.llama(tiny(), "cpu")
    reference = transformers.LlamaForCausalLM(tiny().config())
    assert not any(p.is_meta for p in model.parameters()) and model.tokenizer_id == C.TOKENIZER_ID
    assert torch.equal(model.model.model.norm.weight, torch.ones(32))
    assert torch.equal(model.model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    assert model.model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.isfinite(model(synthetic_batch(2, 8, 97)["input_ids"])).all()
    assert C.llama(tiny(), "cpu", "bf16").model.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("loss", ["fused", "full"])
def test_hand_loop_loss_equals_the_distillation_module_loss(loss):
    """The baseline optimises what DistillationModule + TokenKD(forward_kl) does, on the same models and batch."""
    torch.manual_seed(0)
    student, teacher = C.llama(tiny()), C.llama(tiny(layers=3))
    module = DistillationModule(student, teacher, losses=[TokenKD("forward_kl", fused=loss == "fused")])
    batch = synthetic_batch(2, 16, 97)
    module.train()
    total, _, _, _ = module.shared_step(batch)
    kd = llm_loop.StudentKD(student.model, teacher.model.lm_head, loss)
    with torch.no_grad():
        t_hidden = teacher.model.model(input_ids=batch["input_ids"]).last_hidden_state
    assert kd(batch["input_ids"], batch["labels"], t_hidden).item() == pytest.approx(total.item(), rel=1e-5)


def test_random_pair_trains_in_a_lightning_fit(tmp_path):
    torch.manual_seed(0)
    student, teacher = C.llama(tiny()), C.llama(tiny(layers=3))
    before = student.model.lm_head.weight.detach().clone()
    module = DistillationModule(student, teacher, losses=[TokenKD("forward_kl")], allow_untrained_teacher=True)
    trainer(tmp_path, max_steps=2).fit(module, datamodule=SyntheticTokenData(batch_size=2, seq_len=16, vocab=97))
    assert module.trainer.global_step == 2
    assert not torch.equal(before, student.model.lm_head.weight)


def test_fit_clock_marks_the_window_the_steps_and_the_epochs(tmp_path):
    """Five steps with two of warm-up: three timed steps; every step marked; samples counted per epoch."""
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    clock = FitClock(warmup=2, per_step=True, per_epoch=True)
    module = DistillationModule(MLP(4, [8], 3), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    trainer(tmp_path, max_steps=5, callbacks=[clock]).fit(module, train_dataloaders=loader)
    assert clock.timed_steps == 3 and len(clock.losses) == 5 and clock.seconds > 0
    assert len(clock.step_ms()) == 4 and clock.epoch_samples == [40] and len(clock.epoch_rates(cpu=True)) == 1


def test_mean_std_text():
    assert mean_std_text([1.0, 2.0, 3.0]) == "2.000 ± 1.000" and mean_std_text([2.5]) == "2.500"
