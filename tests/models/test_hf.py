"""Hugging Face models: tiny random GPT-2 teacher/student built locally, distilled, saved, reloaded, same logits."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from lit_distill import DistillationModule  # noqa: E402
from lit_distill.callbacks import ExportPretrained  # noqa: E402
from lit_distill.data import TextDataModule  # noqa: E402
from lit_distill.data.text import pydoc_documents  # noqa: E402
from lit_distill.losses import TokenKD  # noqa: E402
from lit_distill.models import GPT  # noqa: E402
from lit_distill.models.hf import HFCausalLM, export_pretrained, load_pretrained  # noqa: E402
from tests.helpers import trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """tokenizer/, teacher/ (vocab padded to a multiple of 64), student/ from scripts/make_tiny_hf_models.py."""
    spec = importlib.util.spec_from_file_location("make_tiny_hf_models", ROOT / "scripts" / "make_tiny_hf_models.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.make(tmp_path_factory.mktemp("hf") / "hf_tiny", vocab_size=300)


def data(tiny_dir):
    # a small slice of the corpus keeps the BPE tokenization quick
    text = tiny_dir / "sample.txt"
    if not text.exists():
        text.write_text("".join(pydoc_documents()[:4])[:20_000])
    return TextDataModule(
        tokenizer=str(tiny_dir / "tokenizer"), files=[str(text)], seq_len=32, batch_size=4, max_blocks=24
    )


def test_wrapper_exposes_tokenizer_vocab_and_the_hidden_path(tiny_dir):
    teacher, student = HFCausalLM(str(tiny_dir / "teacher")).eval(), HFCausalLM(str(tiny_dir / "student"))
    dm = data(tiny_dir)
    assert teacher.tokenizer_id == student.tokenizer_id == dm.tokenizer_id and teacher.tokenizer_id.startswith("hf:")
    assert teacher.config.vocab_size == 320 and student.config.vocab_size == dm.vocab_size == 300
    assert teacher.block_size == 256  # n_positions: on-policy sampling stops there
    dm.setup()
    ids = next(iter(dm.train_dataloader()))["input_ids"]
    logits = teacher(ids)
    assert logits.shape == (4, 32, 320)
    torch.testing.assert_close(teacher.get_output_embeddings()(teacher.forward_hidden(ids)), logits)
    loss = TokenKD()
    loss.check_models(student, teacher)
    assert loss.shared_vocab == 300  # one tokenizer, the teacher's padding sliced off
    assert student.model.training  # like a freshly built module (dropout on); the module freezes the teacher


def test_distill_save_pretrained_and_reload_with_transformers(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    student = HFCausalLM(str(tiny_dir / "student"))
    module = DistillationModule(
        student=student, teacher=HFCausalLM(str(tiny_dir / "teacher")), losses=[TokenKD(lm_weight=0.5)]
    )
    before = {k: v.clone() for k, v in student.state_dict().items()}
    out = tmp_path / "student"
    trainer(tmp_path, max_steps=3, limit_val_batches=1, callbacks=[ExportPretrained(str(out))]).fit(
        module, data(tiny_dir)
    )
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 300, (2, 16))
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, student(ids), rtol=0, atol=0)
        torch.testing.assert_close(load_pretrained(out)(ids), student(ids), rtol=0, atol=0)
    assert load_pretrained(out).tokenizer_id == student.tokenizer_id  # tokenizer saved beside the weights
    with pytest.raises(FileExistsError, match="not empty"):
        export_pretrained(module, out)


def test_our_gpt_exports_as_safetensors_and_reloads(tmp_path):
    model = GPT(n_layer=1, n_head=2, n_embd=16, block_size=16).eval()
    folder = export_pretrained(model, tmp_path / "gpt")
    assert (folder / "model.safetensors").is_file()
    ids = torch.randint(0, 258, (2, 8))
    assert torch.equal(load_pretrained(folder)(ids), model(ids))


def test_a_tokenizer_mismatch_fails_at_setup_before_any_compute(tiny_dir, tmp_path):
    teacher = HFCausalLM(str(tiny_dir / "teacher"))
    calls = []
    teacher.register_forward_pre_hook(lambda *args: calls.append(1))
    student = GPT(vocab_size=320, n_layer=1, n_head=2, n_embd=16, block_size=32, tokenizer_id="bytes")
    module = DistillationModule(student=student, teacher=teacher, losses=[TokenKD()])
    with pytest.raises(ValueError, match="student speaks tokenizer 'bytes' and the teacher 'hf:"):
        trainer(tmp_path, max_steps=1).fit(module, data(tiny_dir))
    assert not calls


def test_missing_and_offline_models_fail_clearly():
    with pytest.raises(FileNotFoundError, match="python scripts/make_tiny_hf_models.py"):
        HFCausalLM("checkpoints/text/hf_tiny/teacher_missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFCausalLM("./no/such/model")
    with pytest.raises(
        FileNotFoundError, match=r"no such local directory, and the hub is offline \(HF_HUB_OFFLINE=1\)"
    ):
        HFCausalLM("lit-distill-test/not-a-cached-model")


def test_folder_without_tokenizer_files_falls_back_to_the_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lit_distill.models.hf import HFCausalLM

    config = transformers.GPT2Config(vocab_size=97, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "weights_only")
    model = HFCausalLM(str(tmp_path / "weights_only"))
    assert model.tokenizer is None and model.vocab_size == 97
