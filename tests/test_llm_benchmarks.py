"""The LLM benchmark harness (benchmarks/llm_common.py, llm_loop.py, trl_gkd.py): sizes, FLOPs, data, CPU smoke runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lit_distill import DistillationModule
from lit_distill.losses import TokenKD
from tests.helpers import trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import llm_common as C  # noqa: E402
import llm_loop  # noqa: E402

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
        model = C.causal_lm(config, "meta")  # no storage: the 70B teacher is built in ~0.1 s
        assert sum(p.numel() for p in model.parameters()) == params == C.count_params(config)["total"]
    assert C.pair_shapes("b", teacher_layers=2, student_layers=3)[0].layers == 2
    with pytest.raises(ValueError, match="teacher_layers must be >= 1"):
        C.pair_shapes("a", teacher_layers=0)


def test_flops_per_token_equal_the_flop_counter_on_real_models():
    teacher_shape, student_shape = tiny(layers=3, hidden=48, heads=6, kv_heads=3), tiny()
    t_cfg, s_cfg = teacher_shape.config("eager"), student_shape.config("eager")  # eager: attention as matmuls
    teacher, student = C.causal_lm(t_cfg), C.causal_lm(s_cfg)
    batch, seq = 2, 24
    ids = C.synthetic_batch(batch, seq, 97)["input_ids"]
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
    data = C.SyntheticTokenData(batch_size=4, seq_len=16, vocab=50, seed=3)
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (4, 16)
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert 0 <= int(batch["input_ids"].min()) and int(batch["input_ids"].max()) < 50
    assert torch.equal(batch["input_ids"], C.synthetic_batch(4, 16, 50, seed=3)["input_ids"])
    assert torch.equal(data.dataset[2]["input_ids"], C.synthetic_row(2, 16, 50, seed=3))  # row = f(seed, index)
    assert not torch.equal(batch["input_ids"], C.synthetic_batch(4, 16, 50, seed=4)["input_ids"])
    masked = C.SyntheticTokens(2, 16, 50, attention_mask=True)[0]
    assert masked["attention_mask"].sum() == 16


def test_materialize_gives_a_meta_model_storage_and_a_llama_init():
    config = tiny().config()
    model = C.materialize(C.causal_lm(config, "meta"), "cpu", std=0.02)
    reference = C.causal_lm(config)
    assert not any(p.is_meta for p in model.parameters())
    assert torch.equal(model.model.norm.weight, torch.ones(32))
    assert torch.equal(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)
    out = model(C.synthetic_batch(2, 8, 97)["input_ids"]).logits
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("loss", ["fused", "full"])
def test_hand_loop_loss_equals_the_distillation_module_loss(loss):
    """The baseline optimises what DistillationModule + TokenKD(forward_kl) does, on the same models and batch."""
    torch.manual_seed(0)
    student, teacher = C.lit_lm(tiny().config()), C.lit_lm(tiny(layers=3).config())
    module = DistillationModule(student, teacher, losses=[TokenKD("forward_kl", fused=loss == "fused")])
    batch = C.synthetic_batch(2, 16, 97)
    module.train()
    total, _, _, _ = module.shared_step(batch)
    kd = llm_loop.StudentKD(student.model, teacher.model.lm_head, loss)
    with torch.no_grad():
        t_hidden = teacher.model.model(input_ids=batch["input_ids"]).last_hidden_state
    assert kd(batch["input_ids"], batch["labels"], t_hidden).item() == pytest.approx(total.item(), rel=1e-5)


def test_lit_lm_pair_trains_in_a_lightning_fit(tmp_path):
    torch.manual_seed(0)
    student, teacher = C.lit_lm(tiny().config()), C.lit_lm(tiny(layers=3).config())
    before = student.model.lm_head.weight.detach().clone()
    module = DistillationModule(student, teacher, losses=[TokenKD("forward_kl")], allow_untrained_teacher=True)
    trainer(tmp_path, max_steps=2).fit(module, datamodule=C.SyntheticTokenData(batch_size=2, seq_len=16, vocab=97))
    assert module.trainer.global_step == 2
    assert not torch.equal(before, student.model.lm_head.weight)


def run_script(argv, capsys, monkeypatch, main):
    monkeypatch.setattr(sys, "argv", argv)
    main()
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_hand_loop_smoke_fused_and_full_logits_agree(tmp_path, capsys, monkeypatch):
    rows = {}
    for loss in ("fused", "full"):
        out = tmp_path / f"{loss}.json"
        argv = ["llm_loop.py", "--smoke", "--device", "cpu", "--loss", loss, "--steps", "2", "--out", str(out)]
        rows[loss] = run_script(argv, capsys, monkeypatch, llm_loop.main)
        assert json.loads(out.read_text()) == rows[loss]
    row = rows["fused"]
    assert row["tokens"] == 2 * 2 * 32 and row["world_size"] == 1 and row["tokens_per_s"] > 0
    assert row["flops_per_token"]["total"] == row["flops_per_token"]["student"] + row["flops_per_token"]["teacher"]
    assert row["final_loss"] > 0
    assert rows["full"]["final_loss"] == pytest.approx(row["final_loss"], rel=1e-4)


def test_hand_loop_refuses_to_overwrite_its_output(tmp_path, monkeypatch):
    out = tmp_path / "result.json"
    out.write_text("keep")
    monkeypatch.setattr(sys, "argv", ["llm_loop.py", "--smoke", "--device", "cpu", "--out", str(out)])
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        llm_loop.main()
    assert out.read_text() == "keep"


def test_hand_loop_fsdp2_on_two_cpu_processes(tmp_path):
    out = tmp_path / "fsdp.json"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "benchmarks/llm_loop.py", "--smoke",
         "--fsdp", "--device", "cpu", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(out.read_text())
    assert row["world_size"] == 2 and row["run"].startswith("hand loop, fsdp2 x2")
    assert row["tokens"] == 2 * 2 * 2 * 32 and len(row["peak_gib_per_rank"]) == 2
    assert 0 < row["final_loss"] < 10


def test_trl_gkd_smoke(tmp_path):
    pytest.importorskip("trl", reason="TRL is no lit-distill dependency; benchmarks/trl_gkd.py needs trl==1.16")
    out = tmp_path / "trl.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/trl_gkd.py", "--smoke", "--cpu", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(out.read_text())
    assert "GKDTrainer" in row["run"] and row["tokens"] == 2 * 2 * 32 and row["tokens_per_s"] > 0
    assert 0 < row["train_loss"] < 10
