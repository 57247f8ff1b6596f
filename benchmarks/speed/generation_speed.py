"""Sampling speed at LLM size: lit-distill's fast sampler vs transformers' default ``generate``, and one on-policy step.

The random-init Llama pair (a) of ``benchmarks/_lib/llm.py`` (1.50B teacher, 0.38B student, vocab 128256; no
download), bf16, one GPU, as ``HFCausalLM``:

1. Student new tokens/s at batch 8 and 64: up to 256 new tokens, sampling at T=1, eos = the last id (a random
   model writes it about once per 128k tokens), the same left-padded prompts (random ids, 16..64 tokens) for
   both: ``generate(fast=False)`` (transformers' ``generate`` with its default dynamic cache) vs
   ``generate(fast=True)`` (static cache + compiled decode step, CUDA graphs). Median [min-max] of ``--repeats``
   runs after one warm-up run (ours compiles in its warm-up). ``--with-hf-static`` adds transformers' own route,
   ``generate(cache_implementation="static")`` (compiled forward, eager loop), for comparison.
2. One on-policy step (lmbda=1) of ``OnPolicyDistillationModule`` at batch 64 through a Lightning ``Trainer``
   (bf16 weights, AdamW, default ``TokenKD`` JSD on the fused path), split with CUDA events into sampling /
   teacher scoring (``forward_teacher``) / student update (the rest: student forward, loss, backward, step).

The table prints last; ``--out`` gets the raw numbers (written after every stage, so a cut-off run keeps what it
measured). ``--smoke`` runs the same code on tiny models on CPU in well under a minute; there the compiled step is
traced by ``torch.compile`` with the ``aot_eager`` backend (no code generation) and CUDA graphs do not exist.

    python -m benchmarks.speed.generation_speed --out generation_speed.json   # one H200: ~3 min with compiles
    python -m benchmarks.speed.generation_speed --smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.utils.data import DataLoader

from benchmarks._lib.llm import PAIRS, llama
from benchmarks._lib.timing import Clock, FitClock, sync
from benchmarks._lib.trainers import parse, parser, print_json, quiet, quiet_trainer
from lit_distill.generation import OnPolicyDistillationModule, generate
from lit_distill.generation import fast as fast_mode
from lit_distill.generation.sampling import completion_batch, left_pad, new_tokens
from lit_distill.models.hf import HFCausalLM

FULL = {"pair": "a", "batches": [8, 64], "step_batch": 64, "new_tokens": 256, "prompt_tokens": (16, 64), "repeats": 3}
SMOKE = {"pair": "smoke", "batches": [2, 4], "step_batch": 4, "new_tokens": 8, "prompt_tokens": (4, 8), "repeats": 1}
TARGETS = {8: 5.0, 64: 3.0}  # >= 5x transformers' default generate at batch 8, >= 3x at batch 64
TABLE_COLUMNS = (("transformers", 13), ("fast", 10), ("hf_static", 10))
PAD = 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--out", default=None, help="write the raw results (JSON) here, also after every stage")
    p.add_argument("--repeats", type=int, default=None, help="measured runs per cell (default 3; smoke 1)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="sampling batch sizes (default 8 64)")
    p.add_argument("--skip-step", action="store_true", help="only the sampling table, no on-policy step")
    p.add_argument(
        "--with-hf-static",
        action="store_true",
        help="also time generate(cache_implementation='static'), transformers' own compiled route",
    )
    return parse(p, argv)


def prompts(batch: int, lengths: tuple[int, int], vocab: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    rows = [
        torch.randint(1, vocab, (int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g)),), generator=g)
        for _ in range(batch)
    ]
    return left_pad([r.tolist() for r in rows], PAD, device=device)


def time_sampling(model: HFCausalLM, ids: torch.Tensor, mask: torch.Tensor, new: int, path: str, repeats: int) -> dict:
    """One warm-up run (ours compiles in it), then ``repeats`` timed runs; new tokens/s of each (eos counted)."""
    eos = model.config.vocab_size - 1  # a random model writes it about once per 128k tokens, as in training
    seed = iter(range(repeats + 1))

    def run() -> torch.Tensor:
        if path == "hf_static":  # transformers' own compiled route
            return model.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=True, temperature=1.0, top_k=0,
                top_p=1.0, eos_token_id=eos, pad_token_id=PAD, cache_implementation="static",
            )  # fmt: skip
        fast = path == "fast"  # "transformers": lit-distill's plain path, i.e. generate() with its dynamic cache
        return generate(
            model, ids, mask, max_new_tokens=new, temperature=1.0, eos_token_id=eos, pad_token_id=PAD,
            seed=next(seed), fast=fast,
        )  # fmt: skip

    clock = Clock(ids.device)
    clock.mark("call")
    run()
    clock.mark("done")
    runs = []
    for _ in range(repeats):
        clock.mark("call")
        out = run()
        sync(ids.device)
        tokens = sum(len(r) for r in new_tokens(out, ids.shape[1], eos, keep_eos=True))  # counted inside the time
        clock.mark("done")
        runs.append(1000.0 * tokens / clock.ms("call", "done"))
    warmup = clock.ms("call", "done", index=0) / 1000.0
    new_part = out[:, ids.shape[1] :]
    # A sampler replaying stale buffers repeats itself; T=1 samples of a random model almost never do.
    repeats_share = float((new_part[:, 1:] == new_part[:, :-1]).float().mean())
    return {"warmup_s": warmup, "tokens_per_s": runs, "median": statistics.median(runs), "repeats": repeats_share}


class StepSplit(FitClock):
    """Times each training step and, inside it, the module's sampling and teacher forward (CUDA events on GPU)."""

    def __init__(self, module: OnPolicyDistillationModule, device: torch.device) -> None:
        super().__init__(warmup=None, per_step=True, clock=Clock(device, events=True))
        self.rows: list[dict[str, float]] = []
        for name in ("sample_batch", "forward_teacher"):
            setattr(module, name, self._timed(getattr(module, name), name))

    def _timed(self, fn: Any, name: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.clock.mark(f"{name}_start")
            out = fn(*args, **kwargs)
            self.clock.mark(f"{name}_end")
            return out

        return wrapper

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.clock.mark("step_end")
        total = self.clock.ms("step", "step_end")  # the latest of each mark: this step's
        sampling = self.clock.ms("sample_batch_start", "sample_batch_end")
        teacher = self.clock.ms("forward_teacher_start", "forward_teacher_end")
        self.rows.append(
            {"total_ms": total, "sampling_ms": sampling, "teacher_ms": teacher,
             "student_update_ms": total - sampling - teacher}
        )  # fmt: skip


def onpolicy_step(student: HFCausalLM, teacher: HFCausalLM, cfg: dict, device: torch.device, **spread: Any) -> dict:
    """Three lmbda=1 on-policy steps; the split of the last two (the first may compile). spread: devices, strategy."""
    batch, new, vocab = cfg["step_batch"], cfg["new_tokens"], student.config.vocab_size
    ids, mask = prompts(batch, cfg["prompt_tokens"], vocab, torch.device("cpu"))
    # Instruction rows: the prompt (labels -100), then a 16-token reference response.
    responses = [torch.randint(1, vocab, (16,), generator=torch.Generator().manual_seed(i)) for i in range(batch)]
    data = completion_batch(ids, mask, torch.cat([ids, torch.stack(responses)], dim=1), None, PAD)
    loader = DataLoader([data] * 3, batch_size=None)  # three steps on the same prepared batch
    module = OnPolicyDistillationModule(
        student=student,
        teacher=teacher,
        lmbda=1.0,
        max_new_tokens=new,
        temperature=1.0,
        eos_token_id=vocab - 1,  # as in the sampling table: the same compiled step
        pad_token_id=PAD,
        fast="auto" if spread else True,  # several processes: a sharded student samples on the plain path, in step
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5),
    )
    split = StepSplit(module, device)
    # "32-true" on bf16 weights computes what "bf16-true" does, without switching torch's default dtype, which the
    # compiled step guards on: the step reuses the sampling table's compiled graph instead of compiling again.
    trainer = quiet_trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        precision="32-true",
        max_steps=len(loader),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[split],
        **spread,
    )
    trainer.fit(module, train_dataloaders=loader)
    steps = split.rows
    keys = ("total_ms", "sampling_ms", "teacher_ms", "student_update_ms")
    result = {k: statistics.median(s[k] for s in steps[1:]) for k in keys}
    result.update(batch=batch, new_tokens=new, steps=steps, sampling_share=result["sampling_ms"] / result["total_ms"])
    return {**result, **spread, "rank": trainer.global_rank}


def save(report: dict, out: Path | None) -> None:
    """Compile diagnostics into the report, and the report to ``out`` (after every stage: a cut-off run keeps it)."""
    counters = torch._dynamo.utils.counters
    report["diagnostics"] = {
        "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
    }
    if out:
        out.write_text(json.dumps(report, indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    compile_settings = dict(fast_mode.DEFAULT_COMPILE)
    torch._dynamo.utils.counters.clear()  # the diagnostics count this run's graphs only
    try:
        measure(args)
    finally:  # leave the library's settings as they were: the smoke test calls main() in the test process
        fast_mode.DEFAULT_COMPILE.clear()
        fast_mode.DEFAULT_COMPILE.update(compile_settings)
        torch._logging.set_logs()


def measure(args: argparse.Namespace) -> None:
    cfg = SMOKE if args.smoke else FULL
    repeats = args.repeats or cfg["repeats"]
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: the full sizes need a GPU; run with --smoke for the CPU check.")
    if args.smoke:  # no code generation on CPU (20-60 s per graph); the traced step is the same
        fast_mode.DEFAULT_COMPILE.update(backend="aot_eager", mode=None)
        torch.set_num_threads(1)  # tiny models on a shared CPU: one thread is the faster
    torch._logging.set_logs(perf_hints=True)  # prints why CUDA graphs were skipped, if they are
    out = Path(args.out) if args.out else None
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "smoke": args.smoke,
        "compile": dict(fast_mode.DEFAULT_COMPILE), "sampling": [], "errors": [],
    }  # fmt: skip
    t0 = time.perf_counter()
    teacher_shape, student_shape = PAIRS[cfg["pair"]]
    torch.manual_seed(0)
    student = llama(student_shape, device, "bf16")
    report["student_params"] = sum(p.numel() for p in student.parameters())
    print(
        f"[{time.perf_counter() - t0:5.0f} s] student {report['student_params'] / 1e9:.3f}B on {report['device']}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}",
        flush=True,
    )
    for batch in args.batches or cfg["batches"]:
        ids, mask = prompts(batch, cfg["prompt_tokens"], student.config.vocab_size, device)
        row: dict[str, Any] = {"batch": batch, "prompt_width": ids.shape[1]}
        for name in ["transformers", "fast"] + (["hf_static"] if args.with_hf_static else []):
            try:
                row[name] = time_sampling(student, ids, mask, cfg["new_tokens"], name, repeats)
                print(
                    f"[{time.perf_counter() - t0:5.0f} s] batch {batch} {name}: {row[name]['median']:,.0f} new "
                    f"tokens/s (warm-up {row[name]['warmup_s']:.1f} s)",
                    flush=True,
                )
            except Exception as err:  # report and go on: the other cells still tell something
                report["errors"].append(f"batch {batch} {name}: {type(err).__name__}: {err}")
                print(f"FAILED batch {batch} {name}: {type(err).__name__}: {err}\n{traceback.format_exc()}", flush=True)
        if "transformers" in row and "fast" in row:
            row["speedup"] = row["fast"]["median"] / row["transformers"]["median"]
            if row["fast"]["repeats"] > 5 * row["transformers"]["repeats"] + 0.01:
                report["errors"].append(
                    f"batch {batch} fast: {100 * row['fast']['repeats']:.1f} % of its tokens repeat the one before "
                    f"(transformers: {100 * row['transformers']['repeats']:.1f} %): samples look degenerate"
                )
        report["sampling"].append(row)
        save(report, out)
    if not args.skip_step:
        try:
            teacher = llama(teacher_shape, device, "bf16")
            report["teacher_params"] = sum(p.numel() for p in teacher.parameters())
            report["onpolicy_step"] = onpolicy_step(student, teacher, cfg, device)
            print(f"[{time.perf_counter() - t0:5.0f} s] on-policy step done", flush=True)
        except Exception as err:
            report["errors"].append(f"on-policy step: {type(err).__name__}: {err}")
            print(f"FAILED on-policy step: {type(err).__name__}: {err}\n{traceback.format_exc()}", flush=True)
    report["total_s"] = time.perf_counter() - t0
    save(report, out)
    print_table(report, cfg)
    print_json(report)


def print_table(report: dict, cfg: dict) -> None:
    smoke, rows = report["smoke"], report["sampling"]
    runs = len(rows[0].get("fast", {}).get("tokens_per_s", [])) or "?"
    print(
        f"\ngeneration_speed ({'SMOKE, tiny models, CPU' if smoke else report['device']}); torch {report['torch']}, "
        f"transformers {report['transformers']}; {report['total_s']:.0f} s\nstudent "
        f"{report['student_params'] / 1e9:.3f}B bf16, {cfg['new_tokens']} new tokens, T=1; new tokens/s, median of "
        f"{runs} runs\n{'batch':>5} {'transformers':>13} {'fast':>10} {'speed-up':>9} {'target':>13} "
        f"{'hf static':>10}"
    )
    for row in rows:
        cells = [f"{row[k]['median']:>{w},.0f}" if k in row else f"{'-':>{w}}" for k, w in TABLE_COLUMNS]
        speed = f"{row['speedup']:>8.1f}x" if "speedup" in row else f"{'-':>9}"
        goal, target = TARGETS.get(row["batch"]), "-"
        if goal and not smoke:
            target = f">= {goal:.0f}x {'met' if row.get('speedup', 0) >= goal else 'MISSED'}"
        print(f"{row['batch']:>5} {cells[0]} {cells[1]} {speed} {target:>13} {cells[2]}")
    if step := report.get("onpolicy_step"):
        met = "" if smoke else (" met" if step["sampling_share"] <= 0.6 else " MISSED")
        print(f"on-policy step (lambda=1), batch {step['batch']}, {step['new_tokens']} new tokens: sampling "
              f"{step['sampling_ms']:.0f} ms ({100 * step['sampling_share']:.0f} %, target <= 60 %{met}), teacher "
              f"scoring {step['teacher_ms']:.0f} ms, student update {step['student_update_ms']:.0f} ms, total "
              f"{step['total_ms']:.0f} ms")  # fmt: skip
    d = report["diagnostics"]
    print(f"compiled graphs {d['unique_graphs']}, CUDA-graph skips {d['cudagraph_skips']}; errors: "
          f"{len(report['errors'])}" + "".join(f"\n  {e}" for e in report["errors"]))  # fmt: skip


if __name__ == "__main__":
    main()
