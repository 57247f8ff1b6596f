import pytest
import torch
from safetensors.torch import save_file

from lit_distill.models import MLP
from lit_distill.sharding.fill import WeightSource
from lit_distill.teacher import freeze
from lit_distill.weights import load_weights, parse_dtype, read_state_dict, resolve_prefix


def test_loads_lightning_ckpt_with_student_prefix(tmp_path):
    src = MLP(64, [32], 10)
    torch.save(
        {"state_dict": {f"student.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, tmp_path / "a.ckpt"
    )
    dst = MLP(64, [32], 10)
    load_weights(dst, tmp_path / "a.ckpt")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_loads_safetensors(tmp_path):
    src = MLP(64, [32], 10)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = MLP(64, [32], 10)
    load_weights(dst, tmp_path / "w.safetensors")
    assert torch.equal(dst.head.weight, src.head.weight)


def test_mismatched_checkpoint_lists_keys_and_shapes(tmp_path):
    torch.save(
        {"state_dict": {f"student.{k}": v for k, v in MLP(64, [32], 10).state_dict().items()}}, tmp_path / "a.ckpt"
    )
    with pytest.raises(
        ValueError,
        match=r"shape mismatches: \['body.0.bias: checkpoint \(32,\) vs model \(16,\)', "
        r"'body.0.weight: checkpoint \(32, 64\) vs model \(16, 64\)",
    ):
        load_weights(MLP(64, [16], 10), tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match=r"missing keys \(2\): \['body.2.bias', 'body.2.weight'\]"):
        load_weights(MLP(64, [32, 32], 10), tmp_path / "a.ckpt", prefix="student.")


def test_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="weights-only"):
        read_state_dict(tmp_path / "evil.ckpt")


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="other.ckpt' does not exist.$"):
        read_state_dict(tmp_path / "other.ckpt")


def test_parse_dtype_and_freeze():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("torch.float16") is torch.float16
    assert parse_dtype(None) is None
    m = freeze(MLP(4, [4], 2).train())
    assert not m.training and not any(p.requires_grad for p in m.parameters())


def _pair_checkpoint(path, student, teacher):
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    torch.save({"state_dict": state}, path)
    return path


def test_a_checkpoint_holding_two_models_of_the_same_shape_needs_the_prefix(tmp_path):
    student, teacher = MLP(64, [32], 10), MLP(64, [32], 10)
    path = _pair_checkpoint(tmp_path / "both.ckpt", student, teacher)
    with pytest.raises(
        ValueError, match=r"fit this model under \['student\.', 'teacher\.'\].*teacher_checkpoint_prefix"
    ):
        load_weights(MLP(64, [32], 10), path)
    with pytest.raises(ValueError, match="teacher_checkpoint_prefix"):
        WeightSource.matching(path, MLP(64, [32], 10))
    chosen = MLP(64, [32], 10)
    load_weights(chosen, path, prefix="teacher.")
    assert torch.equal(chosen.head.weight, teacher.head.weight)


def test_the_prefix_that_fits_by_shape_is_taken_for_every_reader(tmp_path):
    # A save_teacher checkpoint of a small student and a bigger teacher: only one prefix fits each model.
    student, teacher = MLP(64, [16], 10), MLP(64, [32], 10)
    path = _pair_checkpoint(tmp_path / "both.ckpt", student, teacher)
    filled = MLP(64, [32], 10)
    load_weights(filled, path)
    assert torch.equal(filled.head.weight, teacher.head.weight)
    assert WeightSource.matching(path, MLP(64, [32], 10)).prefix == "teacher."
    assert WeightSource.matching(path, MLP(64, [16], 10)).prefix == "student."


def test_resolve_prefix_prefers_keys_as_they_are_and_reports_the_closest_when_none_fits():
    wanted = {"w": (2,), "b": (1,)}
    assert resolve_prefix({"w": (2,), "b": (1,), "student.w": (2,), "student.b": (1,)}, wanted, None, "f") == ""
    assert resolve_prefix({"model.w": (2,), "model.b": (1,)}, wanted, None, "f") == "model."
    assert resolve_prefix({"model.w": (2,), "other": (1,)}, wanted, None, "f") == "model."  # closest, for the error
    assert resolve_prefix({"x.w": (2,)}, wanted, "x.", "f") == "x."


@pytest.mark.parametrize("text", ["model:\n  class_path: MLP\n", "epoch,loss\n0,1.5\n", "just some notes"])
def test_a_text_file_is_called_not_a_checkpoint(tmp_path, text):
    path = tmp_path / "teacher.ckpt"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"teacher.ckpt' is not a checkpoint but a text file .*\.safetensors"):
        read_state_dict(path)


def test_a_damaged_binary_file_is_still_called_damaged(tmp_path):
    path = tmp_path / "t.ckpt"
    torch.save({"state_dict": MLP(4, [4], 2).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="is damaged or truncated"):
        read_state_dict(path)
