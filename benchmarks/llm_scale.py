"""LLM-size distillation through ``DistillationModule`` + ``Trainer``: tokens/s, MFU and memory per GPU.

    python benchmarks/llm_scale.py --pair a --strategy single --out a_single.json        # 1 GPU, fused LM-head KD
    python benchmarks/llm_scale.py --pair a --strategy single --loss full                # 1 GPU, full logits
    python benchmarks/llm_scale.py --pair a --strategy ddp --devices 2                   # DDP x2
    python benchmarks/llm_scale.py --pair a --strategy fsdp2 --devices 2                 # FSDP2 x2 (fsdp2 strategy)
    python benchmarks/llm_scale.py --pair b --strategy fsdp2 --devices 2 --teacher-layers 86 --cycle ckpt_dir
    python benchmarks/llm_scale.py --smoke --strategy fsdp2 --devices 2 --accelerator cpu  # CPU check (gloo)

The models are random-init Llama pairs from ``llm_common`` (no download), built without memory
(``HFCausalLM(config=..., empty_init=True)``) and filled on the device, each rank only its shards under
``fsdp2``. The student is fp32 under ``bf16-mixed``; the teacher is bf16 (``teacher_dtype: bf16``). The loss is
``TokenKD(forward_kl)`` on every next-token position, fused with the LM heads (``--loss fused``) or on full logits.
Every rank reads its own synthetic ``batch x seq`` rows; tokens/s counts all ranks, after ``--warmup`` steps.
Lightning's launcher re-executes this script once per device; rank 0 prints (and writes to ``--out``) one JSON row.

``--cycle DIR`` (pair b): after the timed run the student is checkpointed (sharded) into DIR/student.ckpt; a second
process with ``--resume DIR/student.ckpt`` resumes from it for two more steps (from a differently initialised
student, so a resume that loaded nothing would show the initial loss again), exports the student as a Hugging Face
folder and reloads it on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm_common as C  # noqa: E402

from lit_distill import DistillationModule  # noqa: E402
from lit_distill.losses import TokenKD  # noqa: E402
from lit_distill.models.hf import HFCausalLM, export_pretrained  # noqa: E402

warnings.filterwarnings("ignore", message=".*(TypedStorage|does not have many workers|LeafSpec).*")


class Clock(Callback):
    """Times steps ``warmup ..`` end (synchronised only at the two ends) and keeps every step's loss."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds, self.losses = warmup, None, None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if len(self.losses) == self.warmup and self.start is None:  # steps of this fit, also after a resume
            C.sync(pl_module.device)
            C.reset_peak_memory(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())

    def on_train_end(self, trainer, pl_module) -> None:
        C.sync(pl_module.device)
        self.seconds = time.perf_counter() - self.start


def empty_llama(shape: C.LlamaShape, dtype: str | None = None) -> HFCausalLM:
    """A random-init Llama built without memory; filled on the device by ``configure_model``."""
    config = shape.config().to_dict()
    return HFCausalLM(config=config, dtype=dtype, tokenizer_id=C.TOKENIZER_ID, empty_init=True)


def build(args, teacher: C.LlamaShape, student: C.LlamaShape) -> DistillationModule:
    torch.manual_seed(args.seed)
    return DistillationModule(
        student=empty_llama(student),
        teacher=empty_llama(teacher, "bf16"),
        teacher_dtype="bf16",
        losses=[TokenKD(divergence="forward_kl", fused=args.loss == "fused")],
        compile=args.compile,
        allow_untrained_teacher=True,  # random weights are what a throughput measurement needs
    )


def trainer(args, steps: int, callbacks: list, **kwargs) -> Trainer:
    strategy = {"single": "auto"}.get(args.strategy, args.strategy)
    if args.strategy == "fsdp2":
        from lit_distill.sharding import FSDP2Strategy

        strategy = FSDP2Strategy(teacher=args.teacher_sharding, reshard_after_forward=not args.keep_gathered)
    if args.strategy == "fsdp":  # Lightning's FSDP1, wrapped per decoder layer like fsdp2 (its default: one unit)
        from lightning.pytorch.strategies import FSDPStrategy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        strategy = FSDPStrategy(auto_wrap_policy={LlamaDecoderLayer}, use_orig_params=True)
    return Trainer(
        accelerator=args.accelerator,
        devices=1 if args.strategy == "single" else args.devices,
        strategy=strategy,
        precision="bf16-mixed" if args.accelerator == "gpu" else "32-true",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kwargs,
    )


def data(args, vocab: int) -> C.SyntheticTokenData:
    return C.SyntheticTokenData(args.batch_size, args.seq_len, vocab, seed=args.seed)


def save(run: Trainer, folder: Path) -> tuple[Path, float]:
    """Write the run's (sharded) checkpoint; returns its path and the seconds it took."""
    started = time.perf_counter()
    run.save_checkpoint(folder / "student.ckpt")
    return folder / "student.ckpt", time.perf_counter() - started


def resume_and_export(args, teacher: C.LlamaShape, student: C.LlamaShape, ckpt: Path, steps_done: int) -> dict:
    """Resume in a new run from a differently initialised student, export as a Hugging Face folder, reload on CPU.

    A resume that did not load the checkpoint would start from the initial loss again, not from the last one.
    """
    folder = ckpt.parent
    args.seed += 1
    resumed, clock = build(args, teacher, student), Clock(warmup=0)
    started = time.perf_counter()
    again = trainer(args, steps_done + 2, [clock])
    again.fit(resumed, data(args, teacher.vocab), ckpt_path=ckpt)
    result = {"rank": again.global_rank, "resume_fit_s": round(time.perf_counter() - started, 1)}
    result["resumed_losses"] = [round(float(x), 5) for x in clock.losses]
    started = time.perf_counter()
    export_pretrained(resumed, folder / "student_hf", overwrite=True)
    result["export_s"] = round(time.perf_counter() - started, 1)
    if again.global_rank == 0:
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(str(folder / "student_hf"))
        result["reloaded_params"] = sum(p.numel() for p in reloaded.parameters())
    return result


def name(args, world_size: int) -> str:
    text = f"lit-distill Trainer, {args.strategy} x{world_size}, {args.loss} loss"
    if args.strategy == "fsdp2":
        text += f", teacher {args.teacher_sharding}" + (", student kept gathered" if args.keep_gathered else "")
    return text + (", compiled" if args.compile else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(parser)
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp2", "fsdp"], default="single")
    parser.add_argument("--teacher-sharding", choices=["shard", "replicate"], default="shard", help="fsdp2 only")
    parser.add_argument(
        "--keep-gathered", action="store_true", help="fsdp2: student blocks stay gathered until backward"
    )
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--loss", choices=["fused", "full"], default="fused")
    parser.add_argument("--compile", action="store_true", help="torch.compile student and teacher in place")
    parser.add_argument("--cycle", default=None, help="folder: checkpoint, resume and export after the timed run")
    parser.add_argument("--resume", default=None, help="checkpoint written by --cycle: resume for two steps, export")
    args = parser.parse_args()
    teacher, student = C.resolve_args(args)
    if args.accelerator == "cpu":
        torch.set_num_threads(1)
    if args.resume:  # a new process, as a resumed job is: the first run's models are gone
        steps_done = int(torch.load(Path(args.resume) / "meta.pt", weights_only=False)["global_step"])
        result = resume_and_export(args, teacher, student, Path(args.resume), steps_done)
        if result.pop("rank") == 0:
            C.write_result({"run": name(args, args.devices) + ", resumed", **result}, args.out)
        return
    module = build(args, teacher, student)
    clock = Clock(args.warmup)
    run = trainer(args, args.warmup + args.steps, [clock])
    run.fit(module, data(args, teacher.vocab))
    device = torch.device("cuda", torch.cuda.current_device()) if args.accelerator == "gpu" else module.device
    extra = {
        "strategy": args.strategy,
        "loss": args.loss,
        "compile": args.compile,
        "first_loss": round(float(clock.losses[0]), 5),
        "final_loss": round(float(clock.losses[-1]), 5),
    }
    peaks = C.gather(C.peak_memory_gib(device))
    rank, world, seconds, steps_done = run.global_rank, run.world_size, clock.seconds, run.global_step
    if args.cycle:
        ckpt, save_s = save(run, Path(args.cycle))
        extra["cycle"] = {"checkpoint": str(ckpt), "save_s": round(save_s, 1), "steps_done": steps_done}
    if rank == 0:
        row = C.result_row(
            name(args, world),
            teacher, student, tokens=args.steps * args.batch_size * args.seq_len * world,
            seconds=seconds, world_size=world, seq_len=args.seq_len, peak_per_rank=peaks,
            batch_per_device=args.batch_size, steps=args.steps, warmup=args.warmup, **extra,
        )  # fmt: skip
        C.write_result(row, args.out)


if __name__ == "__main__":
    main()
    C.end_process_group()
