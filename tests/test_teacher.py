import pytest
import torch
from safetensors.torch import save_file

from lit_distill.models import MLP
from lit_distill.teacher import freeze, load_weights, parse_dtype, producer_hint, read_state_dict


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


def test_missing_checkpoint_names_the_recipe_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "t.yaml").write_text("dirpath: out/dir\nfilename: best\n")
    assert "lit-distill fit --config configs/t.yaml" in producer_hint(__import__("pathlib").Path("out/dir/best.ckpt"))
    with pytest.raises(FileNotFoundError, match="Create it first with: lit-distill fit --config configs/t.yaml"):
        read_state_dict("out/dir/best.ckpt")
    with pytest.raises(FileNotFoundError, match="other.ckpt' does not exist.$"):
        read_state_dict("out/dir/other.ckpt")


def test_parse_dtype_and_freeze():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("torch.float16") is torch.float16
    assert parse_dtype(None) is None
    m = freeze(MLP(4, [4], 2).train())
    assert not m.training and not any(p.requires_grad for p in m.parameters())
