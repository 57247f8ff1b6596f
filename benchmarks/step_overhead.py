"""What does DistillationModule + Trainer.fit cost over the training loop an expert writes by hand?

    python benchmarks/step_overhead.py --suite gpu      # resnet50 -> resnet18 and tiny GPT, on CUDA
    python benchmarks/step_overhead.py --suite cpu      # digits MLPs on the CPU
    python benchmarks/step_overhead.py --suite smoke    # both CPU cases, a few steps, CUDA-graph path included

Both sides run in one process on the same synthetic batch (already on the device), the same
models, dtypes, loss (0.9 * KD at T=4 + 0.1 * hard-label CE) and optimizer. Step times come from
CUDA events recorded at every step start (no sync inside the loop; one at the end), so Python
overhead shows up only where it is not hidden behind GPU work. Hand loop and module alternate
``--repeats`` times; each repeat gives a module/hand ratio of median step times, and the row reports
the median ratio and its range over the repeats. Rows: each case eager; the tiny GPT with CUDA graphs
on both sides (``torch.compile(mode="reduce-overhead")`` of student and teacher, the module's
``compile: {mode: reduce-overhead}``); the resnet pair compiled. Derived rows: compiled module vs
the uncompiled hand loop (resnet), CUDA-graph module vs the eager hand loop (tiny GPT). JSON last.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, IterableDataset

from lit_distill import CrossEntropy, DistillationModule, LogitKD
from lit_distill.losses import functional as LF

warnings.filterwarnings("ignore")


class Clock:
    """Per-step wall times: CUDA events on the stream, or perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def step_ms(self, warmup: int) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            times = [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        else:
            times = [1000 * (b - a) for a, b in zip(self.marks, self.marks[1:])]
        return times[warmup:]


class RepeatBatch(IterableDataset):
    def __init__(self, batch, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.batch


class MarkSteps(Callback):
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.mark()


def loss_fn(s_logits, t_logits, targets):
    kd = LF.kl_divergence(s_logits, t_logits, temperature=4.0)
    if s_logits.ndim == 3:
        ce = F.cross_entropy(s_logits[:, :-1].reshape(-1, s_logits.shape[-1]).float(), targets[:, 1:].reshape(-1))
    else:
        ce = F.cross_entropy(s_logits.float(), targets)
    return 0.9 * kd + 0.1 * ce


def hand_loop(case, steps: int, warmup: int, compiled: dict | None) -> list[float]:
    device, student, teacher, batch, make_opt = (
        case["device"],
        case["student"](),
        case["teacher"](),
        case["batch"],
        case["opt"],
    )
    teacher.requires_grad_(False).eval()
    dtype = case["teacher_dtype"]
    if dtype is not None:
        teacher.to(dtype)
    if case["channels_last"]:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    if compiled is not None:
        student.compile(**compiled)
        teacher.compile(**compiled)
    graphs = compiled is not None and compiled.get("mode") in ("reduce-overhead", "max-autotune")
    opt = make_opt(student.parameters())
    inputs, targets = batch
    clock = Clock(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case["autocast"])
    for _ in range(warmup + steps + 1):
        clock.mark()
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # what the module does for this mode
        with torch.no_grad():  # fresh data each step would need this cast each step too
            t_logits = teacher(inputs.to(dtype) if dtype is not None and inputs.is_floating_point() else inputs)
        with autocast:
            s_logits = student(inputs)
            loss = loss_fn(s_logits, t_logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clock.step_ms(warmup)


def build_module(case: dict, compiled: dict | None = None) -> DistillationModule:
    """The case's models, dtype and optimizer as a DistillationModule with the benchmark's loss."""
    return DistillationModule(
        student=case["student"](),
        teacher=case["teacher"](),
        losses=[LogitKD(temperature=4.0, weight=0.9), CrossEntropy(weight=0.1)],
        teacher_dtype=None if case["teacher_dtype"] is None else str(case["teacher_dtype"]).removeprefix("torch."),
        channels_last=case["channels_last"],
        compile=False if compiled is None else (compiled or True),
        optimizer=case["opt"],
        allow_untrained_teacher=True,  # step speed does not depend on what the teacher knows
    )


def module_loop(case, steps: int, warmup: int, compiled: dict | None) -> list[float]:
    device = case["device"]
    module = build_module(case, compiled)
    clock = Clock(device)
    trainer = Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed" if case["autocast"] else "32-true",
        max_steps=warmup + steps + 1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[MarkSteps(clock)],
        log_every_n_steps=50,
    )
    loader = DataLoader(RepeatBatch(case["batch"], warmup + steps + 2), batch_size=None)
    trainer.fit(module, loader)
    return clock.step_ms(warmup)


def resnet_case(batch_size: int) -> dict:
    import torchvision

    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch_size, 3, 224, 224, device=device, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device=device, generator=g)
    return {
        "name": f"resnet50->resnet18 b{batch_size} 224² bf16 channels_last",
        "device": device,
        "student": lambda: torchvision.models.resnet18().to(device),
        "teacher": lambda: torchvision.models.resnet50().to(device),
        "batch": (x, y),
        "opt": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        "teacher_dtype": torch.bfloat16,
        "channels_last": True,
        "autocast": True,
    }


def gpt_case(device: torch.device, rows: int = 8, seq: int = 256) -> dict:
    from lit_distill.models.gpt import GPT

    ids = torch.randint(0, 258, (rows, seq), device=device, generator=torch.Generator(device=device).manual_seed(0))
    return {
        "name": f"tiny GPT 6x384 -> 2x128, batch {rows}x{seq} tokens, {device.type}",
        "device": device,
        "student": lambda: GPT(block_size=256, n_layer=2, n_head=2, n_embd=128).to(device),
        "teacher": lambda: GPT(block_size=256, n_layer=6, n_head=6, n_embd=384).to(device),
        "batch": (ids, ids),
        "opt": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "teacher_dtype": torch.bfloat16 if device.type == "cuda" else None,
        "channels_last": False,
        "autocast": device.type == "cuda",
    }


def digits_case() -> dict:
    from lit_distill.models import MLP

    g = torch.Generator().manual_seed(0)
    return {
        "name": "digits MLP 64-256-256-10 -> 64-8-10, batch 64, cpu",
        "device": torch.device("cpu"),
        "student": lambda: MLP(64, [8], 10),
        "teacher": lambda: MLP(64, [256, 256], 10),
        "batch": (torch.rand(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)),
        "opt": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "teacher_dtype": None,
        "channels_last": False,
        "autocast": False,
    }


def measure(case: dict, steps: int, warmup: int, compiled: dict | None, repeats: int) -> dict:
    """Hand loop and module alternately ``repeats`` times (drift from clocks and heat hits both alike)."""
    hand, module = [], []
    for _ in range(repeats):
        torch.manual_seed(0)
        hand.append(statistics.median(hand_loop(copy.copy(case), steps, warmup, compiled)))
        torch.manual_seed(0)
        module.append(statistics.median(module_loop(copy.copy(case), steps, warmup, compiled)))
    ratios = [m / h for h, m in zip(hand, module)]
    h, m, r = statistics.median(hand), statistics.median(module), statistics.median(ratios)
    label = "eager" if compiled is None else ("compiled" if not compiled else f"compiled {compiled}")
    row = {
        "case": case["name"],
        "compiled": label,
        "hand_ms": round(h, 3),
        "module_ms": round(m, 3),
        "ratio": round(r, 4),
        "ratio_range": [round(min(ratios), 4), round(max(ratios), 4)],
        "hand_runs": [round(x, 3) for x in hand],
        "module_runs": [round(x, 3) for x in module],
    }
    print(
        f"{row['case']:<56} {label:<36} hand {h:8.3f} ms  module {m:8.3f} ms  ratio {r:.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f} over {repeats})",
        flush=True,
    )
    return row


def profile_module(case: dict) -> None:
    """Where the module path spends host time: the top self-CPU ops of a few steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        module_loop(case, 10, 5, None)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


GRAPHS = {"mode": "reduce-overhead"}  # CUDA graphs through torch.compile: one replay instead of many launches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["gpu", "cpu", "smoke"], default="gpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="eager repeats per case (ratio median and range)")
    parser.add_argument("--compile-repeats", type=int, default=1, help="compilation is slow: fewer repeats")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--only", choices=["resnet", "gpt"], default=None, help="run one GPU case")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of the module path (gpt case)")
    parser.add_argument("--out", default=None, help="folder for rows.json, rewritten after every case")
    args = parser.parse_args()

    rows = []
    if args.suite == "gpu":
        torch.backends.cudnn.benchmark = True
        gpt = lambda: gpt_case(torch.device("cuda"))  # noqa: E731
        resnet = lambda: resnet_case(args.batch_size)  # noqa: E731
        plan: list[tuple[str, Callable[[], dict], dict | None, int]] = []
        if args.only in (None, "resnet"):
            plan.append(("resnet", resnet, None, args.repeats))
        if args.only in (None, "gpt"):
            plan.append(("gpt", gpt, None, args.repeats))
            if not args.no_compile:
                plan.append(("gpt", gpt, GRAPHS, args.compile_repeats))
        if not args.no_compile and args.only in (None, "resnet"):
            plan.append(("resnet", resnet, {}, args.compile_repeats))
        if args.profile:
            profile_module(gpt())
        for name, make, compiled, repeats in plan:
            rows.append({**measure(make(), args.steps, args.warmup, compiled, repeats), "pair": name})
            if args.out:  # a run cut short still leaves the cases it finished
                Path(args.out, "step_overhead_rows.json").write_text(json.dumps(rows + derived_rows(rows, quiet=True)))
        rows += derived_rows(rows)
    elif args.suite == "smoke":  # the GPU suite's plan on the CPU, tiny: checks the script, measures nothing
        graphs_cpu = {"backend": "aot_eager", **GRAPHS}  # CUDA graphs need CUDA; the same code path otherwise
        plan = [("digits", digits_case, None, 1), ("digits", digits_case, graphs_cpu, 1)]
        plan.append(("gpt", lambda: gpt_case(torch.device("cpu"), rows=2, seq=64), None, 1))
        for name, make, compiled, repeats in plan:
            rows.append({**measure(make(), 4, 1, compiled, repeats), "pair": name})
        rows += derived_rows(rows)
    else:
        for case in (digits_case(), gpt_case(torch.device("cpu"))):
            rows.append(measure(case, args.steps, args.warmup, None, args.repeats))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.suite == "gpu" else "cpu"
    print(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}))


def derived_rows(rows: list[dict], quiet: bool = False) -> list[dict]:
    """Speed-ups of compiled modules over the uncompiled hand loop of the same pair."""
    out = []
    for comp in [r for r in rows if r.get("pair") and r["compiled"] != "eager"]:
        pair, mode = comp["pair"], comp["compiled"]
        base = next((r for r in rows if r.get("pair") == pair and r["compiled"] == "eager"), None)
        if base is None:
            continue
        speedup = base["hand_ms"] / comp["module_ms"]
        out.append({"case": f"speed-up: {pair} module ({mode}) vs uncompiled hand loop", "ratio": round(speedup, 4)})
        if not quiet:
            print(f"{pair}: module ({mode}) vs uncompiled hand loop: {speedup:.3f}x steps/s")
    return out


if __name__ == "__main__":
    main()
