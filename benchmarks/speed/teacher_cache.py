"""Distillation throughput with the live teacher vs its offline cache: same student, data and losses, one process.

    python -m benchmarks.speed.teacher_cache --case digits                    # CPU, the quickstart's MLPs
    python -m benchmarks.speed.teacher_cache --case text                      # CPU, small GPTs on pydoc text
    python -m benchmarks.speed.teacher_cache --case text-gpu --device cuda    # GPU, a 12-layer GPT teacher
    python -m benchmarks.speed.teacher_cache --case text-gpu --device cuda --precision bf16-mixed --top-k 32 \
        --loaders 0,2p
    python -m benchmarks.speed.teacher_cache --smoke                          # digits, 2 epochs, both loaders

Writes the cache once (``Trainer.predict`` + ``TeacherCacheWriter``, timed), then fits the student for
``--epochs`` with the live teacher and from the cache, alternating ``--repeats`` times. A training
epoch's samples/s is timed between epoch start and end (CUDA synchronised, validation off); the first
epoch of each fit is warm-up and not counted; the median over the rest is reported, by the wall clock and
per CPU-second of this process (robust on a shared CPU). Also prints the teacher/student forward FLOPs
ratio and the cache size per sample. ``--loaders`` repeats the comparison for several loader settings (``0``:
loading in the training process, ``2p``: two workers and pinned memory), the same for live and cached. Then
what a cache can win at most, roughly: the live teacher's forward time on one batch (timed alone) as a share of
the live step, ``1 / (1 - share)`` being the speed-up of removing just that (the losses differ a little: full
vs top-k logits), and the reader's time per batch. The last printed line is JSON.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._lib.timing import Clock, FitClock
from benchmarks._lib.trainers import parse, parser, print_json, quiet, quiet_trainer
from lit_distill import CrossEntropy, DistillationModule, LogitKD
from lit_distill.batch import split_batch
from lit_distill.cache import CachedTeacher, CacheReader, TeacherCacheWriter
from lit_distill.data import CachedTeacherDataModule, DigitsDataModule, TextDataModule
from lit_distill.models import MLP
from lit_distill.models.gpt import GPT

CASES = {
    # name: (data, teacher, student, batch size, loss temperature)
    "digits": (
        lambda bs: DigitsDataModule(batch_size=bs, seed=0),
        lambda: MLP(64, [256, 256], 10),
        lambda: MLP(64, [16], 10),
        64,
        4.0,
    ),
    "text": (
        lambda bs: TextDataModule(seq_len=128, batch_size=bs, max_blocks=512),
        lambda: GPT(block_size=128, n_layer=4, n_head=4, n_embd=256),
        lambda: GPT(block_size=128, n_layer=1, n_head=2, n_embd=64),
        16,
        1.0,
    ),
    "text-gpu": (
        lambda bs: TextDataModule(seq_len=256, batch_size=bs),
        lambda: GPT(block_size=256, n_layer=12, n_head=12, n_embd=768),
        lambda: GPT(block_size=256, n_layer=2, n_head=4, n_embd=256),
        32,
        1.0,
    ),
}


def with_loader(data, setting: str):
    """``data`` with ``setting`` applied to its training loader: ``"<workers>"`` plus ``p`` for pinned memory."""
    data.num_workers = int(setting.rstrip("p"))
    loader = functools.partial(type(data).resumable_train_loader, data, pin_memory=setting.endswith("p"))
    data.resumable_train_loader = loader
    return data


def teacher_share(teacher, data, args, live_rate: float, batch_size: int, steps: int = 20) -> dict:
    """The live teacher's forward on one training batch, timed alone, against the live step: a cache removes about
    this share, so ``1 / (1 - share)`` is roughly the most it can win."""
    device = torch.device(args.device)
    args_, kwargs, _ = split_batch(next(iter(data.train_dataloader())))
    inputs = [a.to(device) for a in args_]
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    model = teacher.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision.startswith("bf16"))
    clock = Clock(device)
    with torch.no_grad(), autocast:
        for _ in range(steps + 3):
            clock.mark("call")
            model(*inputs, **kwargs)
            clock.mark("done")
    model.cpu()
    teacher_ms = statistics.median(clock.between("call", "done")[3:])
    step_ms = 1000 * batch_size / live_rate
    share = teacher_ms / step_ms
    bound = round(1 / (1 - share), 3) if share < 1 else None
    return {"teacher_forward_ms": round(teacher_ms, 3), "live_step_ms": round(step_ms, 3),
            "teacher_share": round(share, 3), "cache_limit": bound}  # fmt: skip


def reader_ms(cache_dir: str, data, rounds: int = 20) -> float:
    """Median milliseconds of one training batch's cache lookup (what the loader adds per batch)."""
    reader = CacheReader(cache_dir, "train")
    batch = next(iter(data.train_dataloader()))
    ids = np.arange(len(split_batch(batch)[0][0]))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        reader.gather(ids, batch)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def trainer(args, **kwargs) -> Trainer:
    return quiet_trainer(
        accelerator=args.device, precision=args.precision, num_sanity_val_steps=0, limit_val_batches=0, **kwargs
    )


def forward_flops(model, data, device: str) -> int:
    """Forward FLOPs on two samples of a batch (the teacher/student ratio does not depend on the batch size)."""
    data.setup("fit")
    args, kwargs, _ = split_batch(next(iter(data.train_dataloader())))
    args = [a[:2].to(device) for a in args]
    kwargs = {k: v[:2].to(device) for k, v in kwargs.items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.to(device)(*args, **kwargs)
    model.cpu()
    return counter.get_total_flops()


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--case", choices=sorted(CASES), default="digits")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--top-k", type=int, default=None, help="cache the top-k logits instead of all")
    p.add_argument("--dtype", default=None, help="cache dtype: fp32, fp16, bf16 (default: writer's)")
    p.add_argument("--cache-dir", default=None, help="default: a temporary folder, deleted afterwards")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 avoids spin-waits on a busy CPU)")
    p.add_argument("--loaders", default="0", help="comma list of loader settings: workers, 'p' = pinned memory")
    args = parse(p, argv, case="digits", epochs=2, repeats=1, top_k=3, threads=1, loaders="0,1p")
    quiet(args.threads)

    make_data, make_teacher, make_student, default_bs, temperature = CASES[args.case]
    batch_size = args.batch_size or default_bs
    seed_everything(0, verbose=False)
    teacher = make_teacher()
    base = make_data(batch_size)  # built once: tokenizing the text corpus takes seconds
    flops = [forward_flops(m, base, args.device) for m in (teacher, make_student())]
    ratio = flops[0] / flops[1]
    tmp = tempfile.TemporaryDirectory() if args.cache_dir is None else None
    cache_dir = str(Path(args.cache_dir or tmp.name) / "cache")

    def module(with_teacher) -> DistillationModule:
        seed_everything(0, verbose=False)
        losses = [LogitKD(temperature=temperature, weight=0.9), CrossEntropy(weight=0.1)]
        # Throughput only: a random teacher costs what a trained one does.
        return DistillationModule(student=make_student(), teacher=with_teacher, losses=losses)

    start = time.perf_counter()
    writer = TeacherCacheWriter(top_k=args.top_k, dtype=args.dtype, tail_temperature=temperature)
    data = CachedTeacherDataModule(base, cache_dir, splits=["train"])
    trainer(args, callbacks=[writer]).predict(module(teacher), datamodule=data)
    write_s = time.perf_counter() - start
    n_train = writer.manifest["splits"]["train"]["num_samples"]
    size = sum(f.stat().st_size for f in Path(cache_dir, "train").rglob("*.npy"))

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"case {args.case} on {device}, precision {args.precision}, batch {batch_size}, {n_train} train samples")
    print(f"teacher/student forward FLOPs: {ratio:.1f}x")
    print(f"cache: {writer.manifest['settings']}, {size / n_train:,.0f} bytes/sample, written in {write_s:.1f} s")
    result = {
        "case": args.case,
        "device": device,
        "precision": args.precision,
        "batch_size": batch_size,
        "flops_ratio": round(ratio, 2),
        "cache_bytes_per_sample": round(size / n_train),
        "cache_write_s": round(write_s, 2),
        "settings": writer.manifest["settings"],
        "loaders": {},
    }
    for setting in args.loaders.split(","):
        with_loader(base, setting)
        rates: dict[str, list[float]] = {"live": [], "cached": []}
        cpu_rates: dict[str, list[float]] = {"live": [], "cached": []}
        for _ in range(args.repeats):
            for mode in ("live", "cached"):
                clock = FitClock(warmup=None, per_epoch=True)
                if mode == "live":
                    fit_module, fit_data = module(teacher), base
                else:
                    fit_module = module(CachedTeacher())
                    fit_data = CachedTeacherDataModule(base, cache_dir, splits=["train"])
                trainer(args, max_epochs=args.epochs, callbacks=[clock]).fit(fit_module, datamodule=fit_data)
                rates[mode] += clock.epoch_rates()[1:]
                cpu_rates[mode] += clock.epoch_rates(cpu=True)[1:]
        live, cached = statistics.median(rates["live"]), statistics.median(rates["cached"])
        cpu_live, cpu_cached = statistics.median(cpu_rates["live"]), statistics.median(cpu_rates["cached"])
        workers, pinned = int(setting.rstrip("p")), setting.endswith("p")
        print(f"\nloader: {workers} worker(s), pinned memory {pinned}")
        print(f"live teacher : {live:10.1f} samples/s  (epochs: {', '.join(f'{r:.0f}' for r in rates['live'])})")
        print(f"from cache   : {cached:10.1f} samples/s  (epochs: {', '.join(f'{r:.0f}' for r in rates['cached'])})")
        print(f"speed-up     : {cached / live:.2f}x")
        print(f"per CPU-second of this process: live {cpu_live:.1f}, cached {cpu_cached:.1f}, "
              f"{cpu_cached / cpu_live:.2f}x")  # fmt: skip
        result["loaders"][setting] = {
            "live_samples_per_s": round(live, 1),
            "cached_samples_per_s": round(cached, 1),
            "speedup": round(cached / live, 3),
            "live_samples_per_cpu_s": round(cpu_live, 1),
            "cached_samples_per_cpu_s": round(cpu_cached, 1),
            "cpu_time_speedup": round(cpu_cached / cpu_live, 3),
        }
    first = result["loaders"][args.loaders.split(",")[0]]
    result.update(first)  # the first setting's figures at the top level, as before
    limit = teacher_share(teacher, with_loader(base, "0"), args, first["live_samples_per_s"], batch_size)
    limit["reader_ms_per_batch"] = round(reader_ms(cache_dir, base), 3)
    result.update(limit)
    bound = "n/a (timing noise)" if limit["cache_limit"] is None else f"{limit['cache_limit']:.2f}x"
    print(f"\nlive teacher forward alone: {limit['teacher_forward_ms']:.2f} ms per batch of a "
          f"{limit['live_step_ms']:.2f} ms live step ({limit['teacher_share']:.0%}): removing it alone gives "
          f"{bound}; cache reader {limit['reader_ms_per_batch']:.2f} ms per batch")  # fmt: skip
    print_json(result)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
