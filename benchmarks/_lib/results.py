"""The LLM benchmarks' common flags and result rows (tokens/s, MFU, memory per rank), and process-group teardown."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from benchmarks._lib.llm import LlamaShape, count_params, flops_per_token, mfu, pair_shapes
from benchmarks._lib.timing import peak_memory_gib


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The pair-choosing and size flags every LLM benchmark script takes (``--smoke`` comes with the parser)."""
    parser.add_argument("--pair", choices=["a", "b"], default="a", help="model pair (see benchmarks/_lib/llm.py)")
    parser.add_argument("--teacher-layers", type=int, default=None, help="replace the teacher's layer count")
    parser.add_argument("--student-layers", type=int, default=None, help="replace the student's layer count")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per device (default 8; smoke 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 1024; smoke 32)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; smoke 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the result row as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def resolve_args(args: argparse.Namespace) -> tuple[LlamaShape, LlamaShape]:
    """Fill the size defaults (smoke or full), refuse an existing ``--out``; returns ``(teacher, student)``."""
    defaults = {"batch_size": 2, "seq_len": 32, "steps": 2, "warmup": 1} if args.smoke else {
        "batch_size": 8, "seq_len": 1024, "steps": 20, "warmup": 5}  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch_size", "seq_len", "steps"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}.")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}.")
    if args.out is not None and args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists; pass --overwrite or choose another --out.")
    return pair_shapes("smoke" if args.smoke else args.pair, args.teacher_layers, args.student_layers)


def gather(value: Any) -> list[Any]:
    """``value`` from every rank (a one-element list without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def end_process_group() -> None:
    """Every rank waits for the others, then the process group is torn down (left to interpreter exit, gloo's
    threads can be destroyed while another rank still talks to them, and the process aborts after its work)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def write_result(row: dict[str, Any], out: Path | None) -> None:
    """Print the row as one JSON line and, if ``out`` is set, write it there (callers do this on rank 0 only)."""
    text = json.dumps(row)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def report(
    args: argparse.Namespace,
    name: str,
    teacher: LlamaShape,
    student: LlamaShape,
    seconds: float,
    device: torch.device,
    rank: int | None = None,
    peaks: list[dict[str, float] | None] | None = None,
    **extra: Any,
) -> None:
    """The result row: tokens/s over all ranks, FLOPs/token, MFU on the H200 datasheet peak, memory per rank.

    Call on every rank: it gathers each rank's peak memory (unless ``peaks`` were gathered earlier); rank 0
    (``rank``, default the ``RANK`` variable) prints the row and writes it to ``args.out``. ``args`` are the parsed
    :func:`add_model_args` flags: each rank ran ``args.steps`` timed steps of ``args.batch_size x args.seq_len``.
    """
    peaks = gather(peak_memory_gib(device)) if peaks is None else peaks
    if (int(os.environ.get("RANK", "0")) if rank is None else rank) != 0:
        return
    world, t_cfg, s_cfg = len(peaks), teacher.config(), student.config()
    tokens = args.steps * args.batch_size * args.seq_len * world
    flops, tokens_per_s = flops_per_token(s_cfg, t_cfg, args.seq_len), tokens / seconds
    row = {
        "run": name,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "world_size": world,
        "teacher": dataclasses.asdict(teacher) | {"params": count_params(t_cfg)["total"]},
        "student": dataclasses.asdict(student) | {"params": count_params(s_cfg)["total"]},
        "tokens": tokens,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": flops,
        "mfu": round(mfu(tokens_per_s, flops["total"], world), 4),
        "mfu_all_params_no_attention": round(mfu(tokens_per_s, flops["total_all_params"], world), 4),
        "peak_gib_per_rank": peaks,
        "torch": torch.__version__,
        "batch_per_device": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        **extra,
    }
    write_result(row, args.out)
