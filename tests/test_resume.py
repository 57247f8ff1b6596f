"""Stopping mid-epoch and resuming gives the same student as an uninterrupted run."""

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything

from lit_distill.cli import main
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


def run_in(work: Path, *args: str) -> subprocess.CompletedProcess:
    """`lit-distill fit ARGS` on CPU processes in a fresh ``work`` folder (its run folder: :func:`run_folder`)."""
    work.mkdir()
    return lit_distill(work, "fit", *args, "--trainer.accelerator=cpu", "--trainer.logger=false",
                       "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={work}")  # fmt: skip


def fsdp2_recipe(work: Path, teacher: Path, *flags: str) -> Path:
    """The LLM recipe as shipped under fsdp2 on one device, its teacher read from ``teacher``."""
    run_in(work, "--config", RECIPE, f"--model.init_args.teacher.init_args.path={teacher}", "--trainer.devices=1",
           "--trainer.strategy=fsdp2", "--data.init_args.seq_len=32", "--trainer.limit_val_batches=2",
           *flags)  # fmt: skip
    return work


KEEP_EVERY_CHECKPOINT = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                         "--trainer.callbacks.init_args.save_top_k=-1"]  # fmt: skip


def run_folder(work: Path) -> Path:
    """Where a logger-less run in ``work`` writes its checkpoints and exported student."""
    return work / "lightning_logs" / "version_0"


def checkpoint_at(work: Path, step: int) -> Path:
    (path,) = (run_folder(work) / "checkpoints").glob(f"*step={step}.ckpt")
    return path


def exported(work: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_folder(work) / "student" / "model.safetensors"))


def assert_same_student(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_fsdp2_on_one_device_resumes_mid_epoch_from_a_validation_checkpoint(tmp_path, llm_teacher):
    """The checkpoint that val_check_interval writes in the middle of an epoch, resumed by a new process: the
    run goes on where it stopped (same student as the uninterrupted run), the sampler is not Lightning-wrapped."""
    every = ["--trainer.val_check_interval=5", "--trainer.max_steps=16"]
    straight = fsdp2_recipe(tmp_path / "straight", llm_teacher, *every, *KEEP_EVERY_CHECKPOINT)
    ckpt = checkpoint_at(straight, 10)
    assert ckpt.is_dir()  # sharded: a folder of shards, as on N devices
    resumed = fsdp2_recipe(tmp_path / "resumed", llm_teacher, *every, f"--ckpt_path={ckpt}")
    assert [p.name for p in (run_folder(resumed) / "checkpoints").iterdir()] == ["epoch=0-step=15.ckpt"]
    assert_same_student(exported(resumed), exported(straight))


def scaling_doc_block(after: str, language: str) -> str:
    """The first ``language`` code block of docs/scaling.md after the text ``after``."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    return text.split(after, 1)[1].split(f"```{language}\n", 1)[1].split("```", 1)[0]


def documented_pair_command(widths: dict[str, dict[str, int]]) -> list[str]:
    """The arguments after `lit-distill fit` of docs/scaling.md's random-weights 70B command, its models shrunk to
    ``widths`` (teacher, student)."""
    block = scaling_doc_block("<!-- pair-b-random", "bash")
    args = shlex.split(block.replace("\\\n", " "))
    assert args[:2] == ["lit-distill", "fit"], block
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        if flag == "--model.init_args.teacher":
            spec = json.loads(value)
            spec["init_args"]["config"].update(widths["teacher"])
            args[i] = f"{flag}={json.dumps(spec)}"
        elif flag == "--model.init_args.student.init_args.config":
            args[i] = f"{flag}={json.dumps({**json.loads(value), **widths['student']})}"
        elif arg.startswith("configs/"):
            args[i] = str(ROOT / arg)
    return args[2:]


TOY = {
    "teacher": {"vocab_size": 258, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64},
    "student": {"vocab_size": 258, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64},
}  # fmt: skip


@pytest.mark.slow
def test_the_documented_70b_command_at_toy_widths_resumes_on_two_processes_and_exports_a_loadable_student(tmp_path):
    """docs/scaling.md's pair command (teacher built empty in bf16 and filled shard by shard, fsdp2 on 2 processes),
    with toy widths: resumed in new processes from a checkpoint written mid-epoch and from one written at the last
    batch of an epoch, each run ends with the uninterrupted run's student; a 2-process checkpoint resumes on one
    process too (weights re-sharded as they load); the export reloads with transformers' from_pretrained."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from lit_distill.weights import read_state_dict

    command = documented_pair_command(TOY)
    short = [*command, "--data.init_args.seq_len=32", "--data.init_args.batch_size=4", "--trainer.max_steps=-1",
             "--trainer.limit_train_batches=6", "--trainer.max_epochs=2", "--trainer.val_check_interval=3"]  # fmt: skip
    straight = tmp_path / "straight"
    run_in(straight, *short, *KEEP_EVERY_CHECKPOINT)
    for step in (3, 6):  # mid-epoch; the last batch of epoch 0
        resumed = tmp_path / f"from{step}"
        run_in(resumed, *short, f"--ckpt_path={checkpoint_at(straight, step)}")
        checkpoint_at(resumed, 12)
        assert_same_student(exported(resumed), exported(straight))
    reloaded = AutoModelForCausalLM.from_pretrained(run_folder(resumed) / "student")
    assert_same_student({k: v for k, v in reloaded.state_dict().items() if k in exported(resumed)}, exported(resumed))
    assert reloaded(torch.tensor([[104, 105, 32, 116]])).logits.shape == (1, 4, 258)

    # The weights of a 2-process checkpoint, resumed on one process without another step, are those it saved.
    one = tmp_path / "one"
    run = run_in(
        one, *short, "--trainer.devices=1", "--trainer.max_steps=3", f"--ckpt_path={checkpoint_at(straight, 3)}"
    )
    assert "resuming on 1 data-parallel rank(s) a run saved on 2" in run.stderr
    saved = read_state_dict(checkpoint_at(straight, 3))
    assert_same_student(exported(one), {k: saved[f"student.model.{k}"] for k in exported(one)})


def test_the_documented_70b_overlay_gives_the_recipe_a_folder_teacher_built_empty_and_a_pretrained_student(
    tmp_path, capsys
):
    """docs/scaling.md's YAML for a real Llama-3-70B folder, given after the recipe: every value lands where meant
    (the student's config and byte tokenizer from the recipe are cleared, not mixed with its folder)."""
    overlay = tmp_path / "llama70b_to_1b.yaml"
    overlay.write_text(scaling_doc_block("`llama70b_to_1b.yaml`", "yaml"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", RECIPE, "--config", str(overlay), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    teacher = model["teacher"]["init_args"]
    assert (teacher["path"], teacher["empty_init"], teacher["dtype"]) == ("/models/Meta-Llama-3-70B", True, "bf16")
    assert model["teacher_dtype"] == "bf16"
    student = model["student"]["init_args"]
    assert (student["path"], student["config"], student["tokenizer_id"]) == ("/models/Llama-3.2-1B", None, None)
    assert config["data"]["init_args"]["tokenizer"] == "/models/Meta-Llama-3-70B"
