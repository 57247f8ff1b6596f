"""What does DistillationModule + Trainer.fit cost over the training loop an expert writes by hand?

    python -m benchmarks.speed.step_overhead --suite gpu   # resnet50 -> resnet18 and tiny GPT, on CUDA
    python -m benchmarks.speed.step_overhead --suite cpu   # digits MLPs and tiny GPT on the CPU
    python -m benchmarks.speed.step_overhead --smoke       # the GPU suite's plan on the CPU, tiny: checks the script

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

import copy
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmarks._lib.step_cases import RepeatBatch, build_module, digits_case, gpt_case, resnet_case
from benchmarks._lib.timing import Clock, FitClock
from benchmarks._lib.trainers import parse, parser, print_json, quiet, quiet_trainer
from lit_distill.losses import functional as LF


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
    clock = Clock(device, events=True)
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
    return clock.intervals()[warmup:]


def module_loop(case, steps: int, warmup: int, compiled: dict | None) -> list[float]:
    device = case["device"]
    module = build_module(case, compiled)
    clock = FitClock(warmup=None, per_step=True, clock=Clock(device, events=True))  # no sync inside the run
    trainer = quiet_trainer(
        accelerator=device.type,
        precision="bf16-mixed" if case["autocast"] else "32-true",
        max_steps=warmup + steps + 1,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
        log_every_n_steps=50,
    )
    loader = DataLoader(RepeatBatch(case["batch"], warmup + steps + 2), batch_size=None)
    trainer.fit(module, loader)
    return clock.step_ms(warmup)


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


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--suite", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="eager repeats per case (ratio median and range)")
    p.add_argument("--compile-repeats", type=int, default=1, help="compilation is slow: fewer repeats")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--only", choices=["resnet", "gpt"], default=None, help="run one GPU case")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of the module path (gpt case)")
    p.add_argument("--out", default=None, help="folder for rows.json, rewritten after every case")
    args = parse(p, argv, steps=4, warmup=1, repeats=1)
    quiet()

    rows = []
    if args.suite == "gpu" and not args.smoke:
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
                Path(args.out, "step_overhead_rows.json").write_text(json.dumps(rows + derived_rows(rows, silent=True)))
        rows += derived_rows(rows)
    elif args.smoke:  # the GPU suite's plan on the CPU, tiny: checks the script, measures nothing
        graphs_cpu = {"backend": "aot_eager", **GRAPHS}  # CUDA graphs need CUDA; the same code path otherwise
        plan = [("digits", digits_case, None, 1), ("digits", digits_case, graphs_cpu, 1)]
        plan.append(("gpt", lambda: gpt_case(torch.device("cpu"), rows=2, seq=64), None, 1))
        for name, make, compiled, repeats in plan:
            rows.append({**measure(make(), args.steps, args.warmup, compiled, repeats), "pair": name})
        rows += derived_rows(rows)
    else:
        for case in (digits_case(), gpt_case(torch.device("cpu"))):
            rows.append(measure(case, args.steps, args.warmup, None, args.repeats))
    gpu = torch.cuda.is_available() and args.suite == "gpu" and not args.smoke
    device = torch.cuda.get_device_name() if gpu else "cpu"
    print_json({"device": device, "torch": torch.__version__, "rows": rows})


def derived_rows(rows: list[dict], silent: bool = False) -> list[dict]:
    """Speed-ups of compiled modules over the uncompiled hand loop of the same pair."""
    out = []
    for comp in [r for r in rows if r.get("pair") and r["compiled"] != "eager"]:
        pair, mode = comp["pair"], comp["compiled"]
        base = next((r for r in rows if r.get("pair") == pair and r["compiled"] == "eager"), None)
        if base is None:
            continue
        speedup = base["hand_ms"] / comp["module_ms"]
        out.append({"case": f"speed-up: {pair} module ({mode}) vs uncompiled hand loop", "ratio": round(speedup, 4)})
        if not silent:
            print(f"{pair}: module ({mode}) vs uncompiled hand loop: {speedup:.3f}x steps/s")
    return out


if __name__ == "__main__":
    main()
