"""CachedTeacherDataModule: the cached teacher gives the live teacher's loss per batch (shuffled, 2 workers, DDP
samplers), the teacher never runs, and the bundled cache recipes run end to end through the CLI."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler, RandomSampler

from lit_distill import CrossEntropy, DistillationModule, LogitKD
from lit_distill.batch import cached_teacher_output
from lit_distill.cache import CachedTeacher
from lit_distill.cli import main
from lit_distill.data import CachedTeacherDataModule
from lit_distill.models import MLP
from tests.helpers import trainer
from tests.test_cache import ToyData, count_rows, write

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def kd_module(teacher):
    torch.manual_seed(0)
    return DistillationModule(
        student=MLP(64, [16], 10),
        teacher=teacher,
        losses=[LogitKD(temperature=2.0), CrossEntropy(weight=0.5)],
        allow_untrained_teacher=True,  # random teachers on purpose
    )


def live_loss(module, batch):
    """The same step with the teacher run live on the batch's inputs (the cached outputs dropped)."""
    plain = batch[:-1]
    teacher_out = module.forward_teacher(plain)
    return module.compute_losses(module.forward_student(plain), teacher_out, plain)[0], teacher_out


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cached_logits_give_the_live_loss_per_batch_shuffled_with_two_workers(tmp_path, dtype):
    teacher = MLP(64, [48], 10)
    module = kd_module(teacher)
    write(tmp_path, module, ToyData(batch_size=16, shuffle=False), dtype=dtype)
    dm = CachedTeacherDataModule(ToyData(batch_size=24, num_workers=2), str(tmp_path / "cache"))
    dm.setup("fit")
    dm.verify_model(module)
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and isinstance(loader.sampler, RandomSampler)
    seen = []
    for batch in loader:
        cached = cached_teacher_output(batch)
        assert cached is not None and len(batch) == 3
        with torch.no_grad():
            loss, _, _, _ = module.shared_step(batch)
            want, live = live_loss(module, batch)
        if dtype == "fp32":
            # bitwise equal on the dev machine; a tolerance keeps other BLAS kernels (batch 16 vs 24) green
            torch.testing.assert_close(cached.logits, live.logits, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)
        else:  # stored in bf16: the live logits rounded, and a loss within bf16 rounding of the live one
            assert cached.logits.dtype == torch.bfloat16
            torch.testing.assert_close(cached.logits, live.logits.bfloat16())
            torch.testing.assert_close(loss, want, rtol=2e-2, atol=2e-3)
        seen.append(batch[0])
    data = torch.cat(seen)
    train = dm.datamodule.sets["train"].tensors[0]
    assert len(data) == 96 and not torch.equal(data, train)  # shuffled
    assert torch.equal(data[data[:, 0].argsort()], train[train[:, 0].argsort()])  # every sample once


def test_ddp_sampler_swapped_in_by_lightning_keeps_outputs_matched(tmp_path):
    teacher = MLP(64, [48], 10)
    write(tmp_path, kd_module(teacher), ToyData(shuffle=False))
    dm = CachedTeacherDataModule(ToyData(batch_size=10), str(tmp_path / "cache"))
    dm.setup("fit")
    loader, seen = dm.train_dataloader(), []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        ddp_loader = _update_dataloader(loader, sampler)  # what Lightning does to the loader under DDP
        assert ddp_loader.sampler is sampler
        for x, _, out in ddp_loader:
            with torch.no_grad():
                torch.testing.assert_close(out.logits, teacher(x))
            seen.append(x)
    assert len(torch.cat(seen)) == 96


def test_fit_from_cache_never_runs_the_teacher(tmp_path):
    teacher = MLP(64, [48], 10)
    module = kd_module(teacher)
    write(tmp_path, module, ToyData(shuffle=False))
    rows = count_rows(teacher)
    fitted = trainer(tmp_path, max_epochs=2, log_every_n_steps=1)
    fitted.fit(module, datamodule=CachedTeacherDataModule(ToyData(), str(tmp_path / "cache")))
    assert rows == [] and fitted.global_step == 12
    assert {"train/logit_kd", "val/teacher_acc", "val/agreement"} <= set(fitted.callback_metrics)
    # With the stand-in, a split left out of the cache stops with a clear error instead of training blind.
    stand_in = DistillationModule(student=MLP(64, [16], 10), teacher=CachedTeacher(), losses=[LogitKD()])
    dm = CachedTeacherDataModule(ToyData(), str(tmp_path / "cache"), splits=["train"])
    with pytest.raises(RuntimeError, match="carries no cached teacher outputs"):
        trainer(tmp_path).fit(stand_in, datamodule=dm)


def test_wrapper_arguments_pass_through_and_bad_values():
    dm = CachedTeacherDataModule(ToyData(batch_size=7), "nowhere", splits=["train"])
    assert dm.batch_size == 7  # attributes of the wrapped module are forwarded
    dm.datamodule.setup()
    assert len(next(iter(dm.val_dataloader()))) == 2  # a split not listed comes without teacher outputs
    with pytest.raises(ValueError, match="splits must be a non-empty list of 'train', 'val', 'test'"):
        CachedTeacherDataModule(ToyData(), "c", splits=["training"])
    with pytest.raises(ValueError, match="fingerprint_samples must be >= 0"):
        CachedTeacherDataModule(ToyData(), "c", fingerprint_samples=-1)


def test_cache_recipes_run_through_the_cli(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            "configs/digits/teacher.yaml",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            *FAST,
        ]
    )
    with pytest.raises(SystemExit) as missing:
        main(["fit", "--config", "configs/digits/quickstart_cached.yaml", "--trainer.fast_dev_run=true", *FAST])
    assert missing.value.code == 2
    hint = "Create it first with: lit-distill predict --config configs/digits/teacher_cache.yaml"
    assert hint in capsys.readouterr().err
    main(["predict", "--config", "configs/digits/teacher_cache.yaml", "--trainer.fast_dev_run=true", *FAST])
    assert not Path("artifacts/digits/teacher_cache").exists()  # a smoke run writes nothing
    main(["predict", "--config", "configs/digits/teacher_cache.yaml", *FAST])
    assert Path("artifacts/digits/teacher_cache/manifest.json").is_file()
    main(["fit", "--config", "configs/digits/quickstart_cached.yaml", "--trainer.fast_dev_run=true", *FAST])


def test_cached_recipe_is_the_quickstart_with_only_teacher_and_data_switched():
    """When configs/quickstart.yaml changes, mirror it in quickstart_cached.yaml and teacher_cache.yaml."""
    live = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
    cached = yaml.safe_load((ROOT / "configs/digits/quickstart_cached.yaml").read_text())
    writer = yaml.safe_load((ROOT / "configs/digits/teacher_cache.yaml").read_text())
    assert cached["trainer"] == live["trainer"] and cached["seed_everything"] == live["seed_everything"]
    live_args, cached_args = dict(live["model"]["init_args"]), dict(cached["model"]["init_args"])
    assert cached_args.pop("teacher") == {"class_path": "lit_distill.cache.CachedTeacher"}
    assert live_args.pop("teacher") == writer["model"]["init_args"]["teacher"]
    assert live_args.pop("teacher_checkpoint") == writer["model"]["init_args"]["teacher_checkpoint"]
    assert live_args == cached_args
    assert cached["data"] == writer["data"] and cached["data"]["init_args"]["datamodule"] == live["data"]
