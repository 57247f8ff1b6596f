"""On-policy distillation under DDP on 2 CPU processes (gloo): each rank samples its own prompts."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_on_policy_under_ddp_each_rank_samples_its_own_prompts(tmp_path):
    out = tmp_path / "onpolicy.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    script = ROOT / "tests" / "generation" / "ddp_onpolicy.py"
    run = subprocess.run(
        [sys.executable, str(script), str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    ranks = [[tuple(r["prompt"]) for r in records] for records in result["records"]]
    assert [len(r) for r in ranks] == [12, 12]  # 3 steps x 4 prompts on each rank, every batch sampled
    assert not set(ranks[0]) & set(ranks[1])  # the distributed sampler gave the ranks different prompts
    assert all(0 < len(r["sample"]) <= 6 for records in result["records"] for r in records)
    assert result["in_sync"]  # DDP averaged the gradients of the two ranks' own samples
