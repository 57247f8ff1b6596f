"""DDP on CPU with 2 processes (gloo): the teacher stays frozen, unsynced, and identical on every rank, and a
step over a global batch equals the single-process step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from tests.ddp_fit import parity_batch, parity_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "ddp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_fit.py"), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_ddp_two_cpu_processes_keep_teacher_frozen(ddp_run):
    result = json.loads(ddp_run.read_text())
    assert result["world_size"] == 2 and result["wrapped"] == "DistributedDataParallel"
    assert result["steps_seen"] == 8  # 64 samples / 2 ranks / batch 8 * 2 epochs
    assert not result["teacher_training_any"]
    assert result["teacher_unchanged"] and not result["teacher_requires_grad"]
    assert result["teacher_ignored_by_ddp"]
    assert result["student_in_sync"]


def test_ddp_step_on_a_global_batch_equals_the_single_process_step(ddp_run):
    """Loss and gradient parity: one DDP step over 2 ranks x 8 samples moves the student exactly as one
    single-process step over the same 16 samples (KD and CE are means; DDP averages gradients)."""
    assert json.loads(ddp_run.read_text())["parity_steps"] == 1
    ddp_weights = torch.load(str(ddp_run) + ".parity.pt", weights_only=True)
    module = parity_module()
    start = {k: v.clone() for k, v in module.student.state_dict().items()}
    x, y = parity_batch()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    for key, value in module.student.state_dict().items():
        assert torch.allclose(value, ddp_weights[key], atol=1e-6), key
    assert any(not torch.equal(v, start[k]) for k, v in module.student.state_dict().items())
