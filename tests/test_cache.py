"""Teacher cache writer/reader: top-k and token-level outputs, stale caches refused, interrupted writes resumed."""

import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule
from torch import nn
from torch.utils.data import DataLoader

from lit_distill import DistillationModule, LogitKD
from lit_distill.batch import cached_teacher_output
from lit_distill.cache import CacheReader, TeacherCacheWriter
from lit_distill.cache.fingerprint import fingerprint_dataset
from lit_distill.cache.manifest import read_manifest
from lit_distill.data import CachedTeacherDataModule
from lit_distill.losses.topk import TOPK_INDICES, TOPK_TAIL, TOPK_TAIL_TEMPERATURE, TOPK_VALUES
from lit_distill.models import MLP
from tests.helpers import digits_like, trainer


class ToyData(LightningDataModule):
    """Digits-shaped random data: (x [64], y) tuples; the seed picks the samples."""

    def __init__(self, n=96, batch_size=16, shuffle=True, num_workers=0, seed=0):
        super().__init__()
        self.n, self.batch_size, self.shuffle, self.num_workers, self.seed = n, batch_size, shuffle, num_workers, seed

    def setup(self, stage=None):
        self.sets = {"train": digits_like(self.n, seed=self.seed), "val": digits_like(32, seed=self.seed + 100)}

    def _loader(self, split, shuffle):
        return DataLoader(
            self.sets[split],
            self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train", self.shuffle)

    def val_dataloader(self):
        return self._loader("val", False)


class ToyLM(nn.Module):
    """Token-wise toy language model: logits[b, t] depend on token t only (enough for cache plumbing)."""

    def __init__(self, vocab=40, hidden=8):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, hidden), nn.Linear(hidden, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.tanh(self.emb(input_ids)))

    def get_output_embeddings(self):
        return self.head


class TokenData(LightningDataModule):
    """Variable-length token sequences, right-padded per batch: dict batches like TextDataModule's instructions."""

    def __init__(self, batch_size=4, shuffle=False, vocab=40, fixed=0):
        super().__init__()
        self.batch_size, self.shuffle, self.vocab, self.fixed = batch_size, shuffle, vocab, fixed

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(3)
        self.rows = [
            torch.randint(1, self.vocab, (self.fixed or int(torch.randint(3, 12, (1,), generator=g)),), generator=g)
            for _ in range(22)
        ]

    def collate(self, rows):
        if self.fixed:  # fixed-length blocks without a mask, like TextDataModule on a plain corpus
            ids = torch.stack(rows)
            return {"input_ids": ids, "labels": ids}
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    def train_dataloader(self):
        return DataLoader(self.rows, self.batch_size, shuffle=self.shuffle, collate_fn=self.collate)


def module_with(teacher, **kwargs):
    torch.manual_seed(0)
    return DistillationModule(
        student=kwargs.pop("student", MLP(64, [16], 10)),
        teacher=teacher,
        losses=kwargs.pop("losses", [LogitKD(temperature=2.0)]),
        allow_untrained_teacher=kwargs.pop("allow_untrained_teacher", True),  # random teachers on purpose
        **kwargs,
    )


def write(tmp_path, module, data, cache="cache", splits=None, **writer_kwargs):
    dm = CachedTeacherDataModule(data, str(tmp_path / cache), splits=splits)
    trainer(tmp_path, callbacks=[TeacherCacheWriter(**writer_kwargs)]).predict(module, datamodule=dm)
    return dm


def count_rows(model):
    seen = []
    model.register_forward_hook(lambda _m, args, _o: seen.append(int(args[0].shape[0])))
    return seen


@pytest.mark.parametrize("tail", [True, False])
def test_top_k_cache_stores_fp16_values_and_gives_the_direct_formula_loss(tmp_path, tail):
    """Top-k values (fp16), ids, and by default the teacher's log mass outside them (the tail bucket, float32, at
    the loss's temperature); the cached loss is the formula over the k + 1 outcomes, or renormalised over the k."""
    teacher = MLP(64, [32], 10)
    module = module_with(teacher)
    write(tmp_path, module, ToyData(), top_k=3, splits=["train"], tail_temperature=2.0 if tail else None)
    manifest = read_manifest(tmp_path / "cache")
    assert manifest["format"] == "lit-distill-teacher-cache/2"
    assert manifest["fields"][TOPK_VALUES] == {"dtype": "float16", "shape": [3], "per_token": False}
    assert manifest["fields"][TOPK_INDICES]["dtype"] == "int32" and "logits" not in manifest["fields"]
    assert manifest["settings"]["tail_temperature"] == (2.0 if tail else None)
    assert (TOPK_TAIL in manifest["fields"]) == tail
    dm = CachedTeacherDataModule(ToyData(), str(tmp_path / "cache"), splits=["train"])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    out = cached_teacher_output(batch)
    live = teacher(batch[0])
    values, indices = live.topk(3, dim=-1)
    assert out.logits is None and out.extra[TOPK_VALUES].dtype == torch.float16
    assert torch.equal(out.extra[TOPK_INDICES].long(), indices)
    torch.testing.assert_close(out.extra[TOPK_VALUES], values.half(), rtol=1e-3, atol=1e-3)
    if tail:
        p_live = torch.softmax(live.double() / 2.0, -1)
        want_tail = (1 - p_live.gather(-1, indices).sum(-1)).log()
        torch.testing.assert_close(out.extra[TOPK_TAIL].double(), want_tail, rtol=1e-5, atol=1e-6)
        assert out.extra[TOPK_TAIL_TEMPERATURE] == 2.0
    # Loss through the module (teacher skipped) vs the textbook formula on the stored numbers.
    loss, _, student_out, _ = module.shared_step(batch)
    s, t2 = student_out.logits.double(), 4.0
    v, i = out.extra[TOPK_VALUES].double(), out.extra[TOPK_INDICES].long()
    want = 0.0
    for row in range(len(s)):
        p = torch.softmax(v[row] / 2.0, -1)
        log_q = torch.log_softmax(s[row] / 2.0, -1)
        log_q_k = log_q[i[row]]
        if tail:  # k + 1 outcomes: the teacher's k scaled by its mass inside, and the tail bucket
            p_tail = float(out.extra[TOPK_TAIL][row].double().exp())
            p = p * (1 - p_tail)
            q_tail = 1 - float(log_q_k.exp().sum())
            want += p_tail * (math.log(p_tail) - math.log(q_tail)) * t2
        want += float((p * (p.log() - log_q_k)).sum().detach()) * t2
    # float32 loss of a small KL (p close to q) against float64: about 1e-5 relative rounding
    assert loss.item() == pytest.approx(want / len(s), rel=1e-4)


def test_token_level_dict_batches_read_back_under_other_padding(tmp_path):
    teacher = ToyLM()
    module = module_with(teacher, student=ToyLM(hidden=4))
    write(tmp_path, module, TokenData(batch_size=4), splits=["train"], features=["emb"])
    write(tmp_path, module, TokenData(batch_size=4), cache="topk", splits=["train"], top_k=5, dtype="bf16")
    manifest = read_manifest(tmp_path / "cache")
    assert manifest["fields"]["logits"]["per_token"] and manifest["fields"]["features/emb"]["shape"] == [8]
    for cache in ("cache", "topk"):
        dm = CachedTeacherDataModule(TokenData(batch_size=3, shuffle=True), str(tmp_path / cache), splits=["train"])
        dm.setup("fit")
        for batch in dm.train_dataloader():
            out, valid = cached_teacher_output(batch), batch["attention_mask"].bool()
            live = teacher(batch["input_ids"])
            if cache == "cache":
                torch.testing.assert_close(out.logits[valid], live[valid])
                assert not out.logits[~valid].any()  # padding positions are zeros
                assert torch.equal(out.features["emb"][valid], teacher.emb(batch["input_ids"])[valid])
            else:
                values, indices = live.topk(5, dim=-1)
                assert out.extra[TOPK_VALUES].dtype == torch.bfloat16
                torch.testing.assert_close(out.extra[TOPK_VALUES][valid], values[valid].bfloat16())
                assert torch.equal(out.extra[TOPK_INDICES][valid].long(), indices[valid])


def test_unpadded_token_batches_read_back_in_any_order(tmp_path):
    """Fixed-length blocks take the reader's one-gather-per-shard path; shuffled batches get their own rows."""
    teacher = ToyLM()
    module = module_with(teacher, student=ToyLM(hidden=4))
    write(tmp_path, module, TokenData(batch_size=4, fixed=7), splits=["train"], top_k=5, dtype="fp16")
    dm = CachedTeacherDataModule(TokenData(batch_size=5, shuffle=True, fixed=7), str(tmp_path / "cache"), ["train"])
    dm.setup("fit")
    seen = 0
    for batch in dm.train_dataloader():
        out = cached_teacher_output(batch)
        values, indices = teacher(batch["input_ids"]).topk(5, dim=-1)
        torch.testing.assert_close(out.extra[TOPK_VALUES], values.half(), rtol=1e-3, atol=1e-3)
        assert torch.equal(out.extra[TOPK_INDICES].long(), indices)
        seen += len(batch["input_ids"])
    assert seen == 22


def test_stale_or_foreign_caches_are_refused(tmp_path):
    teacher = MLP(64, [32], 10)
    write(tmp_path, module_with(teacher), ToyData())
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match=r"(?s)stale teacher cache.*train\.fingerprint: cache [0-9a-f]{16}\.\.\."):
        CachedTeacherDataModule(ToyData(seed=1), cache).setup("fit")
    with pytest.raises(ValueError, match=r"(?s)train\.num_samples: cache 96, now 80"):
        CachedTeacherDataModule(ToyData(n=80), cache).setup("fit")
    other = MLP(64, [32], 10)
    with pytest.raises(ValueError, match=r"(?s)written by another teacher.*teacher\.fingerprint"):
        CachedTeacherDataModule(ToyData(), cache).verify_model(module_with(other))
    with pytest.raises(ValueError, match=r"(?s)other settings.*settings\.top_k: cache None, now 4.*overwrite: true"):
        write(tmp_path, module_with(teacher), ToyData(), top_k=4)
    with pytest.raises(ValueError, match=r"(?s)other settings.*teacher\.fingerprint"):
        write(tmp_path, module_with(other), ToyData())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="holds no lit-distill teacher cache"):
        write(tmp_path, module_with(teacher), ToyData(), cache="mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "user data"
    with pytest.raises(FileNotFoundError, match="no teacher cache in"):
        CachedTeacherDataModule(ToyData(), str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(ValueError, match="has no 'test' split"):
        CachedTeacherDataModule(ToyData(), cache, splits=["test"]).reader("test")


def test_finished_cache_is_kept_unless_overwrite(tmp_path):
    teacher = MLP(64, [32], 10)
    module = module_with(teacher)
    write(tmp_path, module, ToyData())
    first = sorted(p.stat().st_mtime_ns for p in (tmp_path / "cache" / "train").rglob("*.npy"))
    rows = count_rows(teacher)
    write(tmp_path, module, ToyData())  # same settings: nothing to do, nothing touched
    assert rows == [] and sorted(p.stat().st_mtime_ns for p in (tmp_path / "cache" / "train").rglob("*.npy")) == first
    dm = CachedTeacherDataModule(ToyData(), str(tmp_path / "cache"))
    smoke = trainer(tmp_path, fast_dev_run=True, callbacks=[TeacherCacheWriter(top_k=4, overwrite=True)])
    smoke.predict(module, datamodule=dm)  # a smoke run with overwrite checks, runs one batch, deletes nothing
    assert read_manifest(tmp_path / "cache")["settings"]["top_k"] is None and sum(rows) == 16 + 16
    rows.clear()
    write(tmp_path, module, ToyData(), top_k=4, overwrite=True)
    assert read_manifest(tmp_path / "cache")["settings"]["top_k"] == 4 and sum(rows) == 96 + 32


class StopAfter(Callback):
    def __init__(self, batches):
        self.batches = batches

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx + 1 == self.batches:
            raise RuntimeError("simulated crash")


def test_interrupted_write_resumes_where_it_stopped(tmp_path):
    teacher = MLP(64, [32], 10)
    module = module_with(teacher)
    dm = CachedTeacherDataModule(ToyData(batch_size=10), str(tmp_path / "cache"), splits=["train"])
    rows = count_rows(teacher)
    crash = trainer(tmp_path, callbacks=[TeacherCacheWriter(shard_mb=1e-3), StopAfter(3)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crash.predict(module, datamodule=dm)
    assert sum(rows) == 30 and not read_manifest(tmp_path / "cache")["splits"]["train"]["complete"]
    with pytest.raises(ValueError, match="unfinished"):
        CachedTeacherDataModule(ToyData(), str(tmp_path / "cache"), splits=["train"]).setup("fit")
    (tmp_path / "cache" / "train" / "shard-000099.tmp").mkdir()  # a shard torn mid-write
    rows.clear()
    write(tmp_path, module, ToyData(batch_size=10), splits=["train"], shard_mb=1e-3)
    assert sum(rows) == 96 - 30 and not list((tmp_path / "cache" / "train").glob("*.tmp"))
    reader = CacheReader(tmp_path / "cache", "train")
    x = digits_like(96)[:][0]
    with torch.no_grad():
        torch.testing.assert_close(reader.gather(np.arange(96), None).logits, teacher(x))


def test_fast_dev_run_writes_nothing_and_bad_settings_fail_early(tmp_path):
    module = module_with(MLP(64, [32], 10))
    dm = CachedTeacherDataModule(ToyData(), str(tmp_path / "cache"))
    trainer(tmp_path, fast_dev_run=True, callbacks=[TeacherCacheWriter()]).predict(module, datamodule=dm)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="max_full_vocab=8"):
        write(tmp_path, module, ToyData(), max_full_vocab=8)
    with pytest.raises(ValueError, match="not below the teacher's 10 classes"):
        write(tmp_path, module, ToyData(), cache="c2", top_k=10)
    with pytest.raises(KeyError, match="no submodule named 'body.9'"):
        write(tmp_path, module, ToyData(), cache="c3", features=["body.9"])
    with pytest.raises(ValueError, match="dtype must be fp32, fp16 or bf16"):
        TeacherCacheWriter(dtype="int8")
    with pytest.raises(ValueError, match="needs the real teacher"):
        write(tmp_path, module_with(None, losses=None), ToyData(), cache="c4")


def test_fingerprints_notice_order_and_content():
    a = digits_like(50, seed=0)
    assert fingerprint_dataset(a) == fingerprint_dataset(digits_like(50, seed=0))
    assert fingerprint_dataset(a) != fingerprint_dataset(digits_like(50, seed=1))
    one, other = [{"x": torch.ones(2)}, (1, "a")], [{"x": torch.ones(2)}, (1, "b")]
    assert fingerprint_dataset(one) != fingerprint_dataset(other)
    with pytest.raises(TypeError, match="fingerprint_samples: 0"):
        fingerprint_dataset([object()])
    assert fingerprint_dataset([object()], samples=0) != fingerprint_dataset([object(), object()], samples=0)


def test_a_damaged_shard_is_named_and_a_rerun_rewrites_only_it(tmp_path):
    teacher = MLP(64, [32], 10)
    module = module_with(teacher)
    write(tmp_path, module, ToyData(batch_size=16), splits=["train"], shard_mb=5e-4)
    shards = sorted((tmp_path / "cache" / "train").iterdir())
    assert len(shards) == 6
    logits, ids = shards[2] / "logits.npy", shards[4] / "ids.npy"
    # a copy cut short ("mmap length is greater than file size"), a header cut off ("EOF: reading array header")
    for damaged, keep in ((logits, -100), (ids, 20)):
        intact = damaged.read_bytes()
        damaged.write_bytes(intact[:keep])
        with pytest.raises(ValueError, match=rf"(?s)is damaged: {damaged}.*predict` command that wrote it again"):
            CachedTeacherDataModule(ToyData(), str(tmp_path / "cache"), splits=["train"]).setup("fit")
        if damaged == logits:
            damaged.write_bytes(intact)
    logits.write_bytes(logits.read_bytes()[:-100])
    rows = count_rows(teacher)
    write(tmp_path, module, ToyData(batch_size=16), splits=["train"], shard_mb=5e-4)  # the natural fix: run again
    assert sum(rows) == 32  # the two damaged shards' samples, nothing else
    with torch.no_grad():
        got = CacheReader(tmp_path / "cache", "train").gather(np.arange(96), None).logits
        torch.testing.assert_close(got, teacher(digits_like(96)[:][0]))


def test_a_damaged_manifest_is_named_and_overwrite_rewrites_it(tmp_path):
    module = module_with(MLP(64, [32], 10))
    write(tmp_path, module, ToyData(), splits=["train"])
    manifest = tmp_path / "cache" / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(ValueError, match="manifest.json' is damaged.*overwrite: true"):
        write(tmp_path, module, ToyData(), splits=["train"])
    write(tmp_path, module, ToyData(), splits=["train"], overwrite=True)
    assert read_manifest(tmp_path / "cache")["splits"]["train"]["complete"]


def test_a_cache_stand_in_tells_token_losses_the_teachers_tokenizer_and_vocabulary(tmp_path):
    """TokenKD learns the teacher's tokenizer and logits width from the manifest, as it would from the model."""
    from lit_distill.cache import CachedTeacher
    from lit_distill.losses import TokenKD

    teacher = ToyLM(vocab=40)
    teacher.tokenizer_id = "toy"
    write(tmp_path, module_with(teacher, student=ToyLM(), losses=[TokenKD()]), TokenData(), splits=["train"], top_k=5)
    assert read_manifest(tmp_path / "cache")["teacher_model"] == {"tokenizer_id": "toy", "num_logits": 40}

    def fit(student_vocab, student_tokenizer):
        student = ToyLM(vocab=student_vocab)
        student.tokenizer_id = student_tokenizer
        module = DistillationModule(student=student, teacher=CachedTeacher(), losses=[TokenKD()])
        dm = CachedTeacherDataModule(TokenData(), str(tmp_path / "cache"), splits=["train"])
        trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=dm)
        return module.losses[0]

    assert fit(44, "toy").shared_vocab == 40  # the student's 4 padded rows stay out of its softmax
    with pytest.raises(ValueError, match="the student speaks tokenizer 'other' and the teacher 'toy'"):
        fit(40, "other")
