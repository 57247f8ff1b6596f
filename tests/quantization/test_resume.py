"""QAD with checkpoints: a resumed run (same process or a new one) keeps the fake quantization and switches it on
at the same step as an uninterrupted run; under DDP (2 CPU processes) the ranks stay in sync and rank 0 exports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_distill.quantization.qat import fake_quantized_layers
from tests.quantization.qad_fit import START, STEPS, run
from tests.test_resume import StopAt  # a preemption right after a checkpoint

ROOT = Path(__file__).resolve().parents[2]


def script(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "quantization" / "qad_fit.py"), *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(Path(args[2]).read_text()), torch.load(str(args[2]) + ".pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    module, trainer = run(tmp_path_factory.mktemp("full"))
    assert trainer.global_step == STEPS
    return {k: v.clone() for k, v in module.student.state_dict().items()}


def same(a, b):
    return all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


@pytest.mark.parametrize("stop", [START - 1, START + 4], ids=["before_start", "after_start"])
def test_a_resumed_run_matches_the_uninterrupted_one(tmp_path, uninterrupted, stop):
    ckpt = tmp_path / "mid.ckpt"
    run(tmp_path, callbacks=[StopAt(stop, ckpt)])
    state = torch.load(ckpt, weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if "QuantizationAwareDistillation" in k)
    assert saved["scheme"] == "int8_dynamic_int4_weight" and saved["layers"] == ["body.0", "head"]
    module, trainer = run(tmp_path, ckpt_path=str(ckpt))
    assert trainer.global_step == STEPS and fake_quantized_layers(module.student) == ["body.0", "head"]
    assert same(uninterrupted, module.student.state_dict())


def test_a_run_resumed_in_a_new_process_matches_the_uninterrupted_one(tmp_path, uninterrupted):
    ckpt = tmp_path / "mid.ckpt"
    run(tmp_path, callbacks=[StopAt(START - 1, ckpt)])  # the switch happens in the new process
    result, weights = script("resume", tmp_path, tmp_path / "resumed.json", ckpt)
    assert result["steps"] == STEPS and result["layers"] == ["body.0", "head"] and all(result["enabled"])
    assert same(uninterrupted, weights)


def test_resuming_with_another_scheme_is_refused_naming_both(tmp_path):
    ckpt = tmp_path / "mid.ckpt"
    run(tmp_path, callbacks=[StopAt(2, ckpt)])
    with pytest.raises(
        ValueError, match="trained with fake quantization 'int8_dynamic_int4_weight'.*'int4_weight_only'"
    ):
        run(tmp_path, ckpt_path=str(ckpt), scheme="int4_weight_only")


def test_ddp_two_cpu_processes_train_in_sync_and_rank_zero_exports(tmp_path):
    result, _ = script("ddp", tmp_path, tmp_path / "ddp.json")
    assert result["steps"] == STEPS and result["in_sync"]
    wrapped = ["DistributedDataParallel", "module.student.body.0", "module.student.head"]
    assert result["wrapped_layers"] == wrapped  # prepared before DDP wrapped the module
    assert result["export_matches"]


def test_fsdp2_two_cpu_processes_train_the_sharded_student_fake_quantized(tmp_path):
    out = tmp_path / "fsdp2.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "quantization" / "qad_fit.py"), "fsdp2", str(tmp_path), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["sharded"] and result["trained"]
    assert len(result["layers"]) == 8  # qkv, proj and the two MLP layers of both blocks; the tied head stays out
    assert "lit-distill quantize FOLDER --scheme int4_weight_only --group_size 16" in result["export_refused"]
