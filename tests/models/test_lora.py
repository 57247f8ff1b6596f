"""LoRA students through peft: only the adapters train, the teacher is untouched, both exports reload."""

import copy
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lit_distill import DistillationModule
from lit_distill.data import PromptDataModule
from lit_distill.losses import TokenKD
from lit_distill.models.hf import HFCausalLM, export_pretrained
from tests.configs.test_text_configs import make_tiny_hf_models

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["def f(x): return x + 1", "The assert statement checks a condition.", "Lists hold items."] * 20


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tiny = make_tiny_hf_models()
    root = tmp_path_factory.mktemp("lora")
    tokenizer = tiny.build_tokenizer(300, texts=TEXTS)
    for name, shape, seed in (("teacher", tiny.TEACHER, 0), ("student", tiny.STUDENT, 1)):
        tiny.build_model(tokenizer, **shape, seed=seed, positions=64).save_pretrained(str(root / name))
        tokenizer.save_pretrained(str(root / name))
    return root


def lora_student(models, **kwargs):
    from lit_distill.models.lora import LoRACausalLM

    torch.manual_seed(0)
    return LoRACausalLM(str(models / "student"), r=4, alpha=8, **kwargs)


def fit(module, models, steps=3):
    data = PromptDataModule(
        tokenizer=str(models / "student"), prompt_chars=24, response_chars=16, seq_len=56, batch_size=4, max_prompts=24
    )
    trainer = Trainer(
        accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return trainer


def test_only_the_adapters_train_on_the_fused_token_kd_path(models):
    student = lora_student(models)
    teacher = HFCausalLM(str(models / "teacher"))
    module = DistillationModule(student=student, teacher=teacher, losses=[TokenKD(divergence="forward_kl")])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = copy.deepcopy(teacher.state_dict())
    trainer = fit(module, models)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    names = {n for n, p in student.named_parameters() if id(p) in optimized}
    assert names and all("lora_" in n for n in names)
    assert names == {n for n, p in student.named_parameters() if "lora_" in n}  # every adapter, nothing else
    after = student.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if "lora_" not in k)  # frozen base
    assert any(not torch.equal(after[k], v) for k, v in before.items() if "lora_B" in k)  # B starts at 0
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert not any("lora" in n for n, _ in teacher.named_parameters())
    assert module.training and module._use_hidden()  # training went through forward_hidden + the LM head
    ids = torch.tensor([[5, 6, 7, 8]])
    student.eval()  # no dropout
    with torch.no_grad():
        fused = student.get_output_embeddings()(student.forward_hidden(ids))
        torch.testing.assert_close(fused, student(ids))


def test_on_policy_path_trains_the_adapters(models):
    from lit_distill.generation import OnPolicyDistillationModule

    student = lora_student(models)
    module = OnPolicyDistillationModule(
        student=student, teacher=HFCausalLM(str(models / "teacher")), lmbda=1.0, max_new_tokens=6
    )
    before = {k: v.clone() for k, v in student.state_dict().items() if "lora_B" in k}
    trainer = fit(module, models, steps=2)
    assert float(trainer.callback_metrics["train/sampled"]) == 1.0 and student.block_size == 64
    long = {"input_ids": torch.full((1, 62), 5), "labels": torch.full((1, 62), -100)}
    long["labels"][0, -1] = 5  # a 61-token prompt: 6 new tokens would pass the 64 positions
    assert module.eval().sample_batch(long, seed=0)["input_ids"].shape[1] <= 64
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in before.items())


def test_export_writes_a_merged_model_and_the_adapter_that_both_reload(models, tmp_path):
    student = lora_student(models)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # a trained-looking adapter, so merging changes the weights
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    expected = student.eval()(ids)
    folder = export_pretrained(student, tmp_path / "student")
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=1e-5)
    base = transformers.AutoModelForCausalLM.from_pretrained(str(models / "student"))
    adapted = peft.PeftModel.from_pretrained(base, str(folder / "adapter")).eval()
    torch.testing.assert_close(adapted(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    plain = HFCausalLM(str(models / "student")).eval()(ids)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter matters
    again = lora_student(models, adapter=str(folder / "adapter")).eval()
    torch.testing.assert_close(again(ids), expected, atol=1e-5, rtol=1e-5)
    assert student.model.peft_config  # exporting left the training model's adapters in place
