"""DDP on CPU with 2 processes (gloo): the teacher stays frozen, unsynced, and identical on every rank, and a
step over a global batch equals the single-process step."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_distill.cache import CacheReader
from lit_distill.cache.manifest import read_manifest
from lit_distill.cli import main
from lit_distill.export import current_umask, load_student
from lit_distill.models import MLP
from lit_distill.models.hf import load_pretrained
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


# ---------------------------------------------------------------------------------------------------------------
# The shipped recipes under 2-process DDP, through the `lit-distill` command, callbacks and export included.

DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
QUIET = ["--trainer.enable_progress_bar=false"]


def lit_distill(work: Path, *args: str) -> subprocess.CompletedProcess:
    """`lit-distill ARGS` in ``work`` (the console script, so Lightning's launcher re-executes it per rank)."""
    script = Path(sys.executable).with_name("lit-distill")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "lit_distill.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*command, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def new_files(work: Path, pattern: str, before: set[Path]) -> list[Path]:
    return sorted(set(work.glob(pattern)) - before)


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    """A copy of configs/ with the two teachers trained briefly, in this process: they are inputs, not under test."""
    work = tmp_path_factory.mktemp("ddp_recipes")
    shutil.copytree(ROOT / "configs", work / "configs")
    old = os.getcwd()
    os.chdir(work)
    try:
        for config in ("configs/digits/teacher.yaml", "configs/text/teacher.yaml"):
            main(["fit", "--config", config, *SHORT, *QUIET, "--trainer.logger=false"])
    finally:
        os.chdir(old)
    return work


@pytest.mark.slow
def test_ddp_quickstart_recipe_exports_a_loadable_student(recipes):
    before = set(recipes.glob("lightning_logs/*/student.safetensors"))
    lit_distill(recipes, "fit", "--config", "configs/quickstart.yaml", *DDP, *SHORT, *QUIET)
    (exported,) = new_files(recipes, "lightning_logs/*/student.safetensors", before)
    load_student(MLP(64, [32], 10), exported)  # strict: every key and shape
    assert oct(exported.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


@pytest.mark.slow
def test_ddp_token_kd_recipe_exports_a_loadable_pretrained_student(recipes):
    before = set(recipes.glob("lightning_logs/*/student"))
    lit_distill(recipes, "fit", "--config", "configs/text/token_kd.yaml", *DDP, *SHORT, *QUIET)
    (exported,) = new_files(recipes, "lightning_logs/*/student", before)
    student = load_pretrained(exported)
    assert student.config["n_layer"] == 1 and student(torch.tensor([[104, 105]])).shape == (1, 2, 258)


@pytest.mark.slow
def test_ddp_teacher_cache_then_cached_quickstart(recipes):
    """Both ranks write shards of the cache (each its own samples), rank 0 the manifest; the cached recipe reads it."""
    lit_distill(recipes, "predict", "--config", "configs/digits/teacher_cache.yaml", *DDP, *QUIET)
    cache = recipes / "artifacts" / "digits" / "teacher_cache"
    manifest = read_manifest(cache)
    assert all(split["complete"] for split in manifest["splits"].values())
    assert {p.name.split("-")[1] for p in (cache / "train").iterdir()} == {"rank0", "rank1"}
    reader = CacheReader(cache, "train")
    assert len(reader) == manifest["splits"]["train"]["num_samples"] == 150
    before = set(recipes.glob("lightning_logs/*/student.safetensors"))
    lit_distill(recipes, "fit", "--config", "configs/digits/quickstart_cached.yaml", *DDP, *SHORT, *QUIET)
    (exported,) = new_files(recipes, "lightning_logs/*/student.safetensors", before)
    load_student(MLP(64, [32], 10), exported)
