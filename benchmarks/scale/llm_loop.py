"""Token KD of a Llama pair in a plain PyTorch loop (no Lightning): the baseline for the Lightning path.

    python -m benchmarks.scale.llm_loop --pair a --out loop_a_1gpu.json                            # 1 GPU
    torchrun --nproc_per_node 2 -m benchmarks.scale.llm_loop --pair a --fsdp --out loop_a_fsdp2.json   # FSDP2 x2
    torchrun --nproc_per_node 2 -m benchmarks.scale.llm_loop --pair b --fsdp --out loop_b_fsdp2.json   # 70B teacher
    python -m benchmarks.scale.llm_loop --smoke                                  # CPU, one process, toy pair
    python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.scale.llm_loop --smoke --fsdp   # CPU, gloo

One step: the frozen teacher's final hidden states (no grad, bf16 weights), the student's, then forward
KL(teacher || student) at T=1 over every next-token position, from the two LM heads through
``lit_distill.losses.functional.fused_linear_kd`` (``--loss fused``, the logits are never materialised)
or from full ``[B, T, V]`` logits (``--loss full``); AdamW(lr=1e-3, weight_decay=0.01) on the student.
Single process: student fp32 under bf16 autocast (Lightning's ``bf16-mixed``). ``--fsdp``: FSDP2
``fully_shard`` per decoder layer for both models, built on the meta device and initialised shard by
shard, the student with bf16 compute / fp32 master weights and gradient reduction, the teacher in bf16
with no gradients; its LM head stays replicated so the loss can read the whole weight. Every rank
reads its own ``batch x seq`` random rows. Rank 0 prints (and writes to ``--out``) one JSON row:
tokens/s over all ranks after the warm-up steps, FLOPs/token and MFU (benchmarks/_lib/llm.py), peak memory per
rank.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._lib.llm import LlamaShape, count_params, llama
from benchmarks._lib.results import add_model_args, end_process_group, report, resolve_args
from benchmarks._lib.synthetic import synthetic_batch
from benchmarks._lib.timing import Clock, reset_peak_memory
from benchmarks._lib.trainers import parse, parser, quiet
from lit_distill.losses import functional as LF


class StudentKD(nn.Module):
    """The student and the loss in one forward, so an FSDP root around it has the LM head unsharded there.

    The teacher's head is held outside the module tree: it is neither trained nor sharded with the student.
    """

    def __init__(self, student: nn.Module, teacher_head: nn.Linear, loss: str) -> None:
        super().__init__()
        self.student, self.loss = student, loss
        self._teacher_head = (teacher_head,)

    def forward(self, input_ids: Tensor, labels: Tensor, teacher_hidden: Tensor) -> Tensor:
        hidden = self.student.model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
        teacher_hidden, targets = teacher_hidden[:, :-1], labels[:, 1:]
        t_weight = self._teacher_head[0].weight
        if self.loss == "fused":
            return LF.fused_linear_kd(
                hidden, self.student.lm_head.weight, teacher_hidden, t_weight, divergence="forward_kl", labels=targets
            )
        with torch.no_grad():
            t_logits = F.linear(teacher_hidden, t_weight)
        return LF.divergence("forward_kl", self.student.lm_head(hidden), t_logits, temperature=1.0)


def setup_distributed(args: argparse.Namespace, device_type: str) -> tuple[int, int]:
    """``(rank, world_size)``; starts a process group for ``--fsdp`` (a one-rank group outside torchrun)."""
    if not args.fsdp:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SystemExit("several processes need --fsdp (the plain loop runs one process).")
        return 0, 1
    if "WORLD_SIZE" not in os.environ:  # FSDP on one device, without torchrun
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def check_fits(teacher: LlamaShape, student: LlamaShape, device: torch.device) -> None:
    """Refuse a single-device run whose weights and optimizer state alone exceed the GPU."""
    if device.type != "cuda":
        return
    need = 2 * count_params(teacher.config())["total"] + 16 * count_params(student.config())["total"]
    have = torch.cuda.get_device_properties(device).total_memory
    if need > have:
        raise SystemExit(
            f"teacher bf16 weights + student fp32 weights, grads and AdamW state need {need / 2**30:.1f} GiB, "
            f"more than this GPU's {have / 2**30:.1f} GiB before any activation: shard them with --fsdp under "
            "torchrun --nproc_per_node N."
        )


def build(args, teacher_shape, student_shape, device) -> tuple[nn.Module, StudentKD]:
    """The teacher (bf16 under ``--precision bf16``) and the student wrapped with the loss; student first, then
    teacher, from the same seed as trl_gkd.py, so both baselines start from the same weights."""
    torch.manual_seed(args.seed)
    low = "bf16" if args.precision == "bf16" else None
    if not args.fsdp:
        check_fits(teacher_shape, student_shape, device)
        student = llama(student_shape, device)
        teacher = llama(teacher_shape, device, low).model.eval().requires_grad_(False)
        return teacher, StudentKD(student.model, teacher.lm_head, args.loss)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    student, teacher = llama(student_shape, None), llama(teacher_shape, None, low)  # empty: sharded, then filled
    t_model = teacher.model.eval().requires_grad_(False)
    for layer in t_model.model.layers:
        fully_shard(layer)
    fully_shard(t_model.model)  # embedding and final norm; lm_head stays whole on every rank
    kd = StudentKD(student.model, t_model.lm_head, args.loss)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if low else torch.float32, reduce_dtype=torch.float32)
    for layer in kd.student.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(kd, mp_policy=policy)
    teacher.materialize_weights(device)
    student.materialize_weights(device)
    return t_model, kd


def run(args: argparse.Namespace) -> None:
    teacher_shape, student_shape = resolve_args(args)
    device_type = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.precision is None:
        args.precision = "bf16" if device_type == "cuda" else "fp32"
    rank, world = setup_distributed(args, device_type)
    device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    teacher, kd = build(args, teacher_shape, student_shape, device)
    optimizer = torch.optim.AdamW(kd.student.parameters(), lr=1e-3, weight_decay=0.01)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16" and not args.fsdp)
    clock = Clock(device)
    reset_peak_memory(device)
    for step in range(args.warmup + args.steps):
        batch = synthetic_batch(args.batch_size, args.seq_len, teacher_shape.vocab, args.seed,
                                  start=(step * world + rank) * args.batch_size)  # fmt: skip
        ids, labels = (batch[k].to(device, non_blocking=True) for k in ("input_ids", "labels"))
        if step == args.warmup:
            clock.mark("start")
        with torch.no_grad():
            t_hidden = teacher.model(input_ids=ids, use_cache=False).last_hidden_state
        with autocast:
            loss = kd(ids, labels, t_hidden)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    clock.mark("end")
    mode = f"fsdp2 x{world}" if args.fsdp else "single"
    report(args, f"hand loop, {mode}, {args.loss} loss", teacher_shape, student_shape, clock.ms("start", "end") / 1e3,
           device, precision=args.precision, final_loss=round(float(loss.detach().float()), 5))  # fmt: skip
    end_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    add_model_args(p)
    p.add_argument("--fsdp", action="store_true", help="FSDP2 per decoder layer (launch with torchrun)")
    p.add_argument("--loss", choices=["fused", "full"], default="fused", help="fused LM-head KD or full logits")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, else fp32")
    args = parse(p, argv, device="cpu")
    quiet()
    run(args)


if __name__ == "__main__":
    main()
