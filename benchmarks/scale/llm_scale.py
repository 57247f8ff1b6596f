"""LLM-size distillation through ``DistillationModule`` + ``Trainer``: tokens/s, MFU and memory per GPU.

    python -m benchmarks.scale.llm_scale --pair a --strategy single --out a_single.json   # 1 GPU, fused LM-head KD
    python -m benchmarks.scale.llm_scale --pair a --strategy single --loss full           # 1 GPU, full logits
    python -m benchmarks.scale.llm_scale --pair a --strategy ddp --devices 2              # DDP x2
    python -m benchmarks.scale.llm_scale --pair a --strategy fsdp2 --devices 2            # FSDP2 x2 (fsdp2 strategy)
    python -m benchmarks.scale.llm_scale --pair b --strategy fsdp2 --devices 2 --teacher-layers 86 --cycle ckpt_dir
    python -m benchmarks.scale.llm_scale --smoke --cycle DIR       # CPU check: toy pair, FSDP2 x2 on gloo, cycle

The models are random-init Llama pairs from ``benchmarks/_lib/llm.py`` (no download), built without memory
(``HFCausalLM(config=..., empty_init=True)``) and filled on the device, each rank only its shards under
``fsdp2``. The student is fp32 under ``bf16-mixed``; the teacher is bf16 (``teacher_dtype: bf16``). The loss is
``TokenKD(forward_kl)`` on every next-token position, fused with the LM heads (``--loss fused``) or on full logits.
Every rank reads its own synthetic ``batch x seq`` rows; tokens/s counts all ranks, after ``--warmup`` steps.
Lightning's launcher re-executes this script once per device; rank 0 prints (and writes to ``--out``) one JSON row.

``--cycle DIR`` (pair b): after the timed run the student is checkpointed (sharded) into DIR/student.ckpt; a second
process with ``--resume DIR/student.ckpt`` resumes from it for two more steps (from a differently initialised
student: the sum of its weights when training starts equals the saved student's only if the checkpoint was
restored), exports the student as a Hugging Face folder and reloads it on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer

from benchmarks._lib.llm import LlamaShape, llama
from benchmarks._lib.results import add_model_args, end_process_group, gather, report, resolve_args, write_result
from benchmarks._lib.synthetic import SyntheticTokenData
from benchmarks._lib.timing import FitClock, peak_memory_gib
from benchmarks._lib.trainers import parse, parser, quiet, quiet_trainer
from lit_distill import DistillationModule
from lit_distill.losses import TokenKD
from lit_distill.models.hf import export_pretrained


def build(args, teacher: LlamaShape, student: LlamaShape) -> DistillationModule:
    """Both models empty (meta device); ``configure_model`` fills them on the device, each rank its shards."""
    torch.manual_seed(args.seed)
    module = DistillationModule(
        student=llama(student, None, kernels=args.kernels),
        teacher=llama(teacher, None, "bf16", kernels=args.kernels),
        teacher_dtype="bf16",
        losses=[TokenKD(divergence="forward_kl", fused=args.loss == "fused")],
        compile=args.compile,
    )
    if args.optimizer == "foreach":  # the unfused AdamW, to measure what the default's fused kernel saves
        module.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=True)
    return module


def trainer(args, steps: int, callbacks: list, **kwargs) -> Trainer:
    strategy = {"single": "auto"}.get(args.strategy, args.strategy)
    if args.strategy == "fsdp2":
        from lit_distill.sharding import FSDP2Strategy

        strategy = FSDP2Strategy(teacher=args.teacher_sharding, reshard_after_forward=not args.keep_gathered)
    if args.strategy == "fsdp":  # Lightning's FSDP1, wrapped per decoder layer like fsdp2 (its default: one unit)
        from lightning.pytorch.strategies import FSDPStrategy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        strategy = FSDPStrategy(auto_wrap_policy={LlamaDecoderLayer}, use_orig_params=True)
    return quiet_trainer(
        accelerator=args.accelerator,
        devices=1 if args.strategy == "single" else args.devices,
        strategy=strategy,
        precision="bf16-mixed" if args.accelerator == "gpu" else "32-true",
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kwargs,
    )


def data(args, vocab: int) -> SyntheticTokenData:
    return SyntheticTokenData(args.batch_size, args.seq_len, vocab, seed=args.seed)


def weight_sum(model: torch.nn.Module) -> float:
    """The sum of all weights, over every rank's shards (call on all ranks): equal before a checkpoint is written
    and after it is restored into a differently initialised model, and only then."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    total = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for param in model.parameters():
        local = param.detach().to_local() if isinstance(param, DTensor) else param.detach()
        part = local.double().sum()
        if isinstance(param, DTensor) and any(p.is_shard() for p in param.placements):
            dist.all_reduce(part)
        total += part
    return float(total)


class StartWeights(Callback):
    """The student's :func:`weight_sum` when training starts, after a resume has restored it."""

    def on_train_start(self, trainer: Trainer, pl_module: DistillationModule) -> None:
        self.value = weight_sum(pl_module.student)


def resume_and_export(args, teacher: LlamaShape, student: LlamaShape, ckpt: Path, steps_done: int) -> dict:
    """Resume in a new run from a differently initialised student, export as a Hugging Face folder, reload on CPU.

    A resume that did not load the checkpoint would start from the initial loss again, not from the last one.
    """
    folder = ckpt.parent
    args.seed += 1
    resumed, clock, start = build(args, teacher, student), FitClock(), StartWeights()
    started = time.perf_counter()
    again = trainer(args, steps_done + 2, [clock, start])
    again.fit(resumed, data(args, teacher.vocab), ckpt_path=ckpt)
    result = {"rank": again.global_rank, "resume_fit_s": round(time.perf_counter() - started, 1)}
    result["resumed_losses"] = [round(float(x), 5) for x in clock.losses]
    result["resumed_weight_sum"] = start.value
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
    text += f", {args.kernels} kernels" if args.kernels else ""
    text += ", foreach AdamW" if args.optimizer == "foreach" else ""
    return text + (", compiled" if args.compile else "")


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    add_model_args(p)
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp2", "fsdp"], default="single")
    p.add_argument("--teacher-sharding", choices=["shard", "replicate"], default="shard", help="fsdp2 only")
    p.add_argument("--keep-gathered", action="store_true", help="fsdp2: student blocks stay gathered until backward")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--loss", choices=["fused", "full"], default="fused")
    p.add_argument("--compile", action="store_true", help="torch.compile student and teacher in place")
    p.add_argument("--kernels", choices=["liger"], default=None, help="HFCausalLM(kernels=...): fused Llama layers")
    p.add_argument("--optimizer", choices=["default", "foreach"], default="default", help="foreach: unfused AdamW")
    p.add_argument("--cycle", default=None, help="folder: checkpoint, resume and export after the timed run")
    p.add_argument("--resume", default=None, help="checkpoint written by --cycle: resume for two steps, export")
    args = parse(p, argv, strategy="fsdp2", devices=2, accelerator="cpu")
    teacher, student = resolve_args(args)
    quiet(threads=1 if args.accelerator == "cpu" else None)
    if args.resume:  # a new process, as a resumed job is: the first run's models are gone
        steps_done = int(torch.load(Path(args.resume) / "meta.pt", weights_only=False)["global_step"])
        result = resume_and_export(args, teacher, student, Path(args.resume), steps_done)
        if result.pop("rank") == 0:
            write_result({"run": name(args, args.devices) + ", resumed", **result}, args.out)
        return
    module = build(args, teacher, student)
    clock = FitClock(args.warmup)
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
    peaks = gather(peak_memory_gib(device))  # before the checkpoint, which may gather weights
    if args.cycle:
        started = time.perf_counter()
        run.save_checkpoint(Path(args.cycle) / "student.ckpt")  # sharded under fsdp2: each rank writes its part
        extra["cycle"] = {"checkpoint": str(Path(args.cycle) / "student.ckpt"), "steps_done": run.global_step,
                          "save_s": round(time.perf_counter() - started, 1),
                          "weight_sum": weight_sum(module.student)}  # fmt: skip
    report(args, name(args, run.world_size), teacher, student, clock.seconds, device, run.global_rank, peaks, **extra)


if __name__ == "__main__":
    main()
    end_process_group()
