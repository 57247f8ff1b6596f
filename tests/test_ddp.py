"""DDP on CPU with 2 processes (gloo): the teacher stays frozen, unsynced, and identical on every rank."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_two_cpu_processes_keep_teacher_frozen(tmp_path):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_fit.py"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["wrapped"] == "DistributedDataParallel"
    assert result["steps_seen"] == 8  # 64 samples / 2 ranks / batch 8 * 2 epochs
    assert not result["teacher_training_any"]
    assert result["teacher_unchanged"] and not result["teacher_requires_grad"]
    assert result["teacher_ignored_by_ddp"]
    assert result["student_in_sync"]
