"""Gradient accuracy of fused_linear_kd on bf16 inputs against a float64 direct formula, on the CPU.

The errors are relative: ``||g - g64|| / ||g64||`` for the hidden-state and LM-head weight gradients, g64 being the
float64 direct formula (full logits, autograd) on the same bf16 inputs. "bf16 floor" is g64 rounded to bf16, what
any bf16 gradient costs; the target is 2.6e-3 (1.5x that floor). Rows: the default (bf16 logits, as ``h @ W.T``
in bf16 gives them), ``fp32_logits=True`` (fp32 accumulation of the weight gradient follows), and fp32 logits
with a bf16 weight-gradient accumulator over 2, 4 and 8 backward blocks. Rounding is the same on the GPU
(fp32-accumulating matmuls, one rounding per stored result), so the GPU benchmark's errors at 8192 x 128256
come out alike; these sizes run in about a minute on one CPU thread.

    python -m benchmarks.speed.fused_kd_accuracy [--tokens 1024 --vocab 16384]
    python -m benchmarks.speed.fused_kd_accuracy --smoke      # 64 tokens, vocab 512: seconds
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from benchmarks._lib.fused import make_inputs, rel
from benchmarks._lib.trainers import parse, parser, print_json
from lit_distill.losses import functional as LF
from lit_distill.losses.fused import fused_linear_kd


def main(argv: Sequence[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--hidden", default="256,512", help="student,teacher hidden sizes")
    args = parse(ap, argv, tokens=64, vocab=512, hidden="32,48")
    n, vocab = args.tokens, args.vocab
    h_s, h_t = (int(x) for x in args.hidden.split(","))
    hs, ws, ht, wt, _ = (t.detach() for t in make_inputs(n, h_s, h_t, vocab, "cpu"))  # the GPU benchmark's inputs
    rows = {"default (bf16 logits)": {}, "fp32 logits": {"fp32_logits": True}}
    for blocks in (2, 4, 8):
        rows[f"fp32 logits, bf16 accumulation, {blocks} blocks"] = {
            "fp32_logits": True, "fp32_accumulation": False, "chunk_size": -(-n // blocks)}  # fmt: skip
    start, results = time.time(), []
    print(f"N={n} H={h_s}/{h_t} V={vocab}, bf16 inputs, cpu x{torch.get_num_threads()} threads")
    print("| divergence | variant | err h | err W | err h / floor | err W / floor |")
    print("|---|---|---:|---:|---:|---:|")
    for divergence in ("forward_kl", "reverse_kl", "jsd", "tvd"):
        h64, w64 = hs.double().requires_grad_(), ws.double().requires_grad_()
        LF.divergence(divergence, h64 @ w64.T, ht.double() @ wt.double().T, beta=0.5).backward()
        floor = (rel(h64.grad.to(torch.bfloat16), h64.grad), rel(w64.grad.to(torch.bfloat16), w64.grad))
        print(f"| {divergence} | bf16 floor | {floor[0]:.1e} | {floor[1]:.1e} | 1.00 | 1.00 |")
        for name, kw in rows.items():
            h, w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
            fused_linear_kd(h, w, ht, wt, divergence=divergence, beta=0.5, impl="torch", **kw).backward()
            err = (rel(h.grad, h64.grad), rel(w.grad, w64.grad))
            results.append({"divergence": divergence, "variant": name, "err_h": err[0], "err_w": err[1],
                            "floor_h": floor[0], "floor_w": floor[1]})  # fmt: skip
            print(f"| {divergence} | {name} | {err[0]:.1e} | {err[1]:.1e} | {err[0] / floor[0]:.2f} | "
                  f"{err[1] / floor[1]:.2f} |")  # fmt: skip
    print(f"{time.time() - start:.0f} s")
    print_json({"tokens": n, "vocab": vocab, "hidden": [h_s, h_t], "rows": results})


if __name__ == "__main__":
    main()
