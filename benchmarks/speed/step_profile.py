"""Where one LLM distillation step spends its time: GPU kernel time by kind, GPU idle time, host syncs per step.

    python -m benchmarks.speed.step_profile --out prof.json                     # pair (a) on one GPU, eager
    python -m benchmarks.speed.step_profile --compile --out prof_compiled.json  # the same, torch.compile
    python -m benchmarks.speed.step_profile --kernels liger                      # eager with Liger's Llama kernels
    python -m benchmarks.speed.step_profile --smoke                              # tiny pair on the CPU

The module, data and trainer are ``llm_scale``'s (random-init Llama pair (a): 1.5B teacher -> 0.38B student,
fused token KD, ``bf16-mixed``). After ``--warmup`` steps, ``--steps`` steps run under ``torch.profiler``; kernels
are grouped by name (matrix products, attention, Triton kernels, the optimizer, copies/casts, other elementwise
work), per step. GPU idle is the profiled wall time per step minus the kernel time (one stream). Host syncs are the
calls that make the CPU wait for the GPU (``.item()``, stream/event synchronisation): each empties the GPU's queue
of work. Lightning's ``Optimizer.step`` range spans the whole step (the closure runs forward and backward inside
it), so ranges are left out of the kernel sums.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from lightning.pytorch import Callback

from benchmarks._lib.results import add_model_args, resolve_args
from benchmarks._lib.trainers import parse, parser, print_json, quiet
from benchmarks.scale import llm_scale

KINDS = {
    "matmul": ("gemm", "cutlass", "xmma", "nvjet", "cublas"),
    "attention": ("flash", "fmha", "attention", "sdpa"),
    "optimizer": ("multi_tensor", "fusedoptim", "adam"),
    "triton": ("triton", "kd_rows", "_kernel"),
    "copy/cast": ("copy", "cast", "convert", "cat"),
    "elementwise": ("elementwise", "vectorized", "unrolled", "reduce"),
}
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, keys in KINDS.items() if any(k in name for k in keys)), "other")


class ProfileSteps(Callback):
    """Profiles steps ``start .. start + count`` of a fit."""

    def __init__(self, start: int, count: int) -> None:
        self.start, self.count, self.seen, self.profiler, self.wall_ms = start, count, 0, None, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.start:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self.began = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.profiler is not None and self.seen == self.start + self.count:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.wall_ms = (time.perf_counter() - self.began) * 1000 / self.count
            self.profiler.__exit__(None, None, None)


def summarise(events, steps: int, wall_ms: float) -> dict:
    """Kernel ms per step by kind, idle ms, syncs per step and the ten longest kernels."""
    kernels = [e for e in events if e.device_type.name == "CUDA" and getattr(e, "self_device_time_total", 0) > 0]
    kernels = [e for e in kernels if "#" not in e.key]  # user ranges (Optimizer.step#...) span whole steps
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + e.self_device_time_total / 1000 / steps
    busy = sum(by_kind.values())
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:10]
    return {
        "wall_ms_per_step": round(wall_ms, 2),
        "kernel_ms_per_step": round(busy, 2),
        "gpu_idle_ms_per_step": round(wall_ms - busy, 2) if kernels else None,
        "kernel_ms_by_kind": {k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "host_syncs_per_step": {e.key: round(e.count / steps, 2) for e in events if e.key in SYNCS},
        "longest_kernels": [[round(e.self_device_time_total / 1000 / steps, 2), e.key[:90]] for e in top],
    }


def main(argv: Sequence[str] | None = None) -> dict:
    p = parser(__doc__)
    add_model_args(p)
    p.add_argument("--compile", action="store_true", help="torch.compile student and teacher in place")
    p.add_argument("--kernels", choices=["liger"], default=None, help="HFCausalLM(kernels=...)")
    p.add_argument("--profiled-steps", type=int, default=3)
    p.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    args = parse(p, argv, accelerator="cpu")
    args.strategy, args.loss, args.devices, args.optimizer = "single", "fused", 1, "default"
    args.teacher_sharding, args.keep_gathered = "shard", False
    teacher, student = resolve_args(args)
    quiet(threads=1 if args.accelerator == "cpu" else None)
    profile = ProfileSteps(args.warmup, args.profiled_steps)
    run = llm_scale.trainer(args, args.warmup + args.profiled_steps, [profile])
    run.fit(llm_scale.build(args, teacher, student), llm_scale.data(args, teacher.vocab))
    tokens = args.batch_size * args.seq_len
    result = {"run": llm_scale.name(args, 1), "tokens_per_step": tokens}
    result.update(summarise(profile.profiler.key_averages(), args.profiled_steps, profile.wall_ms))
    print_json(result)
    if args.out is not None:
        from benchmarks._lib.results import write_result

        write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
