"""Run by tests/generation/test_onpolicy_ddp.py as a script: on-policy distillation on 2 CPU processes (gloo);
Lightning's DDP launcher re-executes it once per rank. Writes what each rank sampled, and whether the students
stayed in sync."""

import json
import sys

import torch
from lightning.pytorch import Trainer, seed_everything

from lit_distill.data import PromptDataModule
from lit_distill.generation import OnPolicyDistillationModule
from lit_distill.losses import TokenKD
from lit_distill.models import GPT
from tests.helpers import end_process_group


class Recording(OnPolicyDistillationModule):
    """Keeps the prompts (token ids) and sampled continuations of every sampled batch on this rank."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.record = []

    def sample_batch(self, batch, seed=None):
        sampled = super().sample_batch(batch, seed)
        if self.training:
            for ids, labels in zip(sampled["input_ids"].tolist(), sampled["labels"].tolist()):
                start = next(i for i, label in enumerate(labels) if label != -100)
                self.record.append({"prompt": ids[:start], "sample": [t for t in labels if t != -100]})
        return sampled


def main(out: str) -> None:
    seed_everything(0)
    gpt = dict(block_size=64, n_layer=1, n_head=2, tokenizer_id="bytes")
    module = Recording(
        student=GPT(n_embd=16, **gpt), teacher=GPT(n_embd=32, **gpt), losses=[TokenKD(divergence="jsd")],
        lmbda=1.0, max_new_tokens=6, allow_untrained_teacher=True,  # random GPTs: the test checks the sampling
    )  # fmt: skip
    data = PromptDataModule(prompt_chars=20, response_chars=16, seq_len=48, batch_size=4, max_prompts=40)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=3, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    records = [None, None]
    torch.distributed.all_gather_object(records, module.record)
    student = torch.cat([p.detach().flatten() for p in module.student.parameters()])
    gathered = trainer.strategy.all_gather(student)
    if trainer.global_rank == 0:
        result = {"records": records, "in_sync": bool(torch.equal(gathered[0], gathered[1]))}
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
    end_process_group()
