"""The embedding evaluation the MiniLM recipe reports: embedding cosine, neighbour agreement, size, speed, int8
quantization, and the callback's settings."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_distill.callbacks.embedding import (
    EmbeddingEval,
    compare_encoders,
    count_parameters,
    encode_rates,
    mean_cosine,
    nearest_neighbours,
    neighbour_agreement,
    quantize_int8,
    size_bytes,
)

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


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
    pytest.importorskip("torchao")
    from lit_distill.models.encoder import SentenceEncoder

    config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
              "max_position_embeddings": 64, "vocab_size": 300}  # fmt: skip
    model = SentenceEncoder(random_init=config).eval()
    int8 = quantize_int8(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    quantized = [m for m in int8.modules() if type(getattr(m, "weight", None)).__name__ == "Int8Tensor"]
    assert linears and len(quantized) == len(linears)  # every Linear holds torchao int8 weights
    assert count_parameters(int8) == count_parameters(model)
    linear_bytes = sum(m.weight.numel() * 4 for m in linears)
    assert size_bytes(model) - size_bytes(int8) > 0.6 * linear_bytes  # fp32 -> int8 saves ~3/4 of those weights
    sentences = ["Lists are mutable sequences.", "A tuple is immutable.", "Sets hold unique items only."]
    assert mean_cosine(int8.encode(sentences), model.encode(sentences)) > 0.99
    rates = encode_rates({"fp32": model, "int8": int8}, sentences, rounds=1)
    assert set(rates) == {"fp32", "int8"} and all(math.isfinite(r) and r > 0 for r in rates.values())
    rows = compare_encoders(model, {"int8": int8}, sentences, k=1, rounds=2, timed=None)
    assert [r["model"] for r in rows] == ["teacher", "int8"]
    assert rows[0]["speedup"] == rows[0]["cpu_speedup"] == 1.0 and rows[0]["speedup_range"] == "1.00-1.00"
    low, high = (float(x) for x in rows[1]["speedup_range"].split("-"))
    assert 0 < low - 0.005 <= rows[1]["speedup"] <= high + 0.005 and rows[1]["cpu_speedup"] > 0  # range: 2 decimals


def test_embedding_eval_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_sentences >= 2"):
        EmbeddingEval(max_sentences=1)
