"""FSDP2 (``--trainer.strategy fsdp2``) on 2 CPU processes (gloo): what tests/sharding/fsdp2_fit.py measured."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from lit_distill.export import load_student
from tests.helpers import trainer
from tests.sharding.fsdp2_fit import gpt, module

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp2")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sharding" / "fsdp2_fit.py"), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_both_models_are_sharded_and_the_teacher_stays_frozen(run):
    result = json.loads((run / "result.json").read_text())
    assert result["student_sharded"] and result["teacher_sharded"]
    assert result["teacher_frozen"] and result["teacher_eval"] and result["teacher_unchanged"]


def test_sharded_checkpoint_leaves_the_teacher_out(run):
    result = json.loads((run / "result.json").read_text())
    assert result["checkpoint_teacher_keys"] == []
    assert result["checkpoint_student_keys"] == len(gpt(16, 0).state_dict())


def test_resume_from_the_sharded_checkpoint_is_exact(run):
    result = json.loads((run / "result.json").read_text())
    assert result["resume_keys"] and result["resume_max_diff"] == 0.0


def test_export_writes_the_whole_student_that_loads_on_cpu(run):
    resumed = torch.load(run / "resumed.pt", weights_only=True)
    student = load_student(gpt(16, 99), run / "student.safetensors")
    for key, value in student.state_dict().items():
        assert torch.equal(value, resumed[key]), key


def test_sharded_checkpoint_loads_as_student_checkpoint_on_one_cpu(run):
    """A sharded folder is read whole, without a process group, by ``student_checkpoint`` (weights only)."""
    folder = run / "ck" / "last.ckpt"
    again = module(student_seed=5, student_checkpoint=str(folder))
    first = module(student_seed=5)
    assert any(not torch.equal(a, b) for a, b in zip(again.student.parameters(), first.student.parameters()))
    from lit_distill.weights import read_state_dict

    stored = read_state_dict(folder)
    assert torch.equal(again.student.head.weight, stored["student.head.weight"])


def test_one_sharded_step_equals_one_single_process_step(run, tmp_path):
    """Two ranks x 4 sequences under FSDP2 move the student like one process on the same 8 sequences."""
    sharded = torch.load(run / "parity.pt", weights_only=True)
    single = module(optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    ids = torch.randint(0, 258, (8, 32), generator=torch.Generator().manual_seed(3))
    loader = DataLoader([{"input_ids": r, "labels": r} for r in ids], batch_size=8)
    trainer(tmp_path, max_steps=1).fit(single, loader)
    for key, value in single.student.state_dict().items():
        if key in sharded:
            assert torch.allclose(value, sharded[key], atol=1e-6), key


def test_a_full_checkpoint_is_one_file_of_the_gathered_student_without_the_teacher(run):
    """``FSDP2Strategy(save_distributed_checkpoint=False)``: rank 0 writes one ordinary checkpoint file."""
    from lit_distill.weights import read_state_dict

    (path,) = (run / "full").glob("*.ckpt")
    assert path.is_file()
    stored = read_state_dict(path)
    assert stored and all(k.startswith("student.") for k in stored)
    whole = torch.load(run / "whole.pt", weights_only=True)
    for key, value in whole.items():
        assert torch.equal(stored[f"student.{key}"], value), key
    loaded = module(student_seed=5, student_checkpoint=str(path))
    assert torch.equal(loaded.student.head.weight, whole["head.weight"])


def test_a_teacher_built_empty_is_filled_shard_by_shard_with_exactly_its_saved_weights(run):
    """``HFCausalLM(path, empty_init=True)`` under fsdp2: sharded, and gathered back it equals the saved file."""
    from safetensors.torch import load_file

    assert json.loads((run / "result.json").read_text())["hf_teacher_sharded"]
    loaded = torch.load(run / "hf_loaded.pt", weights_only=True)
    saved = load_file(str(run / "teacher_hf" / "model.safetensors"))
    assert {k.removeprefix("model.") for k in loaded} == set(saved)
    for key, value in loaded.items():
        assert torch.equal(value, saved[key.removeprefix("model.")]), key


def test_plan_options_give_the_same_step(run):
    """``FSDP2Strategy(teacher=..., activation_checkpointing=..., reshard_after_forward=...)``
    move the student exactly like the default sharded step."""
    result = json.loads((run / "result.json").read_text())
    assert result["checkpoint_wrapped_blocks"] == 2 and result["replicated_teacher_plain"]  # the options took effect
    default = torch.load(run / "parity.pt", weights_only=True)
    other = torch.load(run / "planned.pt", weights_only=True)["replicate+checkpointing+kept"]
    assert sorted(other) == sorted(default)
    for key, value in other.items():
        assert torch.allclose(value, default[key], atol=1e-6), key
