"""Run by tests/sharding/test_fsdp2.py as a script on 2 CPU processes (gloo): Lightning's launcher re-executes it
per rank. FSDP2 end to end through ``--trainer.strategy fsdp2``: sharding, frozen teacher, sharded checkpoint
without the teacher, exact resume, export, and parity of one sharded step with one single-process step."""

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

from lit_distill import DistillationModule
from lit_distill.data import TextDataModule
from lit_distill.losses import TokenKD
from lit_distill.models import GPT
from lit_distill.sharding import FSDP2Strategy
from lit_distill.sharding.fill import full_state_dict
from tests.helpers import end_process_group


def gpt(width: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab_size=258, block_size=32, n_layer=2, n_head=2, n_embd=width, tokenizer_id="bytes")


def module(student_seed: int = 0, **kwargs) -> DistillationModule:
    kwargs.setdefault("losses", [TokenKD(lm_weight=0.5)])  # fused path: hidden states + LM heads
    kwargs.setdefault("allow_untrained_teacher", True)  # random GPTs: the tests compare sharded with unsharded
    return DistillationModule(student=gpt(16, student_seed), teacher=gpt(32, 100), **kwargs)


def hf_teacher_module(folder: Path, rank: int) -> DistillationModule:
    """A tiny Llama saved with save_pretrained (rank 0 writes it, the others wait), then read with empty_init."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_distill.models.hf import HFCausalLM

    if rank == 0 and not folder.exists():
        torch.manual_seed(11)
        config = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(folder)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    teacher = HFCausalLM(path=str(folder), empty_init=True, tokenizer_id="bytes")
    return DistillationModule(student=gpt(16, 0), teacher=teacher, losses=[TokenKD()])


def trainer(root: Path, **kwargs) -> Trainer:
    kwargs = {
        "accelerator": "cpu", "devices": 2, "strategy": "fsdp2", "logger": False, "enable_progress_bar": False,
        "enable_model_summary": False, "limit_val_batches": 0, "limit_train_batches": 3, "default_root_dir": root,
        **kwargs,
    }  # fmt: skip
    return Trainer(**kwargs)


def data() -> TextDataModule:
    return TextDataModule(tokenizer="bytes", seq_len=32, batch_size=4, seed=0)


def main(out: Path) -> None:
    result: dict = {}
    seed_everything(0)
    first = module()
    teacher_before = {k: v.clone() for k, v in first.teacher.state_dict().items()}
    ckpt = ModelCheckpoint(dirpath=out / "ck", save_last=True)
    run = trainer(out, max_epochs=1, callbacks=[ckpt])
    run.fit(first, data())
    head = first.student.head.weight
    result["student_sharded"] = isinstance(head, DTensor) and head.to_local().shape[0] < head.shape[0]
    result["teacher_sharded"] = all(isinstance(p, DTensor) for p in first.teacher.parameters())
    result["teacher_frozen"] = not any(p.requires_grad for p in first.teacher.parameters())
    result["teacher_eval"] = not any(m.training for m in first.teacher.modules())
    teacher_after = {k: v.full_tensor() for k, v in first.teacher.state_dict().items()}
    result["teacher_unchanged"] = all(torch.equal(teacher_after[k], v) for k, v in teacher_before.items())
    keys = FileSystemReader(str(out / "ck" / "last.ckpt")).read_metadata().state_dict_metadata
    result["checkpoint_teacher_keys"] = sorted(k for k in keys if ".teacher." in k or k.startswith("teacher."))
    result["checkpoint_student_keys"] = sum(k.startswith("state_dict.student.") for k in keys)

    seed_everything(0)
    straight = module()
    trainer(out, max_epochs=2, enable_checkpointing=False).fit(straight, data())
    straight_state = full_state_dict(straight.student)

    seed_everything(0)
    resumed = module(student_seed=7)  # other initial weights: everything must come from the checkpoint
    trainer(out, max_epochs=2, enable_checkpointing=False).fit(resumed, data(), ckpt_path=out / "ck" / "last.ckpt")
    resumed_state = full_state_dict(resumed.student)
    exported = resumed.export_student(out / "student.safetensors")

    whole = module()  # save_distributed_checkpoint=False: rank 0 writes one file with the gathered student
    full_ckpt = ModelCheckpoint(dirpath=out / "full")
    strategy = FSDP2Strategy(save_distributed_checkpoint=False)
    trainer(out, max_steps=2, strategy=strategy, callbacks=[full_ckpt]).fit(whole, data())
    whole_state = full_state_dict(whole.student)

    # A teacher built empty from a Hugging Face folder: each rank reads only its rows of the safetensors file.
    big = hf_teacher_module(out / "teacher_hf", run.global_rank)
    trainer(out, max_steps=1, enable_checkpointing=False).fit(big, data())
    layer_params = list(big.teacher.model.model.layers.parameters())  # the root (embedding, head) stays gathered
    result["hf_teacher_sharded"] = all(
        isinstance(p, DTensor) and p.to_local().shape[0] < p.shape[0] for p in layer_params
    )
    hf_loaded = full_state_dict(big.teacher)

    parity = module(optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    ids = torch.randint(0, 258, (8, 32), generator=torch.Generator().manual_seed(3))
    loader = DataLoader([{"input_ids": r, "labels": r} for r in ids], batch_size=4)
    trainer(out, max_steps=1, enable_checkpointing=False, limit_train_batches=None).fit(parity, loader)
    parity_state = full_state_dict(parity.student)

    # The plan's options change how the step runs, not what it computes: the same step, replicated teacher,
    # recomputed student activations, student blocks kept gathered until backward.
    planned = {}
    for name, options in {
        "replicate+checkpointing+kept": {"teacher": "replicate", "activation_checkpointing": True,
                                         "reshard_after_forward": False},
    }.items():  # fmt: skip
        variant = module(optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
        strategy = FSDP2Strategy(**options)
        trainer(out, max_steps=1, enable_checkpointing=False, limit_train_batches=None, strategy=strategy).fit(
            variant, loader
        )
        planned[name] = full_state_dict(variant.student)
        result["checkpoint_wrapped_blocks"] = sum(
            type(m).__name__ == "CheckpointWrapper" for m in variant.student.modules()
        )
        result["replicated_teacher_plain"] = not any(isinstance(p, DTensor) for p in variant.teacher.parameters())

    if run.global_rank == 0:
        result["resume_max_diff"] = max(float((straight_state[k] - v).abs().max()) for k, v in resumed_state.items())
        result["resume_keys"] = sorted(resumed_state) == sorted(straight_state)
        result["exported"] = str(exported)
        torch.save(resumed_state, out / "resumed.pt")
        torch.save(parity_state, out / "parity.pt")
        torch.save(planned, out / "planned.pt")
        torch.save(whole_state, out / "whole.pt")
        torch.save(hf_loaded, out / "hf_loaded.pt")
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    end_process_group()
