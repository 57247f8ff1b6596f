"""Shared pieces of the fused LM-head KD benchmarks: inputs, the matmul floor, a float64 reference, tables.

The sweeps and probes call internals of ``lit_distill.losses.fused`` (its spec, launch configuration and
row kernel): they measure those pieces alone.
"""

from __future__ import annotations

import math

import torch

from benchmarks._lib.timing import median_ms
from lit_distill.losses import functional as LF  # noqa: F401 - re-exported for the scripts
from lit_distill.losses import fused as FU  # noqa: F401
from lit_distill.losses.fused import matmul as FM  # noqa: F401
from lit_distill.losses.fused import spec as FS  # noqa: F401
from lit_distill.losses.fused import triton_kernel as FT  # noqa: F401


def log(*args, end: str = "\n") -> None:
    print(*args, end=end, flush=True)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``||a - ref|| / ||ref||`` in float64."""
    return float((a.double() - ref).norm() / ref.norm())


def make_inputs(n: int, hs_dim: int, ht_dim: int, vocab: int, device, seed: int = 0):
    """bf16 ``(h_s, W_s, h_t, W_t, labels)`` with logit standard deviation about 2, as for a trained LM head."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=torch.bfloat16)

    hs = rnd(n, hs_dim).requires_grad_()
    ws = rnd(vocab, hs_dim, scale=2 / math.sqrt(hs_dim)).requires_grad_()
    ht = rnd(n, ht_dim)
    wt = rnd(vocab, ht_dim, scale=2 / math.sqrt(ht_dim))
    labels = torch.arange(n, device=device) % vocab
    return hs, ws, ht, wt, labels


def reference(hs, ws, ht, wt, divergence: str = "jsd", chunk: int = 512):
    """``(loss, dL/dh_s, dL/dW_s)`` of the float64 direct formula on the same (bf16) inputs; chunked only to bound
    memory."""
    h64, w64 = hs.detach().double().requires_grad_(), ws.detach().double().requires_grad_()
    ht64, wt64 = ht.double(), wt.double()
    n, total = hs.shape[0], 0.0
    for s in range(0, n, chunk):
        zs = h64[s : s + chunk] @ w64.T
        with torch.no_grad():
            zt = ht64[s : s + chunk] @ wt64.T
        loss = LF.divergence(divergence, zs, zt, beta=0.5) * (zs.shape[0] / n)
        loss.backward()
        total += float(loss.detach())
        del zs, zt, loss
    return total, h64.grad, w64.grad


def floor_fn(hs, ws, ht, wt):
    """The four matmuls alone, full token range, bf16 (what any method must at least do): ``(step, buffers)``."""
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


def profile_ours(hs, ws, ht, wt, labels=None, divergence: str = "jsd", **kw) -> None:
    """GPU time per kernel of one forward+backward of ``fused_linear_kd`` (after one untimed call)."""
    from torch.profiler import ProfilerActivity, profile

    def step():
        FU.fused_linear_kd(hs, ws, ht, wt, divergence=divergence, beta=0.5, labels=labels, **kw).backward()

    step()
    hs.grad = ws.grad = None
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    hs.grad = ws.grad = None
    log(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))


def kernel_spec(divergence: str, rows: int, fp32_logits: bool = False, fp32_accumulation: bool = False):
    """The fused loss's internal spec for its row kernel on one chunk of ``rows`` rows (beta 0.5, T=1, no CE)."""
    cfg = FS._Config(
        divergence=divergence, beta=0.5, temperature=1.0, ce_weight=0.0, chunk_size=None, grad_chunk_size=None,
        fp32_accumulation=fp32_accumulation, fp32_logits=fp32_logits, overlap=False, impl="triton",
        need=(True, True, False),
    )  # fmt: skip
    return FS._Spec.of(cfg, 1.0 / rows)


def cell(r: dict, key: str, fmt: str) -> str:
    """``r[key]`` formatted for a Markdown table; a missing or NaN value is a dash."""
    v = r.get(key)
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def table(rows: list[dict], labels: tuple[str, ...]) -> str:
    """A Markdown table of result rows: the ``labels`` columns, then ms, x floor, peak extra GiB and the gradient
    errors (a row with ``error`` shows it in the ms column)."""
    numbers = (("ms", ".2f"), ("x_floor", ".3f"), ("peak_gib", ".2f"), ("err_h", ".1e"), ("err_w", ".1e"))
    head = " | ".join(labels) + " | fwd+bwd ms | × floor | peak extra GiB | grad err h | grad err W |"
    lines = ["| " + head, "|" + "---|" * len(labels) + "---:|" * len(numbers)]
    for r in rows:
        first = " | ".join(str(r[k]) for k in labels)
        rest = [r["error"], "", "", "", ""] if "error" in r else [cell(r, k, f) for k, f in numbers]
        lines.append(f"| {first} | " + " | ".join(rest) + " |")
    return "\n".join(lines)


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


def measure_ceilings():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), 10, 2)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms_mm = median_ms(lambda: a @ a, 10, 3)
    log(f"ceilings: device copy {2 * x.numel() / ms / 1e6:.0f} GB/s (read+write), ", end="")
    log(f"bf16 8192^3 matmul {2 * 8192**3 / ms_mm / 1e9:.0f} TFLOP/s")
