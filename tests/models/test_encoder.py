"""SentenceEncoder: pooling as configured, student initialisation from teacher layers, export and reload."""

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from lit_distill.features import FeatureTaps  # noqa: E402
from lit_distill.models.encoder import SentenceEncoder, mean_pool, read_pooling  # noqa: E402
from lit_distill.models.encoder_init import every_other, shrink  # noqa: E402

TINY = {"hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": 64, "vocab_size": 300}  # fmt: skip
SENTENCES = ["Lists are mutable sequences.", "A tuple is immutable, so it can be a key.", "Hello there world!"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teacher():
    return SentenceEncoder(random_init=TINY, seed=0).eval()


def test_mean_pool_matches_a_loop_over_unpadded_tokens():
    states = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected = torch.stack([states[i, : int(mask[i].sum())].mean(0) for i in range(3)])
    torch.testing.assert_close(mean_pool(states, mask), expected)


def test_embedding_is_normalized_mean_of_last_hidden_state(teacher):
    batch = teacher.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    out = teacher(batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = teacher.model(**batch).last_hidden_state
    lengths = batch["attention_mask"].sum(1)
    direct = torch.stack([hidden[i, : lengths[i]].mean(0) for i in range(len(SENTENCES))])
    torch.testing.assert_close(out.extra["embedding"], F.normalize(direct, dim=-1), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_a_sentence_embedding(teacher):
    alone = teacher.encode(SENTENCES[:1])
    padded = teacher.encode(SENTENCES)[:1]  # padded up to the longest sentence of the batch
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_every_other_layer_choice():
    assert every_other(6, 3) == [0, 2, 4]
    assert every_other(12, 6) == [0, 2, 4, 6, 8, 10]
    assert every_other(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="num_layers must lie in"):
        every_other(6, 7)


def test_student_layers_are_copies_of_the_chosen_teacher_layers(teacher):
    student = SentenceEncoder(random_init=TINY, seed=0, layers=[1, 3])
    assert student.config.num_hidden_layers == 2
    t, s = teacher.model.state_dict(), student.model.state_dict()
    for j, i in enumerate([1, 3]):
        for key in [k for k in t if k.startswith(f"encoder.layer.{i}.")]:
            torch.testing.assert_close(s[key.replace(f"layer.{i}.", f"layer.{j}.")], t[key], rtol=0, atol=0)
    for key in [k for k in t if not k.startswith("encoder.layer.")]:
        torch.testing.assert_close(s[key], t[key], rtol=0, atol=0)


def test_keeping_every_layer_and_neuron_reproduces_the_teacher(teacher):
    copy = SentenceEncoder(random_init=TINY, seed=0, layers=[0, 1, 2, 3], intermediate_size=32).eval()
    torch.testing.assert_close(copy.encode(SENTENCES), teacher.encode(SENTENCES), rtol=0, atol=1e-6)


def test_ffn_pruning_keeps_the_neurons_with_largest_in_out_norm(teacher):
    small = shrink(teacher.model, [2], intermediate_size=8)
    w_in = teacher.model.state_dict()["encoder.layer.2.intermediate.dense.weight"]
    w_out = teacher.model.state_dict()["encoder.layer.2.output.dense.weight"]
    scores = [float(w_in[k].norm() * w_out[:, k].norm()) for k in range(w_in.shape[0])]
    keep = sorted(sorted(range(len(scores)), key=lambda k: -scores[k])[:8])
    state = small.state_dict()
    torch.testing.assert_close(state["encoder.layer.0.intermediate.dense.weight"], w_in[keep], rtol=0, atol=0)
    torch.testing.assert_close(state["encoder.layer.0.output.dense.weight"], w_out[:, keep], rtol=0, atol=0)
    assert small.config.intermediate_size == 8


def test_attention_taps_give_probabilities_and_change_nothing(teacher):
    eager = SentenceEncoder(random_init=TINY, seed=0, expose_attentions=True).eval()
    batch = eager.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    taps = FeatureTaps(eager, ["attentions.1", "model.encoder.layer.1"])
    with taps.capture() as feats:
        out = eager(batch["input_ids"], attention_mask=batch["attention_mask"])
    taps.remove()
    probs = feats["attentions.1"]
    assert probs.shape == (3, 2, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert feats["model.encoder.layer.1"].shape == (*batch["input_ids"].shape, 16)
    torch.testing.assert_close(out.extra["embedding"], teacher.encode(SENTENCES), atol=1e-5, rtol=1e-5)


def test_dropout_override_reaches_every_dropout_module():
    student = SentenceEncoder(random_init=TINY, dropout=0.0)
    assert all(m.p == 0.0 for m in student.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(ValueError, match="dropout must lie in"):
        SentenceEncoder(random_init=TINY, dropout=1.5)


def test_export_reloads_in_transformers_and_here(teacher, tmp_path):
    teacher.save_pretrained(tmp_path)
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert read_pooling(tmp_path) == {"normalize": True, "max_seq_length": teacher.max_length}
    expected = teacher.encode(SENTENCES)
    torch.testing.assert_close(SentenceEncoder(path=str(tmp_path)).encode(SENTENCES), expected, rtol=0, atol=1e-6)

    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(tmp_path).eval(), AutoTokenizer.from_pretrained(tmp_path)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    plain = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(plain, expected, rtol=0, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="sentence-transformers absent")
def test_export_loads_in_sentence_transformers(teacher, tmp_path):
    from sentence_transformers import SentenceTransformer

    teacher.save_pretrained(tmp_path)
    loaded = SentenceTransformer(str(tmp_path), device="cpu")
    torch.testing.assert_close(torch.tensor(loaded.encode(SENTENCES)), teacher.encode(SENTENCES), rtol=0, atol=1e-5)


def test_pooling_config_is_read_and_unsupported_modes_rejected(tmp_path):
    assert read_pooling(tmp_path) == {"normalize": False, "max_seq_length": None}  # plain transformers folder
    (tmp_path / "pool").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([{"path": "pool", "type": "x.Pooling"}]))
    (tmp_path / "pool/config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert read_pooling(tmp_path)["normalize"] is False
    (tmp_path / "pool/config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(ValueError, match=r"pooling modes \['cls_token'\] are not supported"):
        read_pooling(tmp_path)


def test_bad_sources_fail_early_with_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="exactly one of path"):
        SentenceEncoder()
    with pytest.raises(ValueError, match="exactly one of path"):
        SentenceEncoder(path=str(tmp_path), random_init=TINY)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        SentenceEncoder(path=str(tmp_path / "missing"))
    with pytest.raises(ImportError, match=r'pip install -e "\.\[minilm\]"'):
        SentenceEncoder(package="no_such_teacher_package_xyz")
    with pytest.raises(ValueError, match="not both"):
        SentenceEncoder(random_init=TINY, layers=[0], num_layers=1)
    with pytest.raises(ValueError, match=r"layers \[0, 7\] must be distinct indices in \[0, 3\]"):
        SentenceEncoder(random_init=TINY, layers=[0, 7])
    with pytest.raises(ValueError, match=r"layers \[1, 1\] must be distinct"):
        SentenceEncoder(random_init=TINY, layers=[1, 1])
    with pytest.raises(ValueError, match="intermediate_size must lie in"):
        SentenceEncoder(random_init=TINY, intermediate_size=64)
