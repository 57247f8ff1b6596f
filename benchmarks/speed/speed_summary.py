"""The short table at the end of ``benchmarks/run_speed_gpu.sh``: each speed target of the fused loss, the training
step and the top-k teacher cache next to what the run measured, read from the raw outputs in a folder
(``fused.txt``, ``step_overhead.txt``, ``teacher_cache.txt``: each benchmark's printed output).

    python -m benchmarks.speed.speed_summary OUT_DIR
    python -m benchmarks.speed.speed_summary --smoke      # the working directory; what is missing says so
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from benchmarks._lib.trainers import parse, parser


def last_json(path: Path) -> dict | None:
    """The last line of ``path`` that parses as a JSON object (every benchmark prints one last), else None."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def rows_of(out: Path, name: str, rows_file: str) -> tuple[list[dict], str]:
    """Rows from the finished run's JSON line, or from the rows file a cut-short run left."""
    found = last_json(out / f"{name}.txt")
    if found is not None:
        return found.get("rows", []), found.get("device", "?")
    partial = out / rows_file
    if partial.is_file():
        return json.loads(partial.read_text()), "? (run cut short: partial rows)"
    return [], "missing"


def fused_lines(out: Path) -> list[str]:
    rows, device = rows_of(out, "fused", "fused_kd_variants_rows.json")
    lines = [f"fused LM-head KD ({device}); targets: <= 1.10x floor, <= 1.0 GiB, grad err h and W <= 2.6e-3"]
    lines.append("| shape | divergence | variant | x floor | peak GiB | err h | err W |")
    lines.append("|---|---|---|---:|---:|---:|---:|")
    best: dict[tuple[str, str], dict] = {}
    for r in rows:
        if "x_floor" not in r or r["variant"] == "matmul floor" or "err_w" not in r:
            continue
        key = (r["shape"].split()[0], r["divergence"])
        if r["variant"] in ("default", "fp32 logits"):
            peak = r.get("peak_gib")
            peak_s = "–" if peak is None or peak != peak else f"{peak:.2f}"
            lines.append(f"| {key[0]} | {key[1]} | {r['variant']} | {r['x_floor']:.3f} | {peak_s} | "
                         f"{r['err_h']:.1e} | {r['err_w']:.1e} |")  # fmt: skip
        if r["x_floor"] < best.get(key, {"x_floor": float("inf")})["x_floor"]:
            best[key] = r
    lines += [f"fastest of all variants, {k[0]} {k[1]}: {v['variant']} {v['x_floor']:.3f}x" for k, v in best.items()]
    return lines


def step_lines(out: Path) -> list[str]:
    rows, device = rows_of(out, "step_overhead", "step_overhead_rows.json")
    lines = [f"training step, DistillationModule + Trainer vs hand loop ({device}); targets: tiny GPT <= 1.05 "
             "(stable), resnet <= 1.01, compiled resnet module >= 1.4x the eager hand loop"]  # fmt: skip
    for r in rows:
        if "hand_ms" in r:
            low, high = r.get("ratio_range", [r["ratio"], r["ratio"]])
            lines.append(f"- {r['case'][:44]:<44} {r['compiled'][:40]:<40} module/hand {r['ratio']:.3f} "
                         f"(range {low:.3f}-{high:.3f}), hand {r['hand_ms']:.2f} ms")  # fmt: skip
        else:
            lines.append(f"- {r['case']}: {r['ratio']:.3f}x")
    return lines


def cache_lines(out: Path) -> list[str]:
    found = last_json(out / "teacher_cache.txt")
    lines = ["top-k teacher cache vs live teacher (text-gpu, bf16-mixed, top-32 fp16); target >= 1.8x"]
    if found is None:
        return [*lines, "- missing (see teacher_cache.txt)"]
    for setting, r in found.get("loaders", {}).items():
        lines.append(f"- loader {setting!r}: live {r['live_samples_per_s']:.0f}, cached "
                     f"{r['cached_samples_per_s']:.0f} samples/s: {r['speedup']:.2f}x")  # fmt: skip
    if "teacher_share" in found:
        bound = found.get("cache_limit")
        bound = "n/a (timing noise)" if bound is None else f"~{bound}x"
        lines.append(f"- live teacher forward {found['teacher_forward_ms']:.2f} ms of a {found['live_step_ms']:.2f} ms "
                     f"step ({found['teacher_share']:.0%}): removing it alone {bound}; reader "
                     f"{found['reader_ms_per_batch']:.2f} ms/batch")  # fmt: skip
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("out", nargs="?", default=".", help="the folder of raw outputs")
    out = Path(parse(p, argv).out)
    print("\n".join(["", *fused_lines(out), "", *step_lines(out), "", *cache_lines(out)]))


if __name__ == "__main__":
    main()
