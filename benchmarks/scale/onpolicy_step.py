"""The on-policy step of ``benchmarks.speed.generation_speed`` (lmbda=1, batch 64 per rank, 256 new tokens, pair (a):
1.50B teacher, 0.38B student, bf16) on several GPUs: the split of one rank's step into sampling / teacher scoring /
student update, under DDP or FSDP2.

    python -m benchmarks.scale.onpolicy_step --devices 2 --strategy ddp --out onpolicy_ddp.json
    python -m benchmarks.scale.onpolicy_step --devices 2 --strategy fsdp2 --out onpolicy_fsdp2.json
    python -m benchmarks.scale.onpolicy_step --smoke --devices 2 --strategy fsdp2   # tiny pair, 2 CPU processes

One process per device (Lightning's launcher re-executes this module per rank); each rank builds the models empty and
fills its own weights (DDP) or its shards (FSDP2), samples its own batch with ``fast: auto`` (the compiled sampler
under DDP; under FSDP2 the plain path, in step with the other ranks, since every forward is a collective) and rank 0
prints and writes the split (``--out``). One GPU: ``benchmarks.speed.generation_speed``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks._lib.llm import PAIRS, llama
from benchmarks._lib.trainers import parse, parser, print_json, quiet
from benchmarks.speed.generation_speed import FULL, SMOKE, onpolicy_step


def main(argv: Sequence[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--devices", type=int, default=2, help="processes, one per GPU")
    p.add_argument("--strategy", choices=["ddp", "fsdp2"], default="ddp")
    p.add_argument("--out", default=None, help="write rank 0's split (JSON) here")
    args = parse(p, argv, devices=1)  # the smoke run of the test suite stays in its process unless told otherwise
    cfg = SMOKE if args.smoke else FULL
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: the full sizes need GPUs; run with --smoke for the CPU check.")
    quiet(threads=1 if args.smoke else None)
    torch.manual_seed(0)
    teacher_shape, student_shape = PAIRS[cfg["pair"]]
    student, teacher = llama(student_shape, None, "bf16"), llama(teacher_shape, None, "bf16")  # filled per rank
    spread = {"devices": args.devices, "strategy": args.strategy} if args.devices > 1 else {}
    result = onpolicy_step(student, teacher, cfg, device, **spread)
    if result["rank"] != 0:
        return result
    print(
        f"on-policy step, {args.devices} process(es) ({args.strategy if spread else 'one device'}), batch "
        f"{result['batch']} per rank, {result['new_tokens']} new tokens, rank 0: sampling {result['sampling_ms']:.0f} "
        f"ms ({100 * result['sampling_share']:.0f} %), teacher scoring {result['teacher_ms']:.0f} ms, student update "
        f"{result['student_update_ms']:.0f} ms, total {result['total_ms']:.0f} ms",
        flush=True,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print_json(result)
    return result


if __name__ == "__main__":
    main()
