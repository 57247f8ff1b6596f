"""Inference speed of quantized students against the unquantized one (bf16 on CUDA, fp32 on the CPU): greedy decoding
tokens/s at batch 1 and 32.

The student is a random-init Llama-shaped model (the Llama-3.2-1B shape of pair (b) in benchmarks/_lib/llm.py by
default; weights do not change the speed of a dense model), quantized with lit-distill's schemes (torchao):
``int8_weight_only``, ``int8_dynamic_int8_weight``, ``int4_weight_only`` and ``int8_dynamic_int4_weight``
(the portable int4 layout the exports use: int4 values held in int8, dequantized into the matmul), plus on CUDA
``int4_tinygemm``: torchao's int4 weight-only GPU kernel layout (``Int4WeightOnlyConfig(tile_packed_to_4d)``,
group 128), torchao's fast int4 GPU path (applied to the unquantized weights). The LM head and embedding stay
unquantized, as in every lit-distill export. Each variant decodes ``--new-tokens`` tokens after a ``--prompt``-token
prompt with a static KV cache, eagerly and (``--compile``, CUDA) with the decoding step compiled;
tokens/s = batch x new tokens / median wall time of ``--reps`` runs after a warm-up. A variant that fails (a
kernel missing on this build) is reported with its error, not hidden.

    # on one GPU (needs torchao; the lead's machine has it only when its wheel is carried):
    python -m benchmarks.speed.quantized_speed --device cuda --out results/quantized_speed_gpu   # eager, ~4 min
    python -m benchmarks.speed.quantized_speed --device cuda --compile \
        --variants unquantized,int8_weight_only,int4_tinygemm --out results/quantized_speed_gpu_compiled   # ~8 min
    # int8 on the CPU, a smaller student:
    OMP_NUM_THREADS=1 python -m benchmarks.speed.quantized_speed --device cpu --shape smallcpu --batches 1,8 \\
        --variants unquantized,int8_weight_only,int8_dynamic_int8_weight --out results/quantized_speed_cpu
    python -m benchmarks.speed.quantized_speed --smoke
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks._lib.llm import PAIRS, LlamaShape, llama
from benchmarks._lib.trainers import parse, parser, print_json, quiet

SHAPES = {
    "1b": PAIRS["b"][1],  # Llama-3.2-1B dims, tied head
    "smallcpu": LlamaShape(hidden=512, layers=4, heads=8, kv_heads=2, intermediate=1536, vocab=32000, tied=True),
    "smoke": LlamaShape(hidden=64, layers=1, heads=2, kv_heads=1, intermediate=128, vocab=256, tied=True),
}
VARIANTS = ["unquantized", "int8_weight_only", "int8_dynamic_int8_weight", "int4_weight_only",
            "int8_dynamic_int4_weight", "int4_tinygemm"]  # fmt: skip


def parse_args(argv: Sequence[str] | None):
    p = parser(__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="the student's dtype (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    p.add_argument("--layers", type=int, default=None, help="replace the shape's layer count")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=128, help="decoded tokens per run")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--group-size", type=int, default=128, help="int4 group size")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time each variant with the decoding step compiled "
        "(CUDA graphs; a compilation per variant and batch)",
    )
    p.add_argument("--out", default=None, help="folder for the raw output (result.json)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parse(p, argv, device="cpu", shape="smoke", batches="1,2", prompt=4, new_tokens=2, reps=1,
                 group_size=32)  # fmt: skip


def quantized(model: torch.nn.Module, variant: str, group_size: int) -> torch.nn.Module:
    """A copy of ``model`` with ``variant`` applied to its decoder's linear layers."""
    from lit_distill.quantization import quantize_model
    from lit_distill.quantization.schemes import get_scheme

    model = copy.deepcopy(model)
    if variant == "unquantized":
        return model
    if variant == "int4_tinygemm":
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        head = model.get_output_embeddings()
        config = Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
        quantize_(model, config, filter_fn=lambda m, _: isinstance(m, torch.nn.Linear) and m is not head)
        return model
    quantize_model(model, get_scheme(variant), group_size)
    return model


@torch.no_grad()
def decode_seconds(model, batch: int, args, compiled: bool) -> float:
    """Median seconds of one greedy generation of ``args.new_tokens`` tokens (static cache)."""
    inner = model.model
    ids = torch.randint(0, inner.config.vocab_size, (batch, args.prompt), device=args.device)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                  cache_implementation="static", pad_token_id=0)  # fmt: skip
    if compiled:
        torch._dynamo.reset()  # a fresh cache per model: past the recompile limit dynamo would fall back to eager
        inner.forward = torch.compile(inner.forward, mode="reduce-overhead")
    try:
        inner.generate(ids, **kwargs)  # warm-up (and compilation)
        times = []
        for _ in range(args.reps):
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            inner.generate(ids, **kwargs)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    finally:
        if compiled:
            del inner.forward  # back to the class's forward
    return sorted(times)[len(times) // 2]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet(args.threads)
    shape = SHAPES[args.shape] if args.layers is None else dataclasses.replace(SHAPES[args.shape], layers=args.layers)
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    base = llama(shape, device=args.device, dtype=args.dtype).eval()
    batches = [int(b) for b in args.batches.split(",")]
    modes = [False, True] if args.compile and args.device == "cuda" else [False]
    env = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip
    import torchao

    env["torchao"] = torchao.__version__
    print(f"{env}; shape {shape}; prompt {args.prompt}, {args.new_tokens} new tokens, median of {args.reps}")
    rows = []
    for variant in args.variants.split(","):
        if variant == "int4_tinygemm" and args.device != "cuda":
            print("int4_tinygemm: skipped, its kernel (aten._weight_int4pack_mm) runs on CUDA only", flush=True)
            continue
        try:
            model = quantized(base, variant, args.group_size)
        except Exception as err:  # noqa: BLE001 - reported as a row: a kernel this build lacks is a result too
            rows.append({"variant": variant, "error": f"{type(err).__name__}: {err}"[:300]})
            print(f"{variant}: cannot quantize: {rows[-1]['error']}", flush=True)
            continue
        for compiled in modes:
            for batch in batches:
                row = {"variant": variant, "compiled": compiled, "batch": batch}
                try:
                    seconds = decode_seconds(model, batch, args, compiled)
                    row.update(seconds=seconds, tokens_per_s=batch * args.new_tokens / seconds)
                except Exception as err:  # noqa: BLE001
                    row["error"] = f"{type(err).__name__}: {err}"[:300]
                    traceback.print_exc()
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model
    table(rows)
    result = {"env": env, "shape": dataclasses.asdict(shape), "args": vars(args), "rows": rows}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))
    print_json(result)


def table(rows: list[dict]) -> None:
    """tokens/s and the ratio to the unquantized student of the same batch and mode."""
    done = [r for r in rows if "seconds" in r]
    base = {(r["compiled"], r["batch"]): r["tokens_per_s"] for r in done if r["variant"] == "unquantized"}
    print("\n| variant | compiled | batch | tokens/s | vs unquantized |\n|---|---|---|---|---|")
    for r in rows:
        if "seconds" not in r:
            print(f"| {r['variant']} | {r.get('compiled', '')} | {r.get('batch', '')} | failed: {r['error'][:80]} | |")
            continue
        ref = base.get((r["compiled"], r["batch"]))
        ratio = f"{r['tokens_per_s'] / ref:.2f}x" if ref else ""
        print(f"| {r['variant']} | {r['compiled']} | {r['batch']} | {r['tokens_per_s']:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
