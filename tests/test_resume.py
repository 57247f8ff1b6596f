"""Stopping mid-epoch and resuming gives the same student as an uninterrupted run."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lit_distill.data import DigitsDataModule
from tests.helpers import make_module
from tests.test_ddp import lit_distill


class StopAt(Callback):
    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True  # a preemption right after the checkpoint


def digits():
    return make_module(), DigitsDataModule(batch_size=64, seed=3)


def text():
    from lit_distill.data import TextDataModule
    from lit_distill.losses import TokenKD
    from lit_distill.models import GPT

    def gpt(layers):
        return GPT(block_size=32, n_layer=layers, n_head=2, n_embd=32, tokenizer_id="bytes")

    module = make_module(student=gpt(1), teacher=gpt(2), losses=[TokenKD(lm_weight=0.5)])
    return module, TextDataModule(seq_len=32, batch_size=8, max_blocks=160, seed=3)


def run(tmp_path, ckpt_path=None, callbacks=(), recipe=digits):
    seed_everything(0)
    module, data = recipe()
    trainer = Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
        limit_val_batches=0,
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("recipe", [digits, text], ids=["digits", "text"])
def test_mid_epoch_resume_matches_uninterrupted_run(tmp_path, recipe):
    full, full_trainer = run(tmp_path, recipe=recipe)
    steps_per_epoch = full_trainer.num_training_batches
    stop = steps_per_epoch + steps_per_epoch // 2  # in the middle of the second epoch
    ckpt = tmp_path / "mid.ckpt"
    interrupted, t = run(tmp_path, callbacks=[StopAt(stop, ckpt)], recipe=recipe)
    assert t.global_step == stop and ckpt.exists()
    resumed, resumed_trainer = run(tmp_path, ckpt_path=str(ckpt), recipe=recipe)
    assert resumed_trainer.global_step == full_trainer.global_step
    for (name, a), b in zip(full.student.named_parameters(), resumed.student.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    # The teacher was not in the checkpoint and still equals its source.
    assert not any(k.startswith("teacher.") for k in torch.load(ckpt, weights_only=True)["state_dict"])


# ---------------------------------------------------------------------------------------------------------------
# The LLM recipe under fsdp2 through the `lit-distill` command, each leg a new process, as a user resumes a run.

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "llm" / "token_kd.yaml")


@pytest.fixture(scope="module")
def llm_teacher(tmp_path_factory) -> Path:
    """A tiny Llama saved with save_pretrained: the recipe reads it with empty_init, shard by shard."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("llm") / "teacher"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False, tokenizer_id="bytes")  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def fsdp2_recipe(work: Path, teacher: Path, devices: int, *flags: str) -> Path:
    """`lit-distill fit` of the LLM recipe on ``devices`` CPU processes in a fresh ``work`` folder; the checkpoints
    land in work/checkpoints and the exported student in work/lightning_logs/version_0/student."""
    work.mkdir()
    lit_distill(
        work, "fit", "--config", RECIPE, f"--model.init_args.teacher.init_args.path={teacher}",
        "--data.init_args.seq_len=32", "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
        "--trainer.strategy=fsdp2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=2", f"--trainer.default_root_dir={work}", *flags,
    )  # fmt: skip
    return work


KEEP_EVERY_CHECKPOINT = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                         "--trainer.callbacks.init_args.save_top_k=-1"]  # fmt: skip


def checkpoint_at(work: Path, step: int) -> Path:
    (path,) = (work / "checkpoints").glob(f"*step={step}.ckpt")
    return path


def exported(work: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(work / "lightning_logs" / "version_0" / "student" / "model.safetensors"))


def assert_same_student(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_fsdp2_on_one_device_resumes_mid_epoch_from_a_validation_checkpoint(tmp_path, llm_teacher):
    """The checkpoint that val_check_interval writes in the middle of an epoch, resumed by a new process: the
    run goes on where it stopped (same student as the uninterrupted run), the sampler is not Lightning-wrapped."""
    every = ["--trainer.val_check_interval=5", "--trainer.max_steps=16"]
    straight = fsdp2_recipe(tmp_path / "straight", llm_teacher, 1, *every, *KEEP_EVERY_CHECKPOINT)
    ckpt = checkpoint_at(straight, 10)
    assert ckpt.is_dir()  # sharded: a folder of shards, as on N devices
    resumed = fsdp2_recipe(tmp_path / "resumed", llm_teacher, 1, *every, f"--ckpt_path={ckpt}")
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["epoch=0-step=15.ckpt"]
    assert_same_student(exported(resumed), exported(straight))


@pytest.mark.slow
def test_fsdp2_on_two_processes_resumes_mid_epoch_and_at_epoch_end_then_exports_a_loadable_student(
    tmp_path, llm_teacher
):
    """The cycle a user runs: train, resume from a checkpoint written mid-epoch and from one written at the end
    of an epoch (each a new pair of processes), export, reload the student with transformers' from_pretrained.
    Each resumed run ends with the student of the uninterrupted run."""
    from transformers import AutoModelForCausalLM

    short = ["--trainer.limit_train_batches=6", "--trainer.max_epochs=2", "--trainer.val_check_interval=3"]
    straight = fsdp2_recipe(tmp_path / "straight", llm_teacher, 2, *short, *KEEP_EVERY_CHECKPOINT)
    for step in (3, 6):  # mid-epoch; the last batch of epoch 0
        resumed = fsdp2_recipe(tmp_path / f"from{step}", llm_teacher, 2, *short,
                               f"--ckpt_path={checkpoint_at(straight, step)}")  # fmt: skip
        checkpoint_at(resumed, 12)
        assert_same_student(exported(resumed), exported(straight))
    reloaded = AutoModelForCausalLM.from_pretrained(resumed / "lightning_logs" / "version_0" / "student")
    assert_same_student({k: v for k, v in reloaded.state_dict().items() if k in exported(resumed)}, exported(resumed))
    assert reloaded(torch.tensor([[104, 105, 32, 116]])).logits.shape == (1, 4, 258)
