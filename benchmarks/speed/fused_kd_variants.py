"""Fused LM-head KD: every divergence and the speed variants side by side, in one run, against the matmul floor.

For each shape (Llama-like N=8192, H 2048/4096, V 128256; Qwen-like H 896/3584, V 151936; bf16, all tokens
counted, forward+backward) it measures the four matmuls alone (the floor), then ``fused_linear_kd`` in two
precisions for forward KL, reverse KL, JSD(0.5) and TVD:

* ``default``: bf16 logits (what ``h @ W.T`` in bf16 gives), bf16 weight-gradient accumulation;
* ``fp32 logits``: ``fp32_logits=True`` (fp32 accumulation follows), the mode that meets the accuracy target;

and, for forward KL and JSD, variants: the next chunk's logits on a second CUDA stream (``overlap``), logits
chunk sizes (multiples of the tensor-core tile), backward blocks of several chunks (``grad_chunk_size``), fp32
accumulation with bf16 logits, and the fastest Triton launch configuration of the probes. Columns: median ms,
x floor, peak extra GiB (gradients included), relative gradient error of h and W against a float64 direct
formula on the same bf16 inputs. The probes run first, on one chunk of the first shape: Triton launch
configurations that keep fewer rows in flight (so a row stays in L2 between the kernel's passes), and whether
the elementwise kernel overlaps a logits GEMM on a second CUDA stream (optionally with cuBLAS SMs carved out).
A summary table and a JSON line come last.

GPU:       python -m benchmarks.speed.fused_kd_variants --out DIR
CPU smoke: python -m benchmarks.speed.fused_kd_variants --smoke   (the kernel probes need CUDA or TRITON_INTERPRET=1)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks._lib.fused import FT, FU, floor_fn, kernel_spec, log, make_inputs, profile_ours, reference, rel, table
from benchmarks._lib.timing import median_ms, peak_extra_gib, sync
from benchmarks._lib.trainers import parse, parser, print_json

SHAPES = [("llama", 8192, 2048, 4096, 128256), ("qwen", 8192, 896, 3584, 151936)]  # the first one is probed
SMOKE_SHAPES = [("smoke", 96, 32, 48, 1000)]
DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tvd"]


def variants(first_shape: bool, divergence: str, smoke: bool, tuned: dict | None) -> dict[str, dict]:
    """name -> fused_linear_kd keyword arguments (``_launch``: a Triton launch configuration for the bf16 kernel,
    from the probes). The first two run for every divergence and shape."""
    out = {"default": {}, "fp32 logits": {"fp32_logits": True}}
    if divergence not in ("forward_kl", "jsd") or not (first_shape or divergence == "jsd"):
        return out
    small = 8 if smoke else 1
    out["overlap (two streams)"] = {"overlap": True}
    out["fp32 logits, overlap"] = {"fp32_logits": True, "overlap": True}
    if tuned and divergence in tuned:
        out["fastest kernel launch"] = {"_launch": tuned[divergence]}
        out["fastest kernel launch, overlap"] = {"_launch": tuned[divergence], "overlap": True}
    for rows in (512, 768, 1024):
        out[f"chunk {rows // small}"] = {"chunk_size": rows // small}
    out["fp32 acc (bf16 logits)"] = {"fp32_accumulation": True}
    out["chunk 512, grad blocks 1024"] = {"chunk_size": 512 // small, "grad_chunk_size": 1024 // small}
    out["fp32 logits, chunk 256, grad blocks 1024"] = {"fp32_logits": True, "chunk_size": 256 // small,
                                                        "grad_chunk_size": 1024 // small}  # fmt: skip
    out["fp32 logits, chunk 384, grad blocks 1536"] = {"fp32_logits": True, "chunk_size": 384 // small,
                                                        "grad_chunk_size": 1536 // small}  # fmt: skip
    out["fp32 logits, grad blocks 4x chunk"] = {"fp32_logits": True, "grad_chunk_size": -4}  # resolved per shape
    return out


def measure(hs, ws, ht, wt, divergence, kw, reps, floor_ms, ref) -> dict:
    launch = kw.pop("_launch", None)
    default_launch = dict(FU.TRITON_CONFIG[2])
    if launch:
        FU.TRITON_CONFIG[2].update(launch)
    try:
        return _measure(hs, ws, ht, wt, divergence, kw, reps, floor_ms, ref)
    finally:
        FU.TRITON_CONFIG[2].clear()
        FU.TRITON_CONFIG[2].update(default_launch)


def _measure(hs, ws, ht, wt, divergence, kw, reps, floor_ms, ref) -> dict:
    def step():
        FU.fused_linear_kd(hs, ws, ht, wt, divergence=divergence, beta=0.5, **kw).backward()

    def clear():
        hs.grad = ws.grad = None

    step()  # warm-up: Triton compiles, cuBLAS picks its kernels
    clear()
    ms = median_ms(step, reps, 1, before=clear)
    clear()
    mem = peak_extra_gib(step)
    row = {"ms": ms, "x_floor": ms / floor_ms, "peak_gib": mem}
    if ref is not None:
        row.update(err_h=rel(hs.grad, ref[1]), err_w=rel(ws.grad, ref[2]))
    clear()
    return row


def run_shape(args, name, n, hs_dim, ht_dim, vocab, first, rows):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hs, ws, ht, wt, _ = make_inputs(n, hs_dim, ht_dim, vocab, dev)
    shape = f"{name} N={n} H={hs_dim}/{ht_dim} V={vocab}"
    fl_step, bufs = floor_fn(hs, ws, ht, wt)
    floor_ms = median_ms(fl_step, args.reps, 2)
    del bufs, fl_step
    log(f"\n=== {shape}: matmul floor {floor_ms:.2f} ms")
    rows.append({"shape": shape, "divergence": "-", "variant": "matmul floor", "ms": floor_ms, "x_floor": 1.0})
    auto = FU.auto_chunk_size(n, vocab, vocab * 8, torch.device(dev))  # the fp32-logits chunk
    tuned = None
    if first and (dev == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        try:  # probes only: a failure here must not cost the rows below
            tuned = kernel_probes(hs, ws, ht, wt, vocab, rows, shape, args.smoke)
        except Exception as err:  # noqa: BLE001
            log(f"kernel probes failed: {err!r:.300}")
    for divergence in DIVERGENCES:
        t0 = time.time()
        ref = reference(hs, ws, ht, wt, divergence)
        floors = (rel(ref[1].to(torch.bfloat16), ref[1]), rel(ref[2].to(torch.bfloat16), ref[2]))
        log(f"{divergence}: float64 reference {time.time() - t0:.1f}s; bf16 rounding floor h {floors[0]:.1e} "
            f"W {floors[1]:.1e}")  # fmt: skip
        for vname, kw in variants(first, divergence, args.smoke, tuned).items():
            kw = dict(kw)
            if kw.get("grad_chunk_size", 0) < 0:
                kw["grad_chunk_size"] = -kw["grad_chunk_size"] * auto
            row = {"shape": shape, "divergence": divergence, "variant": vname, "kwargs": dict(kw)}
            try:
                row.update(measure(hs, ws, ht, wt, divergence, kw, args.reps, floor_ms, ref))
                log(f"  {vname:<42} {row['ms']:8.2f} ms {row['x_floor']:6.3f}x  peak {row['peak_gib']:5.2f} GiB  "
                    f"err h {row['err_h']:.1e} W {row['err_w']:.1e}")  # fmt: skip
            except Exception as err:  # noqa: BLE001 - an OOM is a result too
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
                log(f"  {vname:<42} {row['error']}")
            finally:
                hs.grad = ws.grad = None
                if dev == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
        if first and divergence == "jsd" and dev == "cuda":
            for vname in ("default", "fp32 logits"):
                try:  # diagnostics only
                    kw = variants(first, divergence, args.smoke, tuned)[vname]
                    profile_kernels(hs, ws, ht, wt, divergence, kw, vname)
                except Exception as err:  # noqa: BLE001
                    log(f"profile of {vname} failed: {err!r:.200}")
        del ref
        if args.out:  # a run cut short still leaves what it measured
            Path(args.out, "fused_kd_variants_rows.json").write_text(json.dumps(rows))


def profile_kernels(hs, ws, ht, wt, divergence, kw, name):
    """GPU time per kernel of one forward+backward (where the time goes beyond the floor's four matmuls)."""
    log(f"\nprofile of {divergence}, {name}:")
    profile_ours(hs, ws, ht, wt, None, divergence, **kw)


# ------------------------------------------------------------------------------------ kernel probes
LAUNCHES = [  # (BLOCK, num_warps, programs_per_sm): the default first; then fewer rows in flight
    (8192, 16, 4), (8192, 16, 2), (8192, 16, 1), (8192, 32, 1), (8192, 32, 0.75), (8192, 32, 0.5),
    (16384, 32, 1), (16384, 32, 0.5), (4096, 16, 1), (4096, 32, 0.5),
]  # fmt: skip


def kernel_probes(hs, ws, ht, wt, vocab, rows_out, shape, smoke=False):
    """One bf16 chunk: the kernel under several launch configurations, then kernel + GEMM on two streams. Returns the
    fastest configuration per divergence (the variants then run the whole loss with it)."""
    n = FU.auto_chunk_size(hs.shape[0], vocab, vocab * 4, hs.device)
    zs0 = (hs[:n] @ ws.T).detach()
    zt = ht[:n] @ wt.T
    zs = zs0.clone()
    log(f"\nkernel on one [{n}, {vocab}] bf16 chunk (default config first):")
    best = {}
    for divergence in ("forward_kl", "jsd"):
        spec = kernel_spec(divergence, n)
        for block, warps, pps in LAUNCHES[:2] if smoke else LAUNCHES:
            conf = {"BLOCK": block, "num_warps": warps, "programs_per_sm": pps}
            try:
                ms = median_ms(
                    lambda c=conf, p=spec: FT._rows_triton(zs, zt, None, p, True, **c), 5, 1, lambda: zs.copy_(zs0)
                )
            except Exception as err:  # noqa: BLE001
                log(f"  {divergence} {conf}: failed {err!r:.100}")
                continue
            log(f"  {divergence:<10} BLOCK={block:5d} warps={warps:2d} programs/SM={pps:<4}: {ms:6.3f} ms")
            rows_out.append({"shape": shape, "divergence": divergence, "variant": f"kernel {conf}", "ms": ms})
            if ms < best.get(divergence, (math.inf, None))[0]:
                best[divergence] = (ms, conf)
    log(f"fastest launch configs: {best}")
    if torch.cuda.is_available():
        try:
            overlap_probe(hs, ws, ht, wt, zs, zs0, zt, n, best, rows_out, shape)
        except Exception as err:  # noqa: BLE001 - the launch configurations above still count
            log(f"overlap probe failed: {err!r:.300}")
    return {divergence: conf for divergence, (_, conf) in best.items()}


def overlap_probe(hs, ws, ht, wt, zs, zs0, zt, n, best, rows_out, shape):
    """Does the elementwise kernel overlap a teacher-logits GEMM on another stream? Times: each alone, both on one
    stream, both on two streams (with cuBLAS SMs carved out for the kernel where torch offers it)."""
    out = torch.empty_like(zt)
    spec = kernel_spec("jsd", n)
    side = torch.cuda.Stream()
    h_t = ht[:n]

    def gemm():
        torch.mm(h_t, wt.T, out=out)

    def both_one_stream(conf):
        gemm()
        FT._rows_triton(zs, zt, None, spec, True, **conf)

    def both_two_streams(conf):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            gemm()
        FT._rows_triton(zs, zt, None, spec, True, **conf)
        torch.cuda.current_stream().wait_stream(side)

    carveouts = [None]
    if hasattr(torch._C, "_set_sm_carveout_experimental"):
        carveouts += [16, 32]
    log("\noverlap of the JSD kernel with a teacher-logits GEMM (same chunk):")
    configs = {"default": {}, "fastest jsd": best.get("jsd", (0, {}))[1]}
    t_gemm = median_ms(gemm, 5, 1)
    for cname, conf in configs.items():
        t_kern = median_ms(lambda c=conf: FT._rows_triton(zs, zt, None, spec, True, **c), 5, 1, lambda: zs.copy_(zs0))
        seq = median_ms(lambda c=conf: both_one_stream(c), 5, 1, lambda: zs.copy_(zs0))
        for carve in carveouts:
            if carve is not None:
                torch._C._set_sm_carveout_experimental(carve)
            try:
                conc = median_ms(lambda c=conf: both_two_streams(c), 5, 1, lambda: zs.copy_(zs0))
            finally:
                if carve is not None:
                    torch._C._set_sm_carveout_experimental(None)
            hidden = (seq - conc) / min(t_gemm, t_kern)
            log(f"  kernel {cname} {conf}, cuBLAS carveout {carve}: GEMM {t_gemm:.3f} ms, kernel {t_kern:.3f} "
                f"ms, one stream {seq:.3f}, two streams {conc:.3f}: {hidden:.0%} of the shorter hidden")  # fmt: skip
            rows_out.append({"shape": shape, "divergence": "jsd", "variant": f"overlap {cname}, carveout {carve}",
                             "ms": conc, "one_stream_ms": seq, "gemm_ms": t_gemm, "kernel_ms": t_kern,
                             "hidden": hidden})  # fmt: skip
    sync()


# ------------------------------------------------------------------------------------------ report
def main(argv: Sequence[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shapes", default="", help="comma-separated indices into the shape list")
    ap.add_argument("--out", default=None, help="folder for fused_kd_variants_rows.json")
    args = parse(ap, argv)
    start = time.time()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    dev_name = torch.cuda.get_device_name() if cuda else "cpu"
    log(f"device {dev_name}; torch {torch.__version__}; Triton config {FU.TRITON_CONFIG}")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    if args.shapes:
        shapes = [shapes[int(i)] for i in args.shapes.split(",")]
    rows: list[dict] = []
    for i, (name, n, hs_dim, ht_dim, vocab) in enumerate(shapes):
        run_shape(args, name, n, hs_dim, ht_dim, vocab, i == 0, rows)
    best = {}
    for r in rows:
        if "x_floor" in r and r["variant"] != "matmul floor" and "error" not in r and "err_w" in r:
            key = (r["shape"], r["divergence"])
            if r["x_floor"] < best.get(key, {"x_floor": math.inf})["x_floor"]:
                best[key] = r
    log(f"\n{dev_name}, torch {torch.__version__}, total {time.time() - start:.0f}s\n")
    whole_loss = [r for r in rows if not r["variant"].startswith(("kernel", "overlap"))]
    log(table(whole_loss, ("shape", "divergence", "variant")))
    log("\nfastest variant per shape and divergence: " + "; ".join(
        f"{k[0].split()[0]} {k[1]}: {v['variant']} {v['x_floor']:.3f}x" for k, v in best.items()))  # fmt: skip
    print_json({"device": dev_name, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
