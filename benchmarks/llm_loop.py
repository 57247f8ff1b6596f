"""Token KD of a Llama pair in a plain PyTorch loop (no Lightning): the baseline for the Lightning path.

    python benchmarks/llm_loop.py --pair a --out loop_a_1gpu.json                                # 1 GPU
    torchrun --nproc_per_node 2 benchmarks/llm_loop.py --pair a --fsdp --out loop_a_fsdp2.json   # FSDP2, 2 GPUs
    torchrun --nproc_per_node 2 benchmarks/llm_loop.py --pair b --fsdp --out loop_b_fsdp2.json   # 70B teacher
    python -m torch.distributed.run --nproc_per_node 2 benchmarks/llm_loop.py --smoke --fsdp      # CPU, gloo

One step: the frozen teacher's final hidden states (no grad, bf16 weights), the student's, then forward
KL(teacher || student) at T=1 over every next-token position, from the two LM heads through
``lit_distill.losses.functional.fused_linear_kd`` (``--loss fused``, the logits are never materialised)
or from full ``[B, T, V]`` logits (``--loss full``); AdamW(lr=1e-3, weight_decay=0.01) on the student.
Single process: student fp32 under bf16 autocast (Lightning's ``bf16-mixed``). ``--fsdp``: FSDP2
``fully_shard`` per decoder layer for both models, built on the meta device and initialised shard by
shard, the student with bf16 compute / fp32 master weights and gradient reduction, the teacher in bf16
with no gradients; its LM head stays replicated so the loss can read the whole weight. Every rank
reads its own ``batch x seq`` random rows. Rank 0 prints (and writes to ``--out``) one JSON row:
tokens/s over all ranks after the warm-up steps, FLOPs/token and MFU (llm_common), peak memory per rank.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm_common as C  # noqa: E402

from lit_distill.losses import functional as LF  # noqa: E402

warnings.filterwarnings("ignore", message=".*TypedStorage.*")


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


def check_fits(teacher: C.LlamaShape, student: C.LlamaShape, device: torch.device) -> None:
    """Refuse a single-device run whose weights and optimizer state alone exceed the GPU."""
    if device.type != "cuda":
        return
    need = 2 * C.count_params(teacher.config())["total"] + 16 * C.count_params(student.config())["total"]
    have = torch.cuda.get_device_properties(device).total_memory
    if need > have:
        raise SystemExit(
            f"teacher bf16 weights + student fp32 weights, grads and AdamW state need {need / 2**30:.1f} GiB, "
            f"more than this GPU's {have / 2**30:.1f} GiB before any activation: shard them with --fsdp under "
            "torchrun --nproc_per_node N."
        )


def build(args, teacher_shape, student_shape, device) -> tuple[nn.Module, StudentKD]:
    torch.manual_seed(args.seed)
    low = torch.bfloat16 if args.precision == "bf16" else torch.float32
    t_cfg, s_cfg = teacher_shape.config(), student_shape.config()
    if not args.fsdp:
        check_fits(teacher_shape, student_shape, device)
        student = C.causal_lm(s_cfg, device)  # student first, then teacher: the same init as trl_gkd.py
        teacher = C.causal_lm(t_cfg, device, low).eval().requires_grad_(False)
        return teacher, StudentKD(student, teacher.lm_head, args.loss)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    teacher = C.causal_lm(t_cfg, "meta", low).eval().requires_grad_(False)
    for layer in teacher.model.layers:
        fully_shard(layer)
    fully_shard(teacher.model)  # embedding and final norm; lm_head stays whole on every rank
    kd = StudentKD(C.causal_lm(s_cfg, "meta"), teacher.lm_head, args.loss)
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    for layer in kd.student.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(kd, mp_policy=policy)
    C.materialize(teacher, device)
    C.materialize(kd, device)
    return teacher, kd


def run(args: argparse.Namespace) -> None:
    teacher_shape, student_shape = C.resolve_args(args)
    device_type = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.precision is None:
        args.precision = "bf16" if device_type == "cuda" else "fp32"
    rank, world = setup_distributed(args, device_type)
    device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    teacher, kd = build(args, teacher_shape, student_shape, device)
    optimizer = torch.optim.AdamW(kd.student.parameters(), lr=1e-3, weight_decay=0.01)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16" and not args.fsdp)
    timer = C.StepTimer(args.warmup, device)
    C.reset_peak_memory(device)
    for step in range(args.warmup + args.steps):
        batch = C.synthetic_batch(args.batch_size, args.seq_len, teacher_shape.vocab, args.seed,
                                  start=(step * world + rank) * args.batch_size)  # fmt: skip
        ids, labels = (batch[k].to(device, non_blocking=True) for k in ("input_ids", "labels"))
        timer.step_start(step)
        with torch.no_grad():
            t_hidden = teacher.model(input_ids=ids, use_cache=False).last_hidden_state
        with autocast:
            loss = kd(ids, labels, t_hidden)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = timer.stop()
    mode = f"fsdp2 x{world}" if args.fsdp else "single"
    C.report(args, f"hand loop, {mode}, {args.loss} loss", teacher_shape, student_shape, seconds, device,
             precision=args.precision, final_loss=round(float(loss.detach().float()), 5))  # fmt: skip
    C.end_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(parser)
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 per decoder layer (launch with torchrun)")
    parser.add_argument("--loss", choices=["fused", "full"], default="fused", help="fused LM-head KD or full logits")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, else fp32")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
