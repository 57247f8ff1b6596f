"""Fused LM-head + KD loss: ours vs naive logits vs Liger-Kernel, timed against the matmul floor.

One process, bf16 hidden states and LM-head weights, generalized JSD (beta=0.5, T=1), all tokens counted.
For every shape it measures forward+backward time (median of CUDA-event timings), peak extra memory
(``max_memory_allocated`` during the step minus what was allocated before it, so the gradient buffers
are included) and the relative gradient error ``||g - g_ref|| / ||g_ref||`` against a float64 reference
(the direct formula on the same bf16 inputs, upcast). The floor is the same four matmuls alone
(student and teacher logits, dL/dh_s = G W_s, dL/dW_s = Gᵀ h_s) on the full token range, measured in
the same run; times are also printed as a ratio of it.

GPU:       python benchmarks/fused_kd_loss.py | tee benchmarks/results/fused_kd_loss_h100.txt
CPU smoke: python benchmarks/fused_kd_loss.py --smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [  # name, tokens N, student hidden, teacher hidden, vocab
    ("llama", 8192, 2048, 4096, 128256),
    ("qwen", 8192, 896, 3584, 151936),
    ("llama", 16384, 2048, 4096, 128256),
    ("llama", 32768, 2048, 4096, 128256),
]
SMOKE_SHAPES = [("smoke", 96, 32, 48, 1000)]
GiB = float(1 << 30)


def load_lib():
    """Import lit_distill's functional and fused packages, and the fused modules whose internals the sweeps call;
    if a dependency of another lit_distill module is missing, without running the packages above them."""
    fused = "lit_distill.losses.fused"
    names = ("lit_distill.losses.functional", fused, f"{fused}.spec", f"{fused}.matmul", f"{fused}.triton_kernel")
    try:
        return (*(importlib.import_module(name) for name in names), "package")
    except Exception as err:  # noqa: BLE001 - e.g. a dependency of another lit_distill module is missing
        reason = repr(err)
    for name in ("lit_distill", "lit_distill.losses"):
        mod = types.ModuleType(name)
        mod.__path__ = [str(ROOT / name.replace(".", "/"))]  # submodules import, this package's __init__ does not
        sys.modules[name] = mod
    return (*(importlib.import_module(name) for name in names), f"by path ({reason:.80})")


LF, FU, FS, FM, FT, HOW = load_lib()


def log(*args, end="\n"):
    print(*args, end=end, flush=True)


# ------------------------------------------------------------------------------------ measuring
def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int, warmup: int, before=None) -> float:
    """Median milliseconds of ``fn`` (CUDA events on GPU, perf_counter on CPU); ``before`` runs untimed."""
    for _ in range(warmup):
        if before:
            before()
        fn()
    out = []
    for _ in range(reps):
        if before:
            before()
        sync()
        if torch.cuda.is_available():
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            out.append(e0.elapsed_time(e1))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def peak_extra(fn) -> float:
    """GiB allocated at the peak of ``fn`` beyond what was allocated before it (its outputs included)."""
    if not torch.cuda.is_available():
        fn()
        return float("nan")
    sync()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / GiB


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm())


# ---------------------------------------------------------------------------------- the methods
def make_inputs(n, hs_dim, ht_dim, vocab, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=torch.bfloat16)

    # Logit standard deviation about 2, as for a trained LM head.
    hs = rnd(n, hs_dim).requires_grad_()
    ws = rnd(vocab, hs_dim, scale=2 / math.sqrt(hs_dim)).requires_grad_()
    ht = rnd(n, ht_dim)
    wt = rnd(vocab, ht_dim, scale=2 / math.sqrt(ht_dim))
    labels = torch.arange(n, device=device) % vocab
    return hs, ws, ht, wt, labels


def methods(args, first_shape: bool):
    """name -> factory(hs, ws, ht, wt, labels) -> step() returning the loss."""
    beta = 0.5
    out = {}

    def naive(dtype):
        def make(hs, ws, ht, wt, labels):
            def step():
                zs = hs.to(dtype) @ ws.to(dtype).T
                with torch.no_grad():
                    zt = ht.to(dtype) @ wt.to(dtype).T
                loss = LF.jensen_shannon(zs, zt, beta=beta)
                loss.backward()
                return loss.detach()

            return step

        return make

    out["naive fp32 logits"] = naive(torch.float32)
    out["naive bf16 logits"] = naive(torch.bfloat16)
    if torch.cuda.is_available() and not args.no_liger:
        try:
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
            from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD
        except ImportError as err:
            log(f"liger-kernel not importable ({err!r}); its rows are skipped")
        else:

            def liger(compiled):
                def make(hs, ws, ht, wt, labels):
                    mod = LigerFusedLinearJSDLoss(
                        weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=1.0, compiled=compiled
                    )

                    def step():
                        loss = mod(hs, ws, ht, wt, labels)
                        loss.backward()
                        return loss.detach()

                    return step

                return make

            def liger_triton(hs, ws, ht, wt, labels):
                mod = LigerFusedLinearJSD(jsd_beta=beta, temperature=1.0)

                def step():
                    loss = mod(hs, ws, ht, wt, labels)
                    loss.backward()
                    return loss.detach()

                return step

            out["liger JSDLoss eager"] = liger(False)
            if not args.no_compile:
                out["liger JSDLoss compiled"] = liger(True)
            out["liger FusedLinearJSD (triton)"] = liger_triton

    def ours(**kw):
        def make(hs, ws, ht, wt, labels):
            def step():
                loss = FU.fused_linear_kd(hs, ws, ht, wt, divergence="jsd", beta=beta, labels=labels, **kw)
                loss.backward()
                return loss.detach()

            return step

        return make

    out["ours"] = ours()
    out["ours, fp32 weight-grad acc"] = ours(fp32_accumulation=True)
    out["ours, fp32 logits (+fp32 acc)"] = ours(fp32_logits=True)
    if first_shape:
        out["ours, torch elementwise"] = ours(impl="torch")
    # Ours first, slow compiles last: the time budget cuts from the end.
    order = sorted(out, key=lambda k: (not k.startswith("ours"), "compiled" in k))
    return {k: out[k] for k in order}


def reference(hs, ws, ht, wt, chunk=512):
    """float64 direct formula on the same (bf16) inputs; chunked only to bound memory."""
    h64 = hs.detach().double().requires_grad_()
    w64 = ws.detach().double().requires_grad_()
    ht64, wt64 = ht.double(), wt.double()
    n, total = hs.shape[0], 0.0
    for s in range(0, n, chunk):
        zs = h64[s : s + chunk] @ w64.T
        with torch.no_grad():
            zt = ht64[s : s + chunk] @ wt64.T
        loss = LF.jensen_shannon(zs, zt, beta=0.5) * (zs.shape[0] / n)
        loss.backward()
        total += float(loss)
        del zs, zt, loss
    return total, h64.grad, w64.grad


def floor_fn(hs, ws, ht, wt):
    """The same four matmuls alone, full token range, bf16 (what any method must at least do)."""
    n, vocab = hs.shape[0], ws.shape[0]
    dev = hs.device
    zs = torch.empty(n, vocab, dtype=hs.dtype, device=dev)
    zt = torch.empty(n, vocab, dtype=hs.dtype, device=dev)
    g = (torch.randn(n, vocab, device=dev) * 1e-4).to(hs.dtype)
    gh = torch.empty_like(hs)
    gw = torch.empty_like(ws)
    h, w = hs.detach(), ws.detach()

    def step():
        torch.mm(h, w.T, out=zs)
        torch.mm(ht, wt.T, out=zt)
        torch.mm(g, w, out=gh)
        torch.mm(g.T, h, out=gw)

    return step, (zs, zt, g, gh, gw)


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
def gpu_checks():
    """Compiled Triton kernel vs the PyTorch path vs the direct formula, small shapes, every divergence."""
    dev = "cuda"
    torch.manual_seed(1)
    worst = {}
    n, hs_dim, ht_dim, vocab = 100, 64, 96, 5003
    all_divs = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("jsd", 1.0), ("tvd", 0.5)]
    plan = [(torch.float32, 2e-5, d, b, 2.0, 0.5, False) for d, b in all_divs]
    plan += [(torch.bfloat16, 2e-2, "jsd", 0.5, 1.0, 0.0, fl) for fl in (False, True)]
    for dtype, tol, div, beta, temp, ce, fp32_logits in plan:
        hs = torch.randn(n, hs_dim, device=dev).to(dtype)
        ws = (torch.randn(vocab, hs_dim, device=dev) * 0.3).to(dtype)
        ht = torch.randn(n, ht_dim, device=dev).to(dtype)
        wt = (torch.randn(vocab, ht_dim, device=dev) * 0.3).to(dtype)
        labels = torch.randint(0, vocab, (n,), device=dev)
        labels[::7] = -100
        res = {}
        for impl in ("triton", "torch"):
            a = [hs.clone().requires_grad_(), ws.clone().requires_grad_()]
            loss = FU.fused_linear_kd(
                a[0], a[1], ht, wt, divergence=div, beta=beta, temperature=temp, labels=labels,
                ce_weight=ce, chunk_size=37, impl=impl, fp32_logits=fp32_logits,
            )  # fmt: skip
            loss.backward()
            res[impl] = (loss.detach(), a[0].grad, a[1].grad)
        r = [hs.clone().requires_grad_(), ws.clone().requires_grad_()]
        zs = r[0] @ r[1].T
        zt = ht @ wt.T
        m = labels != -100
        ref = LF.divergence(div, zs, zt, temperature=temp, beta=beta, mask=m)
        if ce:
            ref = ref + ce * torch.nn.functional.cross_entropy(zs.float(), labels, ignore_index=-100)
        ref.backward()
        errs = [abs(float(res["triton"][0] - ref)) / abs(float(ref))]
        errs += [rel(x, y.double()) for x, y in zip(res["triton"][1:], (r[0].grad, r[1].grad))]
        errs += [rel(x, y.double()) for x, y in zip(res["triton"][1:], res["torch"][1:])]
        key = f"{str(dtype)[6:]} {div}(b={beta}) T={temp} ce={ce} fp32_logits={fp32_logits}"
        worst[key] = max(errs)
        log(f"  check {key}: loss {errs[0]:.1e}, grads vs direct {errs[1]:.1e} {errs[2]:.1e}, vs torch path "
            f"{errs[3]:.1e} {errs[4]:.1e}")  # fmt: skip
        if max(errs) > tol:
            raise AssertionError(f"GPU check failed: {key}: errors {errs}")
    log(f"GPU correctness checks passed ({len(worst)} cases)")


def sweep(n_rows, vocab, dtype=torch.bfloat16, grid=None):
    """Triton launch configurations on one chunk of JSD; returns the fastest and prints all."""
    dev = "cuda"
    zs0 = (torch.randn(n_rows, vocab, device=dev) * 2).to(dtype)
    zt = (torch.randn(n_rows, vocab, device=dev) * 2).to(dtype)
    zs = zs0.clone()
    g = zs if dtype != torch.float32 else zs.view(torch.bfloat16)[:, :vocab]

    def spec(div):
        cfg = FS._Config(
            divergence=div, beta=0.5, temperature=1.0, ce_weight=0.0, chunk_size=None, grad_chunk_size=None,
            fp32_accumulation=True,
            fp32_logits=dtype == torch.float32, overlap=False, impl="triton", need=(True, True, False),
        )  # fmt: skip
        return FS._Spec.of(cfg, 1.0 / n_rows)

    spec_j, spec_f = spec("jsd"), spec("forward_kl")
    gbytes = n_rows * vocab * (2 * zs.element_size() + 2) / 1e9  # read both once, write a bf16 gradient
    grid = grid or [(b, w, p) for b in (2048, 4096, 8192) for w in (4, 8, 16) for p in (1, 2, 4)]
    results = []
    for block, warps, pps in grid:
        conf = {"BLOCK": block, "num_warps": warps, "programs_per_sm": pps}
        try:
            ms = timed(
                lambda c=conf: FT._rows_triton(zs, zt, None, spec_j, True, g=g, **c), 5, 1, lambda: zs.copy_(zs0)
            )
        except Exception as err:  # noqa: BLE001
            log(f"  sweep {conf}: failed {err!r:.120}")
            continue
        results.append((ms, conf))
        log(f"  sweep BLOCK={block:5d} warps={warps:2d} programs/SM={pps}: {ms:7.3f} ms {gbytes / ms * 1e3:5.0f} GB/s")
    results.sort(key=lambda r: r[0])
    best_ms, best = results[0]
    ms_fkl = timed(lambda: FT._rows_triton(zs, zt, None, spec_f, True, g=g, **best), 5, 1, lambda: zs.copy_(zs0))
    log(f"best {best}: jsd {best_ms:.3f} ms, forward_kl {ms_fkl:.3f} ms for a [{n_rows}, {vocab}] {dtype} chunk")
    return best


def measure_ceilings():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x), 10, 2)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms_mm = timed(lambda: a @ a, 10, 3)
    log(f"ceilings: device copy {2 * x.numel() / ms / 1e6:.0f} GB/s (read+write), ", end="")
    log(f"bf16 8192^3 matmul {2 * 8192**3 / ms_mm / 1e9:.0f} TFLOP/s")


def profile_ours(hs, ws, ht, wt, labels=None, divergence="jsd", **kw):
    """GPU time per kernel of one forward+backward of ``fused_linear_kd`` (after one untimed call)."""
    from torch.profiler import ProfilerActivity, profile

    def step():
        FU.fused_linear_kd(hs, ws, ht, wt, divergence=divergence, beta=0.5, labels=labels, **kw).backward()

    step()
    hs.grad = ws.grad = None
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        sync()
    hs.grad = ws.grad = None
    log(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))


def run_shape(args, name, n, hs_dim, ht_dim, vocab, first, deadline, rows):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    flops = 2 * n * vocab * (3 * hs_dim + ht_dim)
    hs, ws, ht, wt, labels = make_inputs(n, hs_dim, ht_dim, vocab, dev)
    label = f"{name} N={n} H_s={hs_dim} H_t={ht_dim} V={vocab}"
    log(f"\n=== {label}")

    def clear():
        hs.grad = ws.grad = None

    fl_step, bufs = floor_fn(hs, ws, ht, wt)
    floor_ms = timed(fl_step, args.reps, 2)
    del bufs, fl_step
    log(f"matmul floor {floor_ms:.2f} ms ({flops / floor_ms / 1e9:.0f} TFLOP/s)")
    base = {"shape": label, "N": n, "floor_ms": floor_ms}
    rows.append({**base, "method": "matmul floor", "ms": floor_ms, "x_floor": 1.0})

    chunk = FU.auto_chunk_size(n, vocab, vocab * 2 * hs.element_size(), hs.device)
    for acc in (True, False):
        step = chunked_floor_fn(hs, ws, ht, wt, chunk, acc)
        ms = timed(step, args.reps, 1)
        log(f"ours' matmuls alone (chunk {chunk}, {'fp32' if acc else 'bf16'} acc): {ms:.2f} ms = {ms / floor_ms:.3f}x")
        rows.append({**base, "method": f"ours' matmuls alone ({'fp32' if acc else 'bf16'} acc)", "ms": ms,
                     "x_floor": ms / floor_ms, "chunk": chunk})  # fmt: skip
        del step
    torch.cuda.empty_cache() if dev == "cuda" else None

    ref = None
    if n <= args.ref_max_n:
        t0 = time.time()
        ref = reference(hs, ws, ht, wt)
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
            ms = timed(step, 2 if slow else args.reps, 0 if slow else 1, before=clear)
            clear()
            mem = peak_extra(step)
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
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "rows.json").write_text(json.dumps(rows))
    if first and dev == "cuda" and args.profile:
        profile_ours(hs, ws, ht, wt, labels)
    del ref


def cell(r: dict, key: str, fmt: str) -> str:
    """``r[key]`` formatted for a Markdown table; a missing or NaN value is a dash."""
    v = r.get(key)
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def table(rows):
    f = cell
    lines = [
        "| shape | method | fwd+bwd ms | × floor | peak extra GiB | grad err h | grad err W |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['method']} | {r['error']} | | | | |")
        else:
            lines.append(
                f"| {r['shape']} | {r['method']} | {f(r, 'ms', '.2f')} | {f(r, 'x_floor', '.3f')} "
                f"| {f(r, 'peak_gib', '.2f')} | {f(r, 'err_h', '.1e')} | {f(r, 'err_w', '.1e')} |"
            )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, CPU allowed, no Liger")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip remaining methods after this many seconds")
    ap.add_argument("--ref-max-n", type=int, default=8192, help="float64 reference only up to this many tokens")
    ap.add_argument("--shapes", type=str, default="", help="comma-separated indices into the shape list")
    ap.add_argument("--no-liger", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.budget_s
    cuda = torch.cuda.is_available()
    dev_name = torch.cuda.get_device_name() if cuda else "cpu"
    log(f"device {dev_name}; torch {torch.__version__}; lit_distill loaded {HOW}")
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
        measure_ceilings()
        gpu_checks()
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
    log(table(rows))
    print(json.dumps({"device": dev_name, "torch": torch.__version__, "rows": rows}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
