"""Fused LM-head + KD loss: ours vs naive logits vs Liger-Kernel, timed against the matmul floor.

One process, bf16 hidden states and LM-head weights, generalized JSD (beta=0.5, T=1), all tokens counted.
For every shape it measures forward+backward time (median of CUDA-event timings), peak extra memory
(``max_memory_allocated`` during the step minus what was allocated before it, so the gradient buffers
are included) and the relative gradient error ``||g - g_ref|| / ||g_ref||`` against a float64 reference
(the direct formula on the same bf16 inputs, upcast). The floor is the same four matmuls alone
(student and teacher logits, dL/dh_s = G W_s, dL/dW_s = Gᵀ h_s) on the full token range, measured in
the same run; times are also printed as a ratio of it.

GPU:       python -m benchmarks.speed.fused_kd_loss | tee benchmarks/results/fused_kd_loss_h100.txt
CPU smoke: python -m benchmarks.speed.fused_kd_loss --smoke   (no Liger; the Triton checks, launch sweeps and
           bandwidth ceilings need CUDA and are left out)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks._lib import fused
from benchmarks._lib.fused import FM, FT, FU, LF, log, rel
from benchmarks._lib.timing import median_ms, peak_extra_gib
from benchmarks._lib.trainers import parse, parser, print_json

SHAPES = [  # name, tokens N, student hidden, teacher hidden, vocab
    ("llama", 8192, 2048, 4096, 128256),
    ("qwen", 8192, 896, 3584, 151936),
    ("llama", 16384, 2048, 4096, 128256),
    ("llama", 32768, 2048, 4096, 128256),
]
SMOKE_SHAPES = [("smoke", 96, 32, 48, 1000)]


# ---------------------------------------------------------------------------------- the methods
def backward_step(loss_fn):
    """A step that computes ``loss_fn()``, runs its backward and returns the loss."""

    def step():
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    return step


def methods(args, first_shape: bool):
    """name -> factory(hs, ws, ht, wt, labels) -> step() returning the loss."""
    beta = 0.5
    out = {}

    def naive(dtype):
        def loss(hs, ws, ht, wt):
            zs = hs.to(dtype) @ ws.to(dtype).T
            with torch.no_grad():
                zt = ht.to(dtype) @ wt.to(dtype).T
            return LF.jensen_shannon(zs, zt, beta=beta)

        return lambda hs, ws, ht, wt, labels: backward_step(lambda: loss(hs, ws, ht, wt))

    out["naive fp32 logits"] = naive(torch.float32)
    out["naive bf16 logits"] = naive(torch.bfloat16)
    if torch.cuda.is_available() and not args.no_liger:
        try:
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
            from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD
        except ImportError as err:
            log(f"liger-kernel not importable ({err!r}); its rows are skipped")
        else:

            def liger(make_module):
                def make(hs, ws, ht, wt, labels):
                    mod = make_module()
                    # Liger's JSD(beta) is GKD's; ours is divided by beta(1 - beta) (docs/losses.md): same scale here
                    return backward_step(lambda: mod(hs, ws, ht, wt, labels) / (beta * (1 - beta)))

                return make

            def chunked(compiled):
                kw = dict(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=1.0, compiled=compiled)
                return liger(lambda: LigerFusedLinearJSDLoss(**kw))

            out["liger JSDLoss eager"] = chunked(False)
            if not args.no_compile:
                out["liger JSDLoss compiled"] = chunked(True)
            out["liger FusedLinearJSD (triton)"] = liger(lambda: LigerFusedLinearJSD(jsd_beta=beta, temperature=1.0))

    def ours(**kw):
        return lambda hs, ws, ht, wt, labels: backward_step(
            lambda: FU.fused_linear_kd(hs, ws, ht, wt, divergence="jsd", beta=beta, labels=labels, **kw)
        )

    out["ours"] = ours()
    out["ours, fp32 weight-grad acc"] = ours(fp32_accumulation=True)
    out["ours, fp32 logits (+fp32 acc)"] = ours(fp32_logits=True)
    if first_shape:
        out["ours, torch elementwise"] = ours(impl="torch")
    # Ours first, slow compiles last: the time budget cuts from the end.
    order = sorted(out, key=lambda k: (not k.startswith("ours"), "compiled" in k))
    return {k: out[k] for k in order}


def chunked_floor_fn(hs, ws, ht, wt, chunk, fp32_acc):
    """Ours' matmuls alone with ours' chunking (diagnostic: what chunking itself costs)."""
    vocab = ws.shape[0]
    h, w = hs.detach(), ws.detach()
    zs = torch.empty(chunk, vocab, dtype=hs.dtype, device=hs.device)
    zt = torch.empty_like(zs)
    gh = torch.empty_like(h)
    acc = torch.empty(w.shape, dtype=torch.float32 if fp32_acc else w.dtype, device=w.device)

    def step():
        for s in range(0, h.shape[0], chunk):
            e = min(s + chunk, h.shape[0])
            torch.mm(h[s:e], w.T, out=zs[: e - s])
            torch.mm(ht[s:e], wt.T, out=zt[: e - s])
            torch.mm(zs[: e - s], w, out=gh[s:e])
            FM._accumulate_weight_grad(acc, zs[: e - s], h[s:e], first=s == 0)

    return step


# ------------------------------------------------------------------------------ sections of a run
def sweep(n_rows, vocab, dtype=torch.bfloat16, grid=None):
    """Triton launch configurations on one chunk of JSD; returns the fastest and prints all."""
    dev = "cuda"
    zs0 = (torch.randn(n_rows, vocab, device=dev) * 2).to(dtype)
    zt = (torch.randn(n_rows, vocab, device=dev) * 2).to(dtype)
    zs = zs0.clone()
    g = zs if dtype != torch.float32 else zs.view(torch.bfloat16)[:, :vocab]

    spec_j, spec_f = (
        fused.kernel_spec(d, n_rows, fp32_logits=dtype == torch.float32, fp32_accumulation=True)
        for d in ("jsd", "forward_kl")
    )
    gbytes = n_rows * vocab * (2 * zs.element_size() + 2) / 1e9  # read both once, write a bf16 gradient
    grid = grid or [(b, w, p) for b in (2048, 4096, 8192) for w in (4, 8, 16) for p in (1, 2, 4)]
    results = []
    for block, warps, pps in grid:
        conf = {"BLOCK": block, "num_warps": warps, "programs_per_sm": pps}
        try:
            ms = median_ms(
                lambda c=conf: FT._rows_triton(zs, zt, None, spec_j, True, g=g, **c), 5, 1, lambda: zs.copy_(zs0)
            )
        except Exception as err:  # noqa: BLE001
            log(f"  sweep {conf}: failed {err!r:.120}")
            continue
        results.append((ms, conf))
        log(f"  sweep BLOCK={block:5d} warps={warps:2d} programs/SM={pps}: {ms:7.3f} ms {gbytes / ms * 1e3:5.0f} GB/s")
    results.sort(key=lambda r: r[0])
    best_ms, best = results[0]
    ms_fkl = median_ms(lambda: FT._rows_triton(zs, zt, None, spec_f, True, g=g, **best), 5, 1, lambda: zs.copy_(zs0))
    log(f"best {best}: jsd {best_ms:.3f} ms, forward_kl {ms_fkl:.3f} ms for a [{n_rows}, {vocab}] {dtype} chunk")
    return best


def run_shape(args, name, n, hs_dim, ht_dim, vocab, first, deadline, rows):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    flops = 2 * n * vocab * (3 * hs_dim + ht_dim)
    hs, ws, ht, wt, labels = fused.make_inputs(n, hs_dim, ht_dim, vocab, dev)
    label = f"{name} N={n} H_s={hs_dim} H_t={ht_dim} V={vocab}"
    log(f"\n=== {label}")

    def clear():
        hs.grad = ws.grad = None

    fl_step, bufs = fused.floor_fn(hs, ws, ht, wt)
    floor_ms = median_ms(fl_step, args.reps, 2)
    del bufs, fl_step
    log(f"matmul floor {floor_ms:.2f} ms ({flops / floor_ms / 1e9:.0f} TFLOP/s)")
    base = {"shape": label, "N": n, "floor_ms": floor_ms}
    rows.append({**base, "method": "matmul floor", "ms": floor_ms, "x_floor": 1.0})

    chunk = FU.auto_chunk_size(n, vocab, vocab * 2 * hs.element_size(), hs.device)
    for acc in (True, False):
        step = chunked_floor_fn(hs, ws, ht, wt, chunk, acc)
        ms = median_ms(step, args.reps, 1)
        log(f"ours' matmuls alone (chunk {chunk}, {'fp32' if acc else 'bf16'} acc): {ms:.2f} ms = {ms / floor_ms:.3f}x")
        rows.append({**base, "method": f"ours' matmuls alone ({'fp32' if acc else 'bf16'} acc)", "ms": ms,
                     "x_floor": ms / floor_ms, "chunk": chunk})  # fmt: skip
        del step
    torch.cuda.empty_cache() if dev == "cuda" else None

    ref = None
    if n <= args.ref_max_n:
        t0 = time.time()
        ref = fused.reference(hs, ws, ht, wt, "jsd")
        floors = (rel(ref[1].to(torch.bfloat16), ref[1]), rel(ref[2].to(torch.bfloat16), ref[2]))
        log(f"float64 reference {time.time() - t0:.1f}s, loss {ref[0]:.6f}; bf16 storage floor of the grads: "
            f"h {floors[0]:.1e}, W {floors[1]:.1e}")  # fmt: skip
        rows.append({**base, "method": "bf16 rounding of the exact grads", "err_h": floors[0], "err_w": floors[1]})

    for mname, make in methods(args, first).items():
        if time.time() > deadline:
            log(f"{mname}: skipped (time budget)")
            rows.append({**base, "method": mname, "error": "skipped (time budget)"})
            continue
        row = {**base, "method": mname}
        t0 = time.time()
        try:
            step = make(hs, ws, ht, wt, labels)
            clear()
            step()  # warm-up (compiles, autotunes)
            row["first_call_s"] = time.time() - t0
            slow = mname.startswith("naive fp32")
            ms = median_ms(step, 2 if slow else args.reps, 0 if slow else 1, before=clear)
            clear()
            mem = peak_extra_gib(step)
            loss = None
            clear()
            loss = float(step())
            row.update(ms=ms, x_floor=ms / floor_ms, peak_gib=mem, loss=loss)
            if ref is not None:
                row.update(err_h=rel(hs.grad, ref[1]), err_w=rel(ws.grad, ref[2]), err_loss=abs(loss - ref[0]) / ref[0])
            msg = f"{mname}: {ms:.2f} ms = {ms / floor_ms:.3f}x floor, peak extra {mem:.2f} GiB, loss {loss:.6f}"
            if ref is not None:
                msg += f", grad err h {row['err_h']:.1e} W {row['err_w']:.1e}"
            log(msg + f" (first call {row['first_call_s']:.1f}s)")
        except Exception as err:  # noqa: BLE001 - OOM and compiler failures are results too
            kind = "OOM" if isinstance(err, torch.OutOfMemoryError) else type(err).__name__
            row["error"] = f"{kind}: {str(err).splitlines()[0][:150] if str(err) else ''}"
            log(f"{mname}: {row['error']}")
        finally:
            clear()
            step = None
            if dev == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        if args.out:  # a run cut short still leaves what it measured
            Path(args.out, "rows.json").write_text(json.dumps(rows))
    if first and dev == "cuda" and args.profile:
        fused.profile_ours(hs, ws, ht, wt, labels)
    del ref


def main(argv: Sequence[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip remaining methods after this many seconds")
    ap.add_argument("--ref-max-n", type=int, default=8192, help="float64 reference only up to this many tokens")
    ap.add_argument("--shapes", type=str, default="", help="comma-separated indices into the shape list")
    ap.add_argument("--no-liger", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for rows.json (default: $OUT, if set)")
    args = parse(ap, argv, no_liger=True)
    start = time.time()
    deadline = start + args.budget_s
    cuda = torch.cuda.is_available()
    dev_name = torch.cuda.get_device_name() if cuda else "cpu"
    log(f"device {dev_name}; torch {torch.__version__}")
    try:
        import triton

        log(f"triton {triton.__version__}")
    except ImportError:
        log("triton not installed")
    try:
        from importlib.metadata import version

        log(f"liger-kernel {version('liger-kernel')}")
    except Exception:  # noqa: BLE001
        log("liger-kernel not installed")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    if args.shapes:
        shapes = [shapes[int(i)] for i in args.shapes.split(",")]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        fused.measure_ceilings()
        fused.gpu_checks()
        if not args.no_sweep and not args.smoke:
            _, n, hs_dim, _, vocab = shapes[0]
            FU.TRITON_CONFIG[2] = sweep(FU.auto_chunk_size(n, vocab, vocab * 4, torch.device("cuda")), vocab)
            grid = [(b, w, p) for b in (2048, 4096) for w in (8, 16) for p in (1, 2)]
            rows_fp32 = FU.auto_chunk_size(n, vocab, vocab * 8, torch.device("cuda"))
            FU.TRITON_CONFIG[4] = sweep(rows_fp32, vocab, torch.float32, grid)
        log(f"Triton config in use: {FU.TRITON_CONFIG}")
    rows = []
    for i, (name, n, hs_dim, ht_dim, vocab) in enumerate(shapes):
        run_shape(args, name, n, hs_dim, ht_dim, vocab, i == 0, deadline, rows)
    log(f"\nfp32 weight-grad accumulation through cuBLAS out_dtype: {FM._FP32_OUT_MM or 'not used'}")
    log(f"\n{dev_name}, torch {torch.__version__}, total {time.time() - start:.0f}s\n")
    log(fused.table(rows, ("shape", "method")))
    print_json({"device": dev_name, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
