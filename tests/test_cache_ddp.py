"""The teacher cache under 2-process DDP (gloo, CPU), through ``lit-distill predict``: a failure in the writer's
rank-0-only preparation ends every rank at once, each naming the cause on its first error line."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
trainer:
  accelerator: cpu
  devices: 2
  strategy: ddp
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: tests.cache_ddp.PrepareFailsOnRankZero
model:
  class_path: lit_distill.DistillationModule
  init_args:
    student: {class_path: lit_distill.models.MLP, init_args: {in_features: 64, hidden: [8], num_classes: 10}}
    teacher: {class_path: lit_distill.models.MLP, init_args: {in_features: 64, hidden: [16], num_classes: 10}}
    allow_untrained_teacher: true
data:
  class_path: lit_distill.data.CachedTeacherDataModule
  init_args:
    cache_dir: CACHE
    splits: [train]
    datamodule: {class_path: lit_distill.data.DigitsDataModule, init_args: {batch_size: 32, train_samples: 64}}
"""


def test_a_failure_in_the_rank_zero_preparation_ends_every_rank(tmp_path):
    config = tmp_path / "cache.yaml"
    config.write_text(RECIPE.replace("CACHE", str(tmp_path / "cache")))
    script = Path(sys.executable).with_name("lit-distill")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "lit_distill.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    start = time.monotonic()
    run = subprocess.run(
        [*command, "predict", "--config", str(config)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    seconds = time.monotonic() - start
    errors = [line for line in run.stderr.splitlines() if line.startswith("lit-distill: error:")]
    assert run.returncode != 0 and seconds < 60, (seconds, run.stderr[-3000:])
    # The cause on the first error line (printed once for the run), and every rank stopped with it: rank 0 with its
    # own error, rank 1 at once with rank 0's (not after the process-group timeout).
    cause = "OSError: no space left on device while preparing the teacher cache (injected)"
    assert errors == [f"lit-distill: error: {cause}"], run.stderr[-3000:]
    assert (tmp_path / "failed-rank0.txt").read_text() == cause
    assert (tmp_path / "failed-rank1.txt").read_text() == (
        f"RuntimeError: rank 0 failed while preparing the teacher cache: {cause}"
    )
    assert not (tmp_path / "cache").exists()  # nothing written
