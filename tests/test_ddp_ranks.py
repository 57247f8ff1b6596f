"""No rank waits forever: a NaN on one rank with ``nan_policy: skip``, and a failure inside a rank-0-only section,
each on 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_case(*args: str, timeout: int = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1"}
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_ranks.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return run, time.monotonic() - start


def test_a_nan_on_one_rank_skips_that_update_on_every_rank(tmp_path):
    out = tmp_path / "nan.json"
    run, _ = run_case("nan_skip", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["batches"] == 4  # 64 samples / 2 ranks / batch 8: every batch was seen
    assert result["finite"] and result["in_sync"]  # the skipped update moved no rank, so they stay equal
    assert result["skipped"] == 1.0
    assert "rank 1: non-finite loss term(s)" in run.stderr


def test_a_failure_in_a_rank_zero_section_ends_every_rank(tmp_path):
    run, seconds = run_case("rank0_fails", timeout=90)
    assert run.returncode != 0
    assert seconds < 60
    assert "OSError: disk full while merging the per-rank parts (injected)" in run.stderr  # rank 0's own error
    # The other rank does not wait for the process-group timeout: it fails at once, naming rank 0's error.
    assert "rank 0 failed while merging the per-rank parts: OSError: disk full" in run.stderr
