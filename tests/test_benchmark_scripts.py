"""The benchmark scripts that need hardware CI lacks still run end to end in their CPU smoke modes."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_multi_gpu_script_runs_a_cpu_ddp_sweep():
    run = subprocess.run(
        [sys.executable, "benchmarks/multi_gpu.py", "--sweep", "1", "2", "--case", "digits", "--accelerator", "cpu",
         "--steps", "4", "--warmup", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert [row["devices"] for row in result["rows"]] == [1, 2]
    assert all(row["samples_per_s"] > 0 for row in result["rows"]) and result["rows"][0]["scaling"] == 1.0
