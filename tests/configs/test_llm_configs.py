"""configs/llm as shipped, on 2 CPU processes with FSDP2 (the same flags as on N GPUs): the teacher is read shard by
shard from its Hugging Face folder, checkpoints are sharded folders without the teacher, a run resumes from one,
and the exported student loads in transformers."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=2"]


def lit_distill(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    command = [sys.executable, "-m", "lit_distill.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("llm")
    shutil.copytree(ROOT / "configs", work / "configs")
    teacher = lit_distill(work, "fit", "--config", "configs/llm/teacher.yaml", "--trainer.max_steps=4", *FLAGS)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    sharded = [*FLAGS, "--trainer.devices=2", "--trainer.strategy=fsdp2"]
    sharded += ["--trainer.limit_train_batches=3", "--trainer.log_every_n_steps=1"]
    first = lit_distill(work, "fit", "--config", "configs/llm/token_kd.yaml", *sharded)
    assert first.returncode == 0, first.stderr[-3000:]
    (ckpt,) = (work / "lightning_logs").glob("version_*/checkpoints/epoch=0-step=3.ckpt")  # the first KD run
    more = ["--trainer.max_epochs=2", f"--ckpt_path={ckpt}"]
    resumed = lit_distill(work, "fit", "--config", "configs/llm/token_kd.yaml", *more, *sharded)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return work


def test_the_teacher_recipe_writes_a_hugging_face_folder(runs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(runs / "checkpoints" / "llm" / "teacher")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tokenizer_id == "bytes"


def test_sharded_checkpoint_is_a_folder_without_the_teacher(runs):
    from torch.distributed.checkpoint import FileSystemReader

    (ckpt,) = (runs / "lightning_logs").glob("version_*/checkpoints/epoch=0-step=3.ckpt")
    keys = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    assert any(k.startswith("state_dict.student.") for k in keys)
    assert not any(k.startswith("state_dict.teacher.") for k in keys)


def test_resumed_run_continues_to_its_own_step_and_exports_a_student_transformers_loads(runs):
    from transformers import AutoModelForCausalLM

    (metrics,) = (runs / "lightning_logs").glob("version_2/metrics.csv")
    with metrics.open() as f:
        steps = {int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")}
    assert steps == {3, 4, 5}  # it went on from the checkpoint's step 3 (a fresh run would log steps 0-5)
    assert list((runs / "lightning_logs").glob("version_2/checkpoints/epoch=1-step=6.ckpt"))
    folders = sorted((runs / "lightning_logs").glob("version_*/student"))
    assert len(folders) == 2  # one per KD fit (the teacher recipe writes checkpoints/llm/teacher instead)
    student = AutoModelForCausalLM.from_pretrained(folders[-1])
    assert student.config.num_hidden_layers == 2 and student.config.tokenizer_id == "bytes"
    logits = student(torch.randint(0, 258, (1, 8))).logits
    assert logits.shape == (1, 8, 258) and torch.isfinite(logits).all()
