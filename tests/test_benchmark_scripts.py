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


def test_generation_speed_smoke_times_both_samplers_and_splits_an_on_policy_step(tmp_path):
    out = tmp_path / "speed.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/generation_speed.py", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["errors"] == [] and [row["batch"] for row in result["sampling"]] == [2, 4]
    assert all(row[path]["median"] > 0 for row in result["sampling"] for path in ("transformers", "fast"))
    step = result["onpolicy_step"]
    assert step["sampling_ms"] > 0 and step["teacher_ms"] > 0 and step["student_update_ms"] > 0
    # one compiled decode step per batch size; the on-policy step reuses the batch-4 one
    assert result["diagnostics"]["unique_graphs"] == 2
    assert "on-policy step (lambda=1), batch 4" in run.stdout


def test_onpolicy_after_sft_script_runs_every_variant(tmp_path):
    out = tmp_path / "out.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/onpolicy_after_sft.py", "--seeds", "1", "--teacher-steps", "2", "--sft-steps",
         "2", "--steps", "2", "--max-new-tokens", "4", "--divergence", "reverse_kl", "--teacher",
         str(tmp_path / "teacher"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    students = json.loads(out.read_text())["students"]
    expected = ["stage 1 (SFT)", "SFT", "token KD", "token KD (reverse_kl)", "seq-KD", "on-policy"]
    assert list(students) == expected
    assert all(0 < row["teacher_nll"] < 10 and 0 < row["distinct4"] <= 1 for rows in students.values() for row in rows)


def test_speed_issue_gpu_pieces_run_in_smoke_mode_and_summarise(tmp_path):
    """The pieces of benchmarks/run_speed_gpu.sh on the CPU, tiny, then the summary table over their outputs: a
    typo in a GPU-only benchmark must not first show up on the GPU machine."""
    runs = {
        "fused": ["benchmarks/fused_kd_variants.py", "--smoke", "--out", str(tmp_path)],
        "step_overhead": ["benchmarks/step_overhead.py", "--suite", "smoke", "--out", str(tmp_path)],
        "teacher_cache": ["benchmarks/teacher_cache.py", "--case", "digits", "--epochs", "2", "--repeats", "1",
                          "--top-k", "3", "--threads", "1", "--loaders", "0,1p"],
    }  # fmt: skip
    for name, args in runs.items():
        run = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (name, run.stderr[-2000:])
        (tmp_path / f"{name}.txt").write_text(run.stdout)
    summary = subprocess.run(
        [sys.executable, "benchmarks/speed_summary.py", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert summary.returncode == 0, summary.stderr[-2000:]
    text = summary.stdout
    assert "| smoke | jsd | fp32 logits |" in text and "fastest of all variants, smoke jsd" in text
    assert "module/hand" in text and "vs uncompiled hand loop" in text
    assert "loader '0'" in text and "loader '1p'" in text and "removing it alone" in text


def test_llm_scale_smoke_trains_sharded_checkpoints_resumes_in_a_new_process_and_exports(tmp_path):
    """The GPU commands of BENCHMARKS.md's LLM section, on 2 CPU processes: FSDP2 fit with a sharded checkpoint, then
    a second process resumes from it (a student initialised differently must continue, not restart) and exports."""
    flags = ["--smoke", "--strategy", "fsdp2", "--devices", "2", "--accelerator", "cpu"]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1", "PATH": "/usr/bin:/bin"}
    first = subprocess.run(
        [sys.executable, "benchmarks/llm_scale.py", *flags, "--cycle", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    row = json.loads([line for line in first.stdout.splitlines() if line.startswith("{")][-1])
    assert row["world_size"] == 2 and row["tokens_per_s"] > 0 and row["final_loss"] < row["first_loss"]
    ckpt = row["cycle"]["checkpoint"]
    resumed = subprocess.run(
        [sys.executable, "benchmarks/llm_scale.py", *flags, "--resume", ckpt],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads([line for line in resumed.stdout.splitlines() if line.startswith("{")][-1])
    assert abs(result["resumed_losses"][0] - row["final_loss"]) < abs(row["first_loss"] - row["final_loss"])
    assert result["reloaded_params"] == row["student"]["params"]
