"""``lit-distill quantize``: PTQ of an exported student from the command line."""

import pytest
import torch
import yaml

pytest.importorskip("torchao")

from lit_distill.cli import main  # noqa: E402
from lit_distill.export import save_state  # noqa: E402
from lit_distill.models import GPT, MLP  # noqa: E402
from lit_distill.models.hf import export_pretrained  # noqa: E402
from lit_distill.quantization import load_quantized, quantize_model  # noqa: E402
from lit_distill.quantization.schemes import get_scheme  # noqa: E402
from lit_distill.quantization.storage import read_record  # noqa: E402


def quantize(*argv):
    with pytest.raises(SystemExit) as done:
        main(["quantize", *map(str, argv)])
    return done.value.code


def test_an_exported_gpt_folder_is_quantized_as_quantize_model_does(tmp_path):
    torch.manual_seed(0)
    model = GPT(vocab_size=258, block_size=32, n_layer=1, n_head=2, n_embd=64)
    export_pretrained(model, tmp_path / "student")
    assert quantize(tmp_path / "student", "--scheme", "int4_weight_only") == 0
    reloaded = load_quantized(tmp_path / "student_int4_weight_only")
    quantize_model(model.to(torch.bfloat16), get_scheme("int4_weight_only"))
    x = torch.randint(0, 258, (2, 8))
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    assert read_record(tmp_path / "student_int4_weight_only")["group_size"] == 32


def test_a_safetensors_student_is_built_from_the_run_config(tmp_path, capsys):
    torch.manual_seed(0)
    model = MLP(64, [32], 10)
    save_state(model.state_dict(), tmp_path / "student.safetensors")
    spec = {"class_path": "lit_distill.models.MLP", "init_args": {"in_features": 64, "hidden": [32], "num_classes": 10}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {"init_args": {"student": spec}}}))
    out = tmp_path / "int8"
    code = quantize(tmp_path / "student.safetensors", "--config", tmp_path / "config.yaml", "--scheme",
                    "int8_dynamic_int8_weight", "--out", out, "--dtype", "none")  # fmt: skip
    assert code == 0 and "written to" in capsys.readouterr().out
    reloaded = load_quantized(out, model=MLP(64, [32], 10))
    x = torch.rand(4, 64)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x), atol=0.05)  # int8 weights and activations: close, not equal


@pytest.mark.parametrize(
    "setup,args,message",
    [
        (None, ["missing", "--scheme", "int4_weight_only"], "student 'missing' does not exist"),
        ("weights", ["student.safetensors", "--scheme", "int4_weight_only"], "add --config with the run's config"),
        ("folder", ["student", "--scheme", "int4_weight_only", "--group_size", "48"], "group_size=48 does not divide"),
    ],
    ids=["missing", "weights_without_config", "bad_group"],
)
def test_mistakes_are_one_line_errors(tmp_path, monkeypatch, capsys, setup, args, message):
    monkeypatch.chdir(tmp_path)
    if setup == "weights":
        save_state(MLP(64, [32], 10).state_dict(), tmp_path / "student.safetensors")
    elif setup == "folder":
        export_pretrained(GPT(vocab_size=258, block_size=32, n_layer=1, n_head=2, n_embd=64), tmp_path / "student")
    assert quantize(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lit-distill: error:") and message in err.splitlines()[0]
    assert "Traceback" not in err
