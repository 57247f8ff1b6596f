"""Where one decode step of the fast sampler spends its time: GPU kernel time by kind, GPU idle (gaps), kernels and
CUDA-graph launches per step, host syncs, and the bound set by reading the weights once per step.

    python -m benchmarks.speed.decode_profile --out decode_profile   # student of pair (a), b8 and b64, one GPU
    python -m benchmarks.speed.decode_profile --smoke                 # tiny model, CPU

The student of pair (a) (0.38B Llama, bf16, random init, ``benchmarks/_lib/llm.py``) samples at T=1 on the static
cache with the compiled step (``fast: true``; inductor, CUDA graphs). After a warm-up generation that compiles,
``torch.profiler`` records two generations of ``--steps`` and ``2 * --steps`` new tokens (eos never written); their
difference is ``--steps`` decode steps with no prefill or set-up in it, so per step: kernel ms (by kind), wall ms
(synchronised clock), GPU idle = wall - kernel (one stream), kernels, graph launches and host syncs. The weight bound
is ``batch / (weight bytes / --hbm-gbps)`` new tokens/s. ``--out DIR`` gets ``decode_profile.json`` and a Chrome
trace per batch (``trace_b<B>.json``, open in Perfetto).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._lib.llm import PAIRS, llama
from benchmarks._lib.trainers import parse, parser, print_json, quiet
from benchmarks.speed.generation_speed import PAD, prompts
from benchmarks.speed.step_profile import SYNCS, kind_of
from lit_distill.generation.fast import FastSampler
from lit_distill.models.next_token import race_key, spec_for

LAUNCHES = ("cudaGraphLaunch", "cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")


def profiled(sampler: FastSampler, model: Any, ids: torch.Tensor, mask: torch.Tensor, new: int) -> dict[str, Any]:
    """One generation of ``new`` tokens under the profiler: per-key totals (kernel us, counts) and wall ms."""
    device = ids.device
    spec = spec_for(model, model.config.vocab_size + 1, PAD, max_new_tokens=new, temperature=1.0)  # eos never written
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        out = sampler.generate(model, ids, mask, spec, race_key(0, device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1000
    assert out.shape[1] == ids.shape[1] + new, "a row ended early: the difference would not be whole steps"
    events = {}
    for e in prof.key_averages():
        device_us = getattr(e, "self_device_time_total", 0) if e.device_type.name == "CUDA" else 0
        on_cpu = device.type == "cpu" and e.key.startswith("aten::")  # the CPU smoke: op time stands for kernels
        cpu_us = e.self_cpu_time_total if on_cpu else 0
        events[e.key] = {"us": device_us + cpu_us, "count": e.count, "kernel": device_us > 0 or cpu_us > 0}
    return {"wall_ms": wall_ms, "events": events, "trace": prof}


def per_step(short: dict, long: dict, steps: int) -> dict[str, Any]:
    """The difference of two profiled generations, per decode step."""
    keys = set(short["events"]) | set(long["events"])
    zero = {"us": 0.0, "count": 0, "kernel": False}

    def diff(key: str, field: str) -> float:
        return (long["events"].get(key, zero)[field] - short["events"].get(key, zero)[field]) / steps

    kernels = [k for k in keys if long["events"].get(k, zero)["kernel"] and "#" not in k and not k.startswith("cuda")]
    by_kind: dict[str, float] = {}
    for key in kernels:
        by_kind[kind_of(key)] = by_kind.get(kind_of(key), 0.0) + diff(key, "us") / 1000
    kernel_ms = sum(by_kind.values())
    wall_ms = (long["wall_ms"] - short["wall_ms"]) / steps
    top = sorted(kernels, key=lambda k: -diff(k, "us"))[:12]
    return {
        "wall_ms": round(wall_ms, 4),
        "kernel_ms": round(kernel_ms, 4),
        "idle_ms": round(wall_ms - kernel_ms, 4),
        "kernel_ms_by_kind": {k: round(v, 4) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "kernels": round(sum(diff(k, "count") for k in kernels if "cuda" not in k.lower()), 2),
        "launches": {k: round(diff(k, "count"), 2) for k in LAUNCHES if k in keys},
        "host_syncs": {k: round(diff(k, "count"), 3) for k in SYNCS if k in keys},
        "longest_kernels_ms": [[round(diff(k, "us") / 1000, 4), k[:100]] for k in top],
    }


def main(argv: Sequence[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--out", default=None, help="folder for decode_profile.json and the Chrome traces")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    p.add_argument("--steps", type=int, default=64, help="decode steps in the profiled difference")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--hbm-gbps", type=float, default=3350.0, help="memory bandwidth of the GPU (H100 SXM: 3350)")
    args = parse(p, argv, batches=[2, 4], steps=8, prompt_tokens=6)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: the profile is of the GPU's decode step; run with --smoke for the CPU check.")
    quiet(threads=1 if args.smoke else None)
    torch.manual_seed(0)
    model = llama(PAIRS["smoke" if args.smoke else "a"][1], device, "bf16").eval()
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    options = {"backend": "aot_eager", "mode": None} if args.smoke else {}  # CPU: traced, no code generation
    sampler = FastSampler(**options)
    out = Path(args.out) if args.out else None
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "weight_bytes": weight_bytes, "hbm_gbps": args.hbm_gbps, "steps": args.steps, "batches": {},
    }  # fmt: skip
    for batch in args.batches:
        ids, mask = prompts(batch, (args.prompt_tokens, args.prompt_tokens), model.config.vocab_size, device)
        profiled(sampler, model, ids, mask, 2 * args.steps)  # warm-up: compiles, records the CUDA graph
        short, long = (profiled(sampler, model, ids, mask, n) for n in (args.steps, 2 * args.steps))
        row = per_step(short, long, args.steps)
        row["tokens_per_s"] = round(batch / (row["wall_ms"] / 1000), 1) if row["wall_ms"] > 0 else None
        row["weight_bound_tokens_per_s"] = round(batch / (weight_bytes / (args.hbm_gbps * 1e9)), 1)
        result["batches"][str(batch)] = row
        if out:
            out.mkdir(parents=True, exist_ok=True)
            long["trace"].export_chrome_trace(str(out / f"trace_b{batch}.json"))
            (out / "decode_profile.json").write_text(json.dumps(result, indent=2))
        print(
            f"batch {batch}: {row['wall_ms']:.3f} ms per step (kernels {row['kernel_ms']:.3f}, "
            f"idle {row['idle_ms']:.3f}), {row['kernels']:.0f} kernels, launches {row['launches']}, "
            f"host syncs {row['host_syncs']}; "
            f"{row['tokens_per_s']} new tokens/s, weight bound {row['weight_bound_tokens_per_s']}",
            flush=True,
        )
    print_json(result)
    return result


if __name__ == "__main__":
    main()
