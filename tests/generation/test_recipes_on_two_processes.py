"""The shipped generation recipes on 2 CPU processes (gloo), under DDP and under FSDP2: `lit-distill predict` writes
one row per prompt and the same rows as under DDP (greedy decoding; the sharded ranks decode in step, and a rank with
a batch fewer keeps in step with the other), and on-policy distillation trains through its sampled batches. Random
models (``allow_untrained``): the tests check the mechanics, not the text."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = 17  # in batches of 4 over 2 ranks: 9 prompts (3 batches) on rank 0, 8 (2 batches) on rank 1


def lit_distill(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "lit_distill.cli", *args, "--trainer.accelerator=cpu", "--trainer.devices=2",
         "--trainer.enable_progress_bar=false"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert time.monotonic() - start < 150  # every rank finished: no rank waits on another
    return run.stdout + run.stderr


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict[str, list[dict]]:
    """``configs/text/generate.yaml`` (a random teacher in place of the trained one) under each strategy."""
    rows = {}
    for strategy in ("ddp", "fsdp2"):
        cwd = tmp_path_factory.mktemp(strategy)
        output = lit_distill(
            cwd, "predict", "--config", str(ROOT / "configs/text/generate.yaml"), f"--trainer.strategy={strategy}",
            "--model.init_args.checkpoint=null", "--model.init_args.allow_untrained=true",
            "--model.init_args.max_new_tokens=12", f"--data.init_args.max_prompts={PROMPTS}",
            "--data.init_args.predict_split=all", "--data.init_args.batch_size=4",
        )  # fmt: skip
        assert f"for {PROMPTS} prompts" in output  # the summary counts both ranks' prompts
        path = cwd / "generated/text/teacher_responses.jsonl"
        rows[strategy] = [json.loads(line) for line in path.read_text().splitlines()]
        assert json.loads(Path(f"{path}.meta.json").read_text())["finished"] is True
        assert not list(path.parent.glob("*.part"))
    return rows


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_predict_writes_one_row_per_prompt(answers, strategy):
    prompts = [row["prompt"] for row in answers[strategy]]
    assert len(prompts) == PROMPTS and len(set(prompts)) == PROMPTS


def test_sharded_ranks_write_what_replicated_ranks_write(answers):
    assert answers["fsdp2"] == answers["ddp"]  # greedy, float32: sharding changes where weights live, not the text


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_on_policy_recipe_trains_on_its_own_samples(tmp_path, strategy):
    output = lit_distill(
        tmp_path, "fit", "--config", str(ROOT / "configs/text/on_policy.yaml"), f"--trainer.strategy={strategy}",
        "--model.init_args.student_checkpoint=null", "--model.init_args.teacher_checkpoint=null",
        "--model.init_args.allow_untrained_teacher=true", "--model.init_args.max_new_tokens=12",
        "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.logger=true",
    )  # fmt: skip
    metrics = next(tmp_path.glob("lightning_logs/version_*/metrics.csv")).read_text().splitlines()
    header, last = metrics[0].split(","), metrics[-1].split(",")
    logged = {name: value for name, value in zip(header, last) if value}
    assert float(logged["train/sampled"]) == 1.0 and float(logged["train/gen_tokens"]) > 0  # every batch sampled
    assert "val/teacher_nll_of_samples" in "".join(metrics)  # validation sampled from the (sharded) student too
    assert (next(tmp_path.glob("lightning_logs/version_*/student")) / "model.safetensors").is_file(), output


def test_the_on_policy_step_benchmark_runs_on_two_sharded_processes(tmp_path):
    """``benchmarks.scale.onpolicy_step --devices 2 --strategy fsdp2`` (the command for 2 GPUs), tiny and on CPU."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "step.json"
    command = ["-m", "benchmarks.scale.onpolicy_step", "--smoke", "--devices", "2", "--strategy", "fsdp2"]
    run = subprocess.run(
        [sys.executable, *command, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    step = json.loads(out.read_text())
    assert (step["devices"], step["strategy"], step["rank"]) == (2, "fsdp2", 0)
    assert 0 < step["sampling_ms"] < step["total_ms"] and 0 < step["sampling_share"] < 1
