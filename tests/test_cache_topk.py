"""Top-k teacher caches: the tail bucket on padded token batches, caches written before it, and the writer as a
prediction writer over the module's own predictions."""

import json
import math

import numpy as np
import pytest
import torch

from lit_distill import DistillationModule
from lit_distill.batch import cached_teacher_output
from lit_distill.cache import CacheReader, TeacherCacheWriter
from lit_distill.cache.manifest import read_manifest
from lit_distill.data import CachedTeacherDataModule
from lit_distill.losses import TokenKD
from lit_distill.losses.arguments import DIVERGENCES
from lit_distill.losses.topk import TOPK_TAIL, TOPK_TAIL_TEMPERATURE
from lit_distill.outputs import ModelOutput
from tests.helpers import trainer
from tests.losses.test_sequence import direct
from tests.test_cache import TokenData, ToyData, ToyLM, module_with, write


def coarse(logits, ids):
    """Log-probabilities of the k + 1 outcomes: the ids, then everything else."""
    lp = logits.double().log_softmax(-1)
    return torch.cat([lp[ids], lp.scatter(0, ids, -math.inf).logsumexp(0)[None]])


@pytest.mark.parametrize("name", DIVERGENCES)
def test_token_kd_from_a_padded_top_k_cache_with_its_tail(tmp_path, name):
    """Right-padded token batches in another order than written: every divergence is the formula over the k + 1
    outcomes at the counted positions, finite (padding holds zeros, which must not turn into inf or NaN)."""
    teacher = ToyLM()
    module = module_with(teacher, student=ToyLM(hidden=4), losses=[TokenKD(name, beta=0.3)])
    write(tmp_path, module, TokenData(batch_size=4), splits=["train"], top_k=5)
    assert read_manifest(tmp_path / "cache")["fields"][TOPK_TAIL] == {
        "dtype": "float32",
        "shape": [],
        "per_token": True,
    }
    dm = CachedTeacherDataModule(TokenData(batch_size=3, shuffle=True), str(tmp_path / "cache"), splits=["train"])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    out = cached_teacher_output(batch)
    assert out.extra[TOPK_TAIL_TEMPERATURE] == 1.0
    student = module.student(batch["input_ids"]).detach().requires_grad_()
    loss = module.losses[0](ModelOutput(logits=student), out, batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    live = teacher(batch["input_ids"]).detach()
    rows = []
    for b in range(batch["input_ids"].shape[0]):
        for pos in range(batch["input_ids"].shape[1] - 1):
            if batch["labels"][b, pos + 1] == -100:
                continue
            ids = live[b, pos].topk(5).indices
            rows.append(float(direct(name, coarse(student[b, pos], ids), coarse(live[b, pos], ids), beta=0.3)))
    assert loss.item() == pytest.approx(sum(rows) / len(rows), rel=1e-4)


def downgrade(cache):
    """Make ``cache`` what a version before the tail bucket wrote: format /1, no tail field, no tail setting."""
    manifest = read_manifest(cache)
    manifest["format"] = "lit-distill-teacher-cache/1"
    del manifest["fields"][TOPK_TAIL], manifest["settings"]["tail_temperature"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    for shard in (cache / "train").iterdir():
        (shard / f"{TOPK_TAIL}.npy").unlink()


def test_a_cache_written_before_the_tail_bucket_still_loads(tmp_path):
    teacher = ToyLM()
    module = module_with(teacher, student=ToyLM(hidden=4), losses=[TokenKD()])
    write(tmp_path, module, TokenData(batch_size=4), splits=["train"], top_k=5)
    downgrade(tmp_path / "cache")
    assert CacheReader(tmp_path / "cache", "train").tail_temperature is None
    dm = CachedTeacherDataModule(TokenData(batch_size=3), str(tmp_path / "cache"), splits=["train"])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    out = cached_teacher_output(batch)
    assert TOPK_TAIL not in out.extra
    student = ModelOutput(logits=module.student(batch["input_ids"]))
    with pytest.raises(ValueError, match=r"not the teacher's mass outside them.*Rewrite it.*topk_tail: false"):
        TokenKD()(student, out, batch)
    assert torch.isfinite(TokenKD(topk_tail=False)(student, out, batch))
    # Writing on with today's default (a tail) asks to rewrite it; overwrite does, with the tail.
    with pytest.raises(ValueError, match=r"(?s)other settings.*settings\.tail_temperature: cache None, now 1\.0"):
        write(tmp_path, module, TokenData(batch_size=4), splits=["train"], top_k=5)
    write(tmp_path, module, TokenData(batch_size=4), splits=["train"], top_k=5, overwrite=True)
    assert TOPK_TAIL in read_manifest(tmp_path / "cache")["fields"]


def test_an_unknown_cache_format_names_what_this_version_reads(tmp_path):
    write(tmp_path, module_with(ToyLM(), student=ToyLM(hidden=4)), TokenData(), splits=["train"], top_k=5)
    manifest = read_manifest(tmp_path / "cache")
    manifest["format"] = "lit-distill-teacher-cache/9"
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"format this version reads \(.*/1, .*/2; found '.*/9'\)"):
        read_manifest(tmp_path / "cache")


def test_the_writer_uses_the_modules_predictions_and_changes_no_method(tmp_path):
    """The module predicts its teacher's outputs while the cache is written (its predict_teacher option), and its
    student's logits otherwise; the writer never replaces a method, and Lightning keeps no predictions in memory."""
    module = module_with(torch.nn.Linear(64, 10))
    dm = CachedTeacherDataModule(ToyData(n=40, batch_size=16), str(tmp_path / "cache"), splits=["train"])
    run = trainer(tmp_path, callbacks=[TeacherCacheWriter(top_k=4)])
    assert run.predict(module, datamodule=dm) is None
    assert "predict_step" not in vars(module) and type(module).predict_step is DistillationModule.predict_step
    assert module.predict_teacher is False
    reader = CacheReader(tmp_path / "cache", "train")
    data = ToyData(n=40)
    data.setup()
    x = torch.stack([data.sets["train"][i][0] for i in range(40)])
    stored = reader.gather(np.arange(40), None)
    with torch.no_grad():
        values, indices = module.teacher(x).topk(4, dim=-1)
    assert torch.equal(stored.extra["topk_indices"].long(), indices)  # every sample under its own id
    plain = trainer(tmp_path).predict(module, torch.utils.data.DataLoader(x[:8], batch_size=8))
    torch.testing.assert_close(plain[0], module.student(x[:8]))
