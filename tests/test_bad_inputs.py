"""Every wrong setup fails early with the bad value and the fix in the message, and leaves no files."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_distill import CrossEntropy, DistillationModule, LogitKD
from lit_distill.callbacks import ExportStudent, TeacherCheckpoint
from lit_distill.data import DigitsDataModule, TextDataModule
from lit_distill.features import FeatureTaps
from lit_distill.losses import TokenKD
from lit_distill.models import GPT, MLP
from lit_distill.teacher import mark_built_from_config
from lit_distill.weights import load_weights, read_state_dict
from tests.helpers import loaders, make_module, trainer


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


def student_ckpt(path: Path, hidden=(32,)) -> Path:
    torch.save({"state_dict": {f"student.{k}": v for k, v in MLP(64, list(hidden), 10).state_dict().items()}}, path)
    return path


def from_config(module):
    """``module`` as the command line hands it over: its teacher built from the recipe's config."""
    mark_built_from_config(module.teacher)
    return module


def fit_once(tmp_path, module, data=None, datamodule=None, **kw):
    if datamodule is not None:
        return trainer(tmp_path, **kw).fit(module, datamodule=datamodule)
    train, val = data if data is not None else loaders()
    trainer(tmp_path, **kw).fit(module, train, val)


def truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:1000])
    return path


def text_module(student_vocab):
    gpt = dict(block_size=16, n_layer=1, n_head=2, n_embd=16, tokenizer_id="bytes")
    return DistillationModule(student=GPT(vocab_size=student_vocab, **gpt), teacher=GPT(**gpt),
                              losses=[TokenKD()], allow_untrained_teacher=True)  # fmt: skip


def shared_student():
    student = MLP(64, [16], 10)
    teacher = MLP(64, [16], 10)
    teacher.head = student.head
    return {"student": student, "teacher": teacher}


class Evil:
    def __reduce__(self):
        return (print, ("this would run at load time",))


CASES = {
    "temperature zero": (lambda tmp: LogitKD(temperature=0), ValueError, "got 0"),
    "temperature negative": (lambda tmp: LogitKD(temperature=-1.5), ValueError, "got -1.5"),
    "beta outside [0,1]": (lambda tmp: LogitKD(divergence="jsd", beta=1.5), ValueError, "got 1.5"),
    "unknown divergence": (lambda tmp: LogitKD(divergence="kld"), ValueError, "unknown divergence 'kld'"),
    "negative weight": (lambda tmp: CrossEntropy(weight=-0.5), ValueError, "got -0.5"),
    "all weights zero": (lambda tmp: make_module(losses=[LogitKD(weight=0.0)]), ValueError, "every loss weight is 0"),
    "no losses": (lambda tmp: make_module(losses=[]), ValueError, "losses is empty"),
    "duplicate loss names": (lambda tmp: make_module(losses=[LogitKD(), LogitKD()]), ValueError, "'logit_kd'"),
    "teacher loss without teacher": (
        lambda tmp: DistillationModule(student=MLP(64, [8], 10), losses=[LogitKD()]),
        ValueError,
        "'logit_kd' (LogitKD) needs a teacher",
    ),
    "not a strategy": (lambda tmp: make_module(losses=[torch.nn.MSELoss()]), TypeError, "got MSELoss"),
    "missing teacher checkpoint": (
        lambda tmp: make_module(teacher_checkpoint=str(tmp / "no" / "teacher.ckpt")),
        FileNotFoundError,
        "teacher.ckpt' does not exist",
    ),
    "wrong-architecture checkpoint": (
        lambda tmp: make_module(teacher=MLP(64, [64], 10), teacher_checkpoint=str(student_ckpt(tmp / "t.ckpt"))),
        ValueError,
        "body.0.weight: checkpoint (32, 64) vs model (64, 64)",
    ),
    "extra layers in model": (
        lambda tmp: load_weights(MLP(64, [32, 32], 10), student_ckpt(tmp / "t.ckpt"), prefix="student."),
        ValueError,
        "missing keys (2): ['body.2.bias', 'body.2.weight']",
    ),
    "pickled object in checkpoint": (
        lambda tmp: (torch.save({"state_dict": Evil()}, tmp / "evil.ckpt"), read_state_dict(tmp / "evil.ckpt")),
        ValueError,
        "evil.ckpt' as a weights-only",
    ),
    "unknown teacher dtype": (lambda tmp: make_module(teacher_dtype="bf17"), ValueError, "unknown dtype 'bf17'"),
    "student is the teacher": (
        lambda tmp: (lambda m: DistillationModule(student=m, teacher=m))(MLP(64, [8], 10)),
        ValueError,
        "same module object",
    ),
    "student shares parameters": (
        lambda tmp: DistillationModule(**shared_student()),
        ValueError,
        "shares 2 parameter(s) with the teacher (e.g. ['head.weight', 'head.bias'])",
    ),
    "class counts differ": (
        lambda tmp: fit_once(tmp, make_module(teacher=MLP(64, [32], 7))),
        ValueError,
        "student logits (16, 10) and teacher logits (16, 7)",
    ),
    "input width wrong": (
        lambda tmp: fit_once(tmp, make_module(student=MLP(32, [8], 10))),
        RuntimeError,
        "64",
    ),
    "empty dataset": (
        lambda tmp: fit_once(
            tmp, make_module(), (DataLoader(TensorDataset(torch.zeros(0, 64), torch.zeros(0).long())), None)
        ),
        ValueError,
        "dataset size 0",
    ),
    "bad nan policy": (lambda tmp: make_module(nan_policy="ignore"), ValueError, "got 'ignore'"),
    "unknown hook module": (lambda tmp: FeatureTaps(MLP(64, [8], 10), ["body.9"]), KeyError, "'body.9'"),
    "hook suffix": (lambda tmp: FeatureTaps(MLP(64, [8], 10), ["head:inputs"]), ValueError, "'inputs'"),
    "batch size zero": (lambda tmp: DigitsDataModule(batch_size=0), ValueError, "got 0"),
    "too many train samples": (
        lambda tmp: (lambda dm: dm.setup("fit"))(DigitsDataModule(train_samples=5000)),
        ValueError,
        "train_samples=5000",
    ),
    "export suffix": (
        lambda tmp: make_module().export_student(tmp / "student.pt"),
        ValueError,
        "student.pt' must end in .safetensors",
    ),
    "export over an existing file": (
        lambda tmp: ((tmp / "s.safetensors").write_text("mine"), make_module().export_student(tmp / "s.safetensors")),
        FileExistsError,
        "s.safetensors' exists; pass overwrite=True",
    ),
    "export callback over an existing file, before training": (
        lambda tmp: (
            (tmp / "keep.safetensors").write_text("mine"),
            fit_once(tmp, make_module(), callbacks=[ExportStudent(str(tmp / "keep.safetensors"))]),
        ),
        FileExistsError,
        "keep.safetensors' exists; set overwrite: true",
    ),
    "teacher dtype changed by true precision": (
        lambda tmp: fit_once(tmp, make_module(teacher_dtype="fp16"), precision="bf16-true"),
        RuntimeError,
        "teacher_dtype is torch.float16 but the teacher's weights are torch.bfloat16",
    ),
    "cache top-k above the vocabulary": (
        lambda tmp: (
            __import__("lit_distill.cache", fromlist=["TeacherCacheWriter"])
            .TeacherCacheWriter(top_k=50)
            ._check_vocab(torch.zeros(2, 10))
        ),
        ValueError,
        "top_k=50 exceeds the teacher's 10 classes",
    ),
    "token KD between different tokenizers": (
        lambda tmp: (
            __import__("lit_distill.losses", fromlist=["TokenKD"])
            .TokenKD()
            .check_models(GPT(vocab_size=258, tokenizer_id="bytes"), GPT(vocab_size=258, tokenizer_id="gpt2-bpe"))
        ),
        ValueError,
        "'bytes' and the teacher 'gpt2-bpe'",
    ),
    "recipe teacher without trained weights": (
        lambda tmp: fit_once(tmp, from_config(make_module(allow_untrained_teacher=False))),
        ValueError,
        "the teacher (MLP) is built from the recipe's config (model.init_args.teacher) and no weights are loaded",
    ),
    "truncated teacher checkpoint": (
        lambda tmp: make_module(
            teacher=MLP(64, [32], 10), teacher_checkpoint=str(truncated(student_ckpt(tmp / "t.ckpt")))
        ),
        ValueError,
        "t.ckpt' is damaged or truncated",
    ),
    "text student smaller than the tokenizer": (
        lambda tmp: fit_once(tmp, text_module(student_vocab=100), datamodule=TextDataModule(seq_len=16, max_blocks=64)),
        ValueError,
        "the student (GPT) embeds 100 token ids, but the data's tokenizer (bytes) has 258",
    ),
    "retraining over a teacher checkpoint": (
        lambda tmp: (
            (tmp / "teacher.ckpt").write_text("mine"),
            fit_once(
                tmp,
                DistillationModule(student=MLP(64, [8], 10)),
                enable_checkpointing=True,
                callbacks=[TeacherCheckpoint(dirpath=str(tmp), filename="teacher")],
            ),
        ),  # fmt: skip
        FileExistsError,
        "teacher.ckpt' exists and other recipes read it",
    ),
    "NaN in the first batch": (
        lambda tmp: fit_once(
            tmp,
            make_module(),
            (DataLoader(TensorDataset(torch.full((8, 64), float("nan")), torch.zeros(8).long())), None),
        ),
        FloatingPointError,
        "the first batch already gives non-finite loss term(s)",
    ),  # fmt: skip
    "dict batch without input_ids": (
        lambda tmp: make_module().shared_step({"inputs": torch.zeros(2, 64)}),
        KeyError,
        "['inputs']",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_clearly_and_leaves_nothing(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build, error, text = CASES[case]
    before = files_under(tmp_path)
    with pytest.raises(error) as info:
        build(tmp_path)
    message = info.value.args[0] if isinstance(info.value, KeyError) else str(info.value)
    assert text in message, message
    created = files_under(tmp_path) - before
    mine = {tmp_path / n for n in ("s.safetensors", "keep.safetensors", "teacher.ckpt")}  # hold the text "mine"
    user_files = {tmp_path / n for n in ("t.ckpt", "evil.ckpt")} | mine
    assert not (created - user_files), f"{case} left files behind: {sorted(map(str, created))}"
    for path in mine & files_under(tmp_path):
        assert path.read_text() == "mine", "a user file was overwritten"


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 30
