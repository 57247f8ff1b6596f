"""Cross-tokenizer KD at LLM widths: time and memory of AlignedSpanKD and ULD against same-tokenizer fused KL.

A Llama-3-8B-shaped teacher head (hidden 4096, vocabulary 128256) and a Qwen2.5-1.5B-shaped student head (hidden
1536, vocabulary 151936), bf16, 8192 student tokens (4 rows of 2048) whose text a second, synthetic tokenization
covers for the teacher (words split independently on both sides, so about half of the positions align). A synthetic
vocabulary map pairs 60% of the teacher's tokens with student tokens. Each case is the whole strategy (alignment,
gathers, the chunked loss from hidden states and LM heads) forward and backward; the baseline is
``fused_linear_kd`` (forward KL, the same-tokenizer fused loss) on the same 8192 tokens with the student's
vocabulary on both sides, and "aligned rows only" the chunked loss alone on every token as if all were aligned.

Reported per case: median milliseconds (CUDA events), ratio to the baseline, peak memory beyond the inputs (GiB;
gradients included), and the largest float32 tensor any op created during one step (must stay far below
``[tokens, vocab]``). A float64 check on 256 aligned rows gives the relative error of the loss and gradients.

    python -m benchmarks.speed.cross_tokenizer --out benchmarks/results/cross_tokenizer_gpu   # one GPU, ~3 min
    python -m benchmarks.speed.cross_tokenizer --smoke                                        # CPU, small widths
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks._lib.timing import median_ms, peak_extra_gib
from benchmarks._lib.trainers import parse, parser, print_json
from lit_distill.losses import ULD, AlignedSpanKD
from lit_distill.losses.functional import aligned_pairs, span_kd_terms
from lit_distill.losses.fused import fused_linear_kd, fused_span_kd
from lit_distill.losses.vocab_map import VocabMap
from lit_distill.outputs import ModelOutput

FULL = {"rows": 4, "tokens": 2048, "hs": 1536, "ht": 4096, "vs": 151936, "vt": 128256}
SMOKE = {"rows": 2, "tokens": 96, "hs": 32, "ht": 48, "vs": 900, "vt": 700}


def parse_args(argv: Sequence[str] | None):
    p = parser(__doc__)
    p.add_argument("--out", default=None, help="folder for the raw results (results.json, table.md)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--matched", type=float, default=0.6, help="share of teacher tokens with a student twin")
    p.add_argument("--top-k", type=int, default=1024, help="uld_top_k of the top-k cases")
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (None: the loss's memory budget)")
    return parse(p, argv, reps=1, top_k=16, chunk_size=16)


class LargestFloat32(TorchDispatchMode):
    """The element count of the largest float32 tensor any op returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.most = max(self.most, t.numel())
        return out


def tokenization(n_bytes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tokenizations of one text of ``n_bytes``: words of 2-9 bytes, each split into 1-3 pieces per side."""
    word_ends = torch.cumsum(torch.randint(2, 10, (n_bytes,), generator=gen), 0)
    word_ends = word_ends[word_ends < n_bytes].tolist() + [n_bytes]
    sides = []
    for _ in range(2):
        ends, start = [], 0
        for end in word_ends:
            cuts = sorted(set(torch.randint(start + 1, end + 1, (int(torch.randint(0, 3, (1,), generator=gen)),),
                                            generator=gen).tolist()) | {end})  # fmt: skip
            ends += cuts
            start = end
        spans = torch.tensor([[a, b] for a, b in zip([0, *ends[:-1]], ends)])
        sides.append(spans)
    return sides[0], sides[1]


def batch(shape: dict, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A two-sided batch: ``rows`` rows of exactly ``tokens`` student tokens, the teacher's tokens of the same text."""
    gen = torch.Generator().manual_seed(seed)
    rows = [tokenization(shape["tokens"] * 6, gen) for _ in range(shape["rows"])]
    s = torch.stack([r[0][: shape["tokens"]] for r in rows])
    t_rows = [r[1][r[1][:, 1] <= int(s[i, -1, 1])] for i, r in enumerate(rows)]
    width = max(len(t) for t in t_rows)
    t = torch.zeros(len(rows), width, 2, dtype=torch.long)
    t_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, spans in enumerate(t_rows):
        t[i, : len(spans)], t_mask[i, : len(spans)] = spans, 1
    ids = torch.randint(0, shape["vs"], s.shape[:2], generator=gen)
    t_ids = torch.randint(0, shape["vt"], t.shape[:2], generator=gen)
    out = {"input_ids": ids, "labels": ids, "offsets": s, "attention_mask": torch.ones_like(ids)}
    out |= {"teacher_input_ids": t_ids, "teacher_labels": t_ids.masked_fill(t_mask == 0, -100)}
    out |= {"teacher_offsets": t, "teacher_attention_mask": t_mask}
    return {k: v.to(device) for k, v in out.items()}


def vocab_map(shape: dict, matched: float, seed: int = 0) -> VocabMap:
    """``matched`` of the teacher's tokens paired one to one with random student tokens."""
    gen = torch.Generator().manual_seed(seed)
    pairs = int(matched * shape["vt"])
    s_ids, t_ids = (
        torch.randperm(shape["vs"], generator=gen)[:pairs],
        torch.randperm(shape["vt"], generator=gen)[:pairs],
    )
    s, t = torch.full((shape["vs"],), -1), torch.full((shape["vt"],), -1)
    s[s_ids], t[t_ids] = torch.arange(pairs), torch.arange(pairs)
    return VocabMap(s, t, pairs)


def heads(shape: dict, device: torch.device, gen_seed: int = 0):
    g = torch.Generator().manual_seed(gen_seed)

    def rnd(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device, torch.bfloat16)

    s_head = torch.nn.Linear(shape["hs"], shape["vs"], bias=False, device=device, dtype=torch.bfloat16)
    t_head = torch.nn.Linear(shape["ht"], shape["vt"], bias=False, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        s_head.weight.copy_(rnd(shape["vs"], shape["hs"], scale=2 / math.sqrt(shape["hs"])))
        t_head.weight.copy_(rnd(shape["vt"], shape["ht"], scale=2 / math.sqrt(shape["ht"])))
    t_head.weight.requires_grad_(False)
    n = shape["rows"] * shape["tokens"]
    hs = rnd(shape["rows"], shape["tokens"], shape["hs"]).requires_grad_()
    ht = rnd(shape["rows"], n // shape["rows"] * 2, shape["ht"])  # room for the teacher's (longer) side
    return hs, s_head, ht, t_head


def cases(args, shape, data, hs, s_head, ht, t_head, vocab: VocabMap):
    """``{name: step}``: each step runs one forward and backward and returns nothing."""
    t_len = data["teacher_input_ids"].shape[1]
    student = ModelOutput(hidden=hs, head=s_head)
    teacher = ModelOutput(hidden=ht[:, :t_len], head=t_head)
    out = {}
    for name, loss in (
        ("span_kd exact", AlignedSpanKD(match="token", chunk_size=args.chunk_size)),
        (f"span_kd top-{args.top_k}", AlignedSpanKD(match="token", uld_top_k=args.top_k, chunk_size=args.chunk_size)),
        ("uld exact", ULD(lm_weight=0.0, chunk_size=args.chunk_size)),
        (f"uld top-{args.top_k}", ULD(lm_weight=0.0, uld_top_k=args.top_k, chunk_size=args.chunk_size)),
    ):
        loss.use_vocab_map(vocab)
        out[name] = lambda loss=loss: _backward(loss(student, teacher, data))
    flat_s, flat_t = hs.reshape(-1, shape["hs"]), ht[:, : shape["tokens"]].reshape(-1, shape["ht"])
    classes = (vocab.student.to(hs.device), vocab.teacher.to(hs.device))
    out["aligned rows only (span_kd exact)"] = lambda: fused_span_kd(
        flat_s, s_head.weight, flat_t, t_head.weight, *classes, chunk_size=args.chunk_size
    ).loss.backward()
    same_vocab = torch.nn.Linear(shape["ht"], shape["vs"], bias=False, device=hs.device, dtype=torch.bfloat16)
    same_vocab.weight.requires_grad_(False)
    out["baseline: fused_linear_kd forward KL"] = lambda: fused_linear_kd(
        flat_s, s_head.weight, flat_t, same_vocab.weight, divergence="forward_kl"
    ).backward()
    return out


def _backward(terms) -> None:
    total = sum(terms.values()) if isinstance(terms, dict) else terms
    total.backward()


def accuracy(shape, classes, hs, s_head, ht, t_head, rows: int = 256) -> dict[str, float]:
    """Relative error of the fused loss and student gradients against float64 span_kd on ``rows`` rows."""
    rows = min(rows, shape["rows"] * shape["tokens"])
    h, t = hs.detach().reshape(-1, shape["hs"])[:rows].clone().requires_grad_(), ht.reshape(-1, shape["ht"])[:rows]
    w = s_head.weight.detach().clone().requires_grad_()
    fused_span_kd(h, w, t, t_head.weight, *classes).loss.backward()
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    kl, w1 = span_kd_terms(h64 @ w64.T, t.double() @ t_head.weight.double().T, *classes)
    (kl + w1).backward()
    ref = (kl + w1).item()
    return {
        "loss": abs(float(fused_span_kd(h, w, t, t_head.weight, *classes).loss) - ref) / abs(ref),
        "grad_h": float((h.grad.double() - h64.grad).norm() / h64.grad.norm()),
        "grad_w": float((w.grad.double() - w64.grad).norm() / w64.grad.norm()),
    }


def phases(shape, classes, hs, s_head, ht, t_head, top_k: int, rows: int, reps: int) -> dict[str, float]:
    """Milliseconds of each piece of one chunk of ``rows`` aligned rows at these widths, timed alone: where the
    chunked loss spends its time."""
    h, t = hs.detach().reshape(-1, shape["hs"])[:rows], ht.reshape(-1, shape["ht"])[:rows]
    ws, wt = s_head.weight.detach(), t_head.weight
    zs, zt = (h @ ws.T).float(), (t @ wt.T).float()
    p_s, p_t = zs.softmax(-1), zt.softmax(-1)
    s_cls, t_cls = classes
    n = int(max(s_cls.max(), t_cls.max())) + 1
    s_b, t_b = torch.where(s_cls < 0, n, s_cls), torch.where(t_cls < 0, n, t_cls)
    s_free, t_free = (s_cls < 0).nonzero().flatten(), (t_cls < 0).nonzero().flatten()
    a, b = p_s[:, s_free], p_t[:, t_free]
    g = torch.randn_like(zs).to(ws.dtype)
    work = {
        "student logits (matmul)": lambda: h @ ws.T,
        "teacher logits (matmul)": lambda: t @ wt.T,
        "softmax, both sides": lambda: (zs.softmax(-1), zt.softmax(-1)),
        "class sums (index_add, both)": lambda: (
            p_s.new_zeros(rows, n + 1).index_add_(1, s_b, p_s),
            p_t.new_zeros(rows, n + 1).index_add_(1, t_b, p_t),
        ),
        "unmatched gather, both": lambda: (p_s.index_select(1, s_free), p_t.index_select(1, t_free)),
        "sort unmatched, both": lambda: (a.sort(-1, descending=True), b.sort(-1, descending=True)),
        f"top-{top_k} unmatched, both": lambda: (a.topk(min(top_k, a.shape[1])), b.topk(min(top_k, b.shape[1]))),
        "backward matmuls (dL/dh, dL/dW)": lambda: (g @ ws, g.T @ h),
    }
    return {name: median_ms(fn, reps, warmup=1) for name, fn in work.items()}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    shape = SMOKE if args.smoke else FULL
    data = batch(shape, device)
    hs, s_head, ht, t_head = heads(shape, device)
    vocab = vocab_map(shape, args.matched)
    classes = (vocab.student.to(device), vocab.teacher.to(device))
    n = shape["rows"] * shape["tokens"]
    steps = cases(args, shape, data, hs, s_head, ht, t_head, vocab)
    clear = lambda: setattr(hs, "grad", None) or setattr(s_head.weight, "grad", None)  # noqa: E731
    rows, base = [], None
    for name, step in steps.items():
        clear()
        watch = LargestFloat32()
        with watch:
            step()
        clear()
        memory = peak_extra_gib(step)
        clear()
        ms = median_ms(step, args.reps, warmup=1, before=clear)
        base = ms if name.startswith("baseline") else base
        rows.append({"case": name, "ms": ms, "peak_extra_gib": memory, "largest_fp32_elements": watch.most})
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["x_baseline"] = row["ms"] / base
        row["largest_fp32_vs_tokens_x_vocab"] = row["largest_fp32_elements"] / (n * min(shape["vs"], shape["vt"]))
    pairs = aligned_pairs(data["offsets"], data["teacher_offsets"], None, data["teacher_attention_mask"])[0].numel()
    t_tokens = int(data["teacher_attention_mask"].sum())
    check = accuracy(shape, classes, hs, s_head, ht, t_head)
    chunk = min(256, n)
    parts = phases(shape, classes, hs, s_head, ht, t_head, args.top_k, chunk, args.reps)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    lines = [
        f"{device_name}; {n} student tokens ({shape['rows']} x {shape['tokens']}), {t_tokens} teacher tokens, {pairs} "
        f"aligned pairs; student "
        f"hidden {shape['hs']} vocab {shape['vs']}, teacher hidden {shape['ht']} vocab {shape['vt']}; bf16; "
        f"{args.matched:.0%} of teacher tokens matched; median of {args.reps}",
        "",
        "| case | ms | x baseline | peak extra GiB | largest fp32 tensor / (tokens x vocab) |",
        "|---|---|---|---|---|",
        *(
            f"| {r['case']} | {r['ms']:.1f} | {r['x_baseline']:.2f} | {r['peak_extra_gib']:.2f} | "
            f"{r['largest_fp32_vs_tokens_x_vocab']:.4f} |"
            for r in rows
        ),  # fmt: skip
        "",
        f"float64 check on 256 aligned rows (span_kd exact): relative error {check}",
        "",
        f"one chunk of {chunk} rows, each piece alone (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()),
    ]
    print("\n".join(lines))
    result = {"shape": shape, "device": device_name, "rows": rows, "accuracy": check, "phases_ms": parts}
    result["args"] = vars(args)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "results.json").write_text(json.dumps(result, indent=2))
        Path(args.out, "table.md").write_text("\n".join(lines) + "\n")
    print_json(result)


if __name__ == "__main__":
    main()
