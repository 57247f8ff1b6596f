"""ULD and AlignedSpanKD strategies: TokenKD on one tokenizer, the formulas at aligned positions, clear refusals."""

import json

import pytest
import torch
from lightning.pytorch import Trainer

from lit_distill import DistillationModule
from lit_distill.data import TextDataModule
from lit_distill.losses import ULD, AlignedSpanKD, TokenKD
from lit_distill.losses.functional import aligned_pairs, span_kd_terms, uld
from lit_distill.models import GPT
from lit_distill.outputs import ModelOutput

PAIRS = [("Q: café?", " A: a naïve 日本 answer"), ("Q: x", " A: y"), ("Say hi.", " Hi there, friend.")] * 3


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.configs.test_text_configs import make_tiny_hf_models

    texts = [p + r for p, r in PAIRS] * 20
    root = tmp_path_factory.mktemp("xtok_bpe")
    make_tiny_hf_models().build_tokenizer(300, texts=texts).save_pretrained(str(root))
    return str(root)


def data(tmp_path, tokenizer="bytes", teacher="bytes", seq_len=48):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS), encoding="utf-8")
    dm = TextDataModule(tokenizer=tokenizer, teacher_tokenizer=teacher, instructions=str(path), seq_len=seq_len,
                        batch_size=4, val_fraction=0.2, test_fraction=0.0)  # fmt: skip
    dm.setup()
    return dm, next(iter(dm.train_dataloader()))


def gpt(vocab, seed, width=32):
    torch.manual_seed(seed)
    return GPT(vocab_size=vocab, block_size=64, n_layer=1, n_head=2, n_embd=width)


def outputs(model, batch, prefix="", hidden=False):
    ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
    if hidden:
        return ModelOutput(hidden=model.forward_hidden(ids, mask), head=model.get_output_embeddings())
    return ModelOutput(logits=model(ids, mask))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("hidden", [False, True])
def test_one_tokenizer_on_both_sides_equals_token_kd(tmp_path, hidden, temperature):
    dm, batch = data(tmp_path)  # bytes on both sides: both tokenizations are the same
    student, teacher = gpt(258, 0), gpt(258, 1, width=48)
    s_out, t_out = outputs(student, batch, hidden=hidden), outputs(teacher, batch, "teacher_", hidden=hidden)
    span = AlignedSpanKD(temperature=temperature)
    span.connect_data(dm)
    terms = span(s_out, t_out, batch)
    assert terms["uld"].item() == 0.0  # every token has its twin: nothing is left for ULD
    got = terms["kl"] + terms["uld"]
    want = TokenKD(temperature=temperature)(s_out, t_out, batch)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    (g_span,) = torch.autograd.grad(got, student.head.weight, retain_graph=True)
    (g_token,) = torch.autograd.grad(want, student.head.weight)
    torch.testing.assert_close(g_span, g_token, rtol=1e-4, atol=1e-7)


def aligned_rows(batch):
    rows, s_pos, t_pos = aligned_pairs(
        batch["offsets"], batch["teacher_offsets"], batch["attention_mask"], batch["teacher_attention_mask"]
    )
    s_ok = (s_pos < batch["labels"].shape[1] - 1) & (t_pos < batch["teacher_labels"].shape[1] - 1)
    rows, s_pos, t_pos = rows[s_ok], s_pos[s_ok], t_pos[s_ok]
    learned = (batch["labels"][rows, s_pos + 1] != -100) & (batch["teacher_labels"][rows, t_pos + 1] != -100)
    return rows[learned], s_pos[learned], t_pos[learned]


@pytest.mark.parametrize("hidden", [False, True])
def test_uld_is_the_formula_at_the_aligned_learned_positions(tmp_path, bpe_dir, hidden):
    dm, batch = data(tmp_path, tokenizer=bpe_dir, teacher="bytes")
    student, teacher = gpt(dm.vocab_size, 0), gpt(258, 1)
    s_out, t_out = outputs(student, batch, hidden=hidden), outputs(teacher, batch, "teacher_", hidden=hidden)
    rows, s_pos, t_pos = aligned_rows(batch)
    assert 0 < len(rows) < int(batch["attention_mask"].sum())  # prompts and the last token are left out
    s_logits, t_logits = student(batch["input_ids"]), teacher(batch["teacher_input_ids"])
    want = uld(s_logits[rows, s_pos], t_logits[rows, t_pos], temperature=1.5)
    got = ULD(temperature=1.5, lm_weight=0.0)(s_out, t_out, batch)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.parametrize("match", ["token", "byte"])
def test_hybrid_uses_the_vocabulary_map_of_the_two_tokenizers(tmp_path, bpe_dir, match):
    dm, batch = data(tmp_path, tokenizer=bpe_dir, teacher="bytes")
    student, teacher = gpt(dm.vocab_size, 0), gpt(258, 1)
    loss = AlignedSpanKD(match=match, uld_weight=0.5, lm_weight=0.3)
    loss.connect_data(dm)
    terms = loss(outputs(student, batch, hidden=True), outputs(teacher, batch, "teacher_", hidden=True), batch)
    rows, s_pos, t_pos = aligned_rows(batch)
    s_cls, t_cls = loss.classes(dm.vocab_size, 258, torch.device("cpu"))
    s_logits, t_logits = student(batch["input_ids"]), teacher(batch["teacher_input_ids"])
    kl, w1 = span_kd_terms(s_logits[rows, s_pos], t_logits[rows, t_pos], s_cls, t_cls)
    assert terms["kl"].item() == pytest.approx(kl.item(), abs=1e-6)
    assert terms["uld"].item() == pytest.approx(0.5 * w1.item(), abs=1e-6)
    # "byte": every token is matched by its first byte, so nothing is left for ULD; "token": the BPE's multi-byte
    # tokens have no twin among the bytes.
    assert (w1.item() == 0.0) == (match == "byte") and int((t_cls >= 0).sum()) == 258  # bytes, eos, pad
    ce = torch.nn.functional.cross_entropy(s_logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
    assert terms["lm"].item() == pytest.approx(0.3 * ce.item(), rel=1e-5)


def test_a_top_k_teacher_cache_reads_as_the_full_teacher_when_k_is_the_vocabulary(tmp_path, bpe_dir):
    dm, batch = data(tmp_path, tokenizer=bpe_dir, teacher="bytes")
    student, teacher = gpt(dm.vocab_size, 0), gpt(258, 1)
    s_out = outputs(student, batch)
    t_logits = teacher(batch["teacher_input_ids"]).detach()
    values, indices = t_logits.topk(258, -1)
    cached = ModelOutput(extra={"topk_values": values, "topk_indices": indices})
    loss = AlignedSpanKD(match="byte")
    loss.connect_data(dm)
    want = loss(s_out, ModelOutput(logits=t_logits), batch)
    got = loss(s_out, cached, batch)
    assert got["kl"].item() == pytest.approx(want["kl"].item(), abs=1e-6)


def test_a_batch_with_one_tokenization_is_refused_naming_teacher_tokenizer():
    out = ModelOutput(logits=torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="teacher_tokenizer"):
        ULD()(out, out, {"input_ids": torch.zeros(1, 3, dtype=torch.long)})


def test_the_hybrid_without_vocabularies_says_where_they_come_from(tmp_path):
    _, batch = data(tmp_path)
    out = ModelOutput(logits=torch.zeros(*batch["input_ids"].shape, 258))
    t_out = ModelOutput(logits=torch.zeros(*batch["teacher_input_ids"].shape, 258))
    with pytest.raises(ValueError, match=r"use_vocabularies\(datamodule.vocabularies\(\)\)"):
        AlignedSpanKD()(out, t_out, batch)


def test_models_must_speak_the_datas_tokenizers_and_cover_them(tmp_path, bpe_dir):
    dm, _ = data(tmp_path, tokenizer=bpe_dir, teacher="bytes")
    loss = AlignedSpanKD()
    loss.connect_data(dm)
    student = gpt(dm.vocab_size, 0)
    loss.check_models(student, gpt(258, 1))  # accepted: no declared ids, heads wide enough
    with pytest.raises(ValueError, match="teacher declares tokenizer 'hf:x'.*teacher_tokenizer"):
        bad = gpt(258, 1)
        bad.tokenizer_id = "hf:x"
        loss.check_models(student, bad)
    with pytest.raises(ValueError, match="teacher produces 200 logits but its tokenizer has 258"):
        loss.check_models(student, gpt(200, 1))


def test_token_kd_refusal_names_the_cross_tokenizer_strategy():
    s, t = gpt(258, 0), gpt(300, 1)
    s.tokenizer_id, t.tokenizer_id = "bytes", "hf:abc"
    with pytest.raises(ValueError, match="AlignedSpanKD.*teacher_tokenizer"):
        TokenKD().check_models(s, t)


@pytest.mark.parametrize("kw", [{"temperature": 0}, {"uld_top_k": 0}, {"chunk_size": 0}, {"lm_weight": -1}])
def test_bad_arguments_are_refused(kw):
    with pytest.raises(ValueError):
        ULD(**kw)
    with pytest.raises(ValueError, match="match"):
        AlignedSpanKD(match="word")


def test_a_bytes_teacher_distills_into_a_bpe_student_through_lightning(tmp_path, bpe_dir):
    dm, _ = data(tmp_path, tokenizer=bpe_dir, teacher="bytes")
    module = DistillationModule(
        student=gpt(dm.vocab_size, 0), teacher=gpt(258, 1), losses=[AlignedSpanKD(match="byte", lm_weight=1.0)]
    )
    trainer = Trainer(max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    before = module.student.head.weight.detach().clone()
    trainer.fit(module, datamodule=dm)
    assert not torch.equal(before, module.student.head.weight)
    metrics = trainer.callback_metrics
    assert {"val/span_kd/kl", "val/span_kd/lm", "val/student_ppl", "val/teacher_ppl"} <= set(metrics)
    assert "val/agreement" not in metrics  # top-1 agreement needs one tokenization


@pytest.mark.parametrize("top_k", [None, 16])
def test_a_teacher_cached_under_its_own_tokenizer_gives_the_live_teachers_loss(tmp_path, bpe_dir, top_k):
    from lit_distill.cache import CachedTeacher, TeacherCacheWriter
    from lit_distill.data import CachedTeacherDataModule

    dm, _ = data(tmp_path, tokenizer=bpe_dir, teacher="bytes")
    teacher, loss = gpt(258, 1), AlignedSpanKD(match="byte")
    module = DistillationModule(student=gpt(dm.vocab_size, 0), teacher=teacher, losses=[loss])
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"}
    cached = CachedTeacherDataModule(dm, str(tmp_path / "cache"), splits=["train"])
    Trainer(callbacks=[TeacherCacheWriter(top_k=top_k)], **quiet).predict(module, datamodule=cached)
    batch = next(iter(cached.train_dataloader()))
    stored = batch["teacher_outputs"]
    assert (stored.logits if top_k is None else stored.extra["topk_values"]).shape[1] == batch[
        "teacher_input_ids"
    ].shape[1]
    loss.connect_data(cached)  # the wrapper hands the wrapped module's vocabularies through
    s_out = outputs(module.student, batch)
    t_logits = teacher(batch["teacher_input_ids"], batch["teacher_attention_mask"]).detach()
    if top_k is not None:  # the cache's convention: the teacher renormalised over its k best tokens
        t_logits = t_logits.where(t_logits >= t_logits.topk(top_k, -1).values[..., -1:], float("-inf"))
    live = loss(s_out, ModelOutput(logits=t_logits), batch)
    got = loss(s_out, stored, batch)
    assert got["kl"].item() == pytest.approx(live["kl"].item(), abs=1e-6 if top_k is None else 1e-3)  # fp16 values
    stand_in = DistillationModule(student=gpt(dm.vocab_size, 0), teacher=CachedTeacher(), losses=[AlignedSpanKD()])
    Trainer(max_steps=2, limit_val_batches=0, enable_checkpointing=False, **quiet).fit(stand_in, datamodule=cached)


@pytest.mark.parametrize("hidden", [False, True])
def test_a_batch_where_nothing_aligns_gives_zero_and_a_gradient(hidden):
    ids = torch.tensor([[1, 2, 3]])
    batch = {"input_ids": ids, "labels": ids, "offsets": torch.tensor([[[0, 1], [1, 3], [3, 5]]])}
    batch |= {
        "teacher_input_ids": ids,
        "teacher_labels": ids,
        "teacher_offsets": torch.tensor([[[0, 2], [2, 4], [4, 6]]]),
    }
    student, teacher = gpt(258, 0), gpt(258, 1)
    loss = AlignedSpanKD(lm_weight=0.0)
    loss.use_vocabularies(TextDataModule().vocabularies())
    terms = loss(outputs_of(student, ids, hidden), outputs_of(teacher, ids, hidden), batch)
    total = terms["kl"] + terms["uld"]
    total.backward()
    assert total.item() == 0.0 and student.head.weight.grad is not None


def outputs_of(model, ids, hidden):
    if hidden:
        return ModelOutput(hidden=model.forward_hidden(ids), head=model.get_output_embeddings())
    return ModelOutput(logits=model(ids))
