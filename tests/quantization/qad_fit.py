"""Run by tests/quantization/test_resume.py as a script: QAD fits in a fresh process (resume) and under DDP."""

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lit_distill.data import DigitsDataModule
from lit_distill.models import MLP
from lit_distill.quantization import QuantizationAwareDistillation, load_quantized
from lit_distill.quantization.qat import fake_quantized_layers
from tests.helpers import end_process_group, make_module

STEPS, START = 12, 3


class Wrapped(Callback):
    """The fake-quantized layers as the strategy's wrapper (DDP) holds them while training."""

    layers: list[str] = []

    def on_train_start(self, trainer, pl_module):
        Wrapped.layers = [type(trainer.strategy.model).__name__, *fake_quantized_layers(trainer.strategy.model)]


def run(root, callbacks=(), ckpt_path=None, devices=1, scheme="int8_dynamic_int4_weight", export=None):
    """12 optimizer steps of QAD on digits (a resumable data module: mid-epoch resumes see the same batches),
    fake quantization from step 3."""
    seed_everything(0)
    module = make_module(student=MLP(64, [32], 10), teacher=MLP(64, [64], 10))
    qad = QuantizationAwareDistillation(scheme, start_step=START, export=export is not None, path=export)
    trainer = Trainer(
        default_root_dir=str(root), accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        max_steps=STEPS, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=0, callbacks=[qad, *callbacks],
    )  # fmt: skip
    trainer.fit(module, DigitsDataModule(batch_size=32, seed=3), ckpt_path=ckpt_path)
    return module, trainer


def fsdp2(root: str, out: str) -> None:
    """QAD of a GPT under FSDP2 on 2 processes, fused TokenKD: the sharded blocks train fake-quantized."""
    from torch.distributed.tensor import DTensor

    from lit_distill.data import TextDataModule
    from lit_distill.losses import TokenKD
    from lit_distill.models import GPT

    seed_everything(0)
    gpt = lambda width: GPT(vocab_size=258, block_size=32, n_layer=2, n_head=2, n_embd=width, tokenizer_id="bytes")  # noqa: E731
    module = make_module(student=gpt(32), teacher=gpt(64), losses=[TokenKD(lm_weight=0.5)])
    qad = QuantizationAwareDistillation("int4_weight_only", group_size=16, export=False)
    trainer = Trainer(
        default_root_dir=root, accelerator="cpu", devices=2, strategy="fsdp2", max_steps=3, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
        callbacks=[qad],
    )  # fmt: skip
    before = {k: v.clone() for k, v in module.student.state_dict().items()}  # not sharded yet
    trainer.fit(module, TextDataModule(tokenizer="bytes", seq_len=32, batch_size=4, seed=0))
    qkv = module.student.blocks[0].attn.qkv
    after = {k: v.full_tensor() for k, v in module.student.state_dict().items()}
    try:
        qad.export_student(module, Path(root) / "int4")
        refused = ""
    except ValueError as err:
        refused = str(err)
    if trainer.global_rank == 0:
        result = {
            "steps": trainer.global_step,
            "layers": fake_quantized_layers(module.student),
            "sharded": isinstance(qkv.weight, DTensor),
            "trained": all(not torch.equal(after[k], before[k]) for k in before if "qkv" in k),
            "export_refused": refused,
        }
        Path(out).write_text(json.dumps(result))


def main(mode: str, root: str, out: str, ckpt: str | None = None) -> None:
    if mode == "fsdp2":
        return fsdp2(root, out)
    if mode == "resume":
        module, trainer = run(root, ckpt_path=ckpt)
    else:  # ddp: two processes, exported by rank 0
        module, trainer = run(root, callbacks=[Wrapped()], devices=2, export=root + "/int4")
    student = torch.cat([p.detach().flatten() for p in module.student.parameters()])
    gathered = trainer.strategy.all_gather(student) if trainer.world_size > 1 else student[None]
    if trainer.global_rank != 0:
        return
    result = {
        "steps": trainer.global_step,
        "layers": fake_quantized_layers(module.student),
        "wrapped_layers": Wrapped.layers,
        "in_sync": bool(all(torch.equal(gathered[0], g) for g in gathered)),
        "enabled": [m.enabled for n, m in module.student.named_modules() if n.endswith("weight_fake_quantizer")],
    }
    if mode == "ddp":
        reloaded = load_quantized(root + "/int4", model=MLP(64, [32], 10))
        x = torch.rand(8, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():  # the export is bf16: the same rounding of bf16 weights
            student = module.student.eval().to(torch.bfloat16)
            result["export_matches"] = bool(torch.equal(reloaded(x.bfloat16()), student(x.bfloat16())))
    torch.save({k: v.clone() for k, v in module.student.state_dict().items()}, out + ".pt")
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
    end_process_group()
