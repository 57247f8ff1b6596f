"""``lit-distill quantize``: post-training quantization (PTQ) of an exported student, with torchao.

    lit-distill quantize lightning_logs/version_0/student --scheme int4_weight_only
    lit-distill quantize lightning_logs/version_0/student.safetensors --config lightning_logs/version_0/config.yaml \\
        --scheme int8_weight_only --out student_int8

The student is a folder from ``ExportPretrained`` (lit-distill GPT or Hugging Face; its ``config.json`` says what
to build) or a safetensors file from ``ExportStudent`` plus the run's config (``model.init_args.student`` says what
to build). The quantized folder reloads with :func:`lit_distill.quantization.load_quantized`. On a student trained
with :class:`~lit_distill.quantization.QuantizationAwareDistillation` of the same scheme and group size, this is
exactly the export that run wrote.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    from lit_distill.quantization.schemes import SCHEMES

    p = argparse.ArgumentParser(prog="lit-distill quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("student", help="ExportPretrained folder, or ExportStudent .safetensors file (with --config)")
    p.add_argument("--scheme", required=True, choices=list(SCHEMES), help="what to quantize to")
    p.add_argument("--group_size", type=int, default=32, help="input features per scale (grouped schemes)")
    p.add_argument("--config", help="the run's config.yaml, for a .safetensors student (its model.init_args.student)")
    p.add_argument("--out", help="output folder (default: <student>_<scheme> beside the student)")
    p.add_argument("--dtype", default="bf16", help="dtype of scales and unquantized parts (default bf16; 'none' keeps)")
    p.add_argument("--quantize_head", action="store_true", help="quantize the LM head too")
    p.add_argument("--skip", nargs="*", default=[], help="module-name patterns left in full precision")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return p


def _student_from_config(config: str) -> Any:
    import yaml

    spec = (yaml.safe_load(Path(config).read_text()) or {}).get("model", {}).get("init_args", {}).get("student")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{config!r} has no model.init_args.student with a class_path; give the run's config.yaml.")
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def load_student(path: str, config: str | None) -> Any:
    """The exported student, in full precision."""
    from lit_distill.export import load_student as load_weights_into

    student = Path(path)
    if student.is_dir():
        from lit_distill.models.hf import load_pretrained

        return load_pretrained(student)
    if not student.is_file():
        raise FileNotFoundError(f"student {path!r} does not exist; give an ExportPretrained folder or a .safetensors.")
    if config is None:
        raise ValueError(f"{path!r} holds weights only; add --config with the run's config.yaml to say what to build.")
    return load_weights_into(_student_from_config(config), student).eval()


def run(args: argparse.Namespace) -> Path:
    from lit_distill.quantization import quantize_model, save_quantized
    from lit_distill.quantization.schemes import get_scheme
    from lit_distill.weights import parse_dtype

    scheme = get_scheme(args.scheme)
    student = load_student(args.student, args.config)
    dtype = None if args.dtype.lower() == "none" else parse_dtype(args.dtype)
    if dtype is not None:
        student.to(dtype)
    layers = quantize_model(student, scheme, args.group_size, args.quantize_head, args.skip)
    out = Path(args.out or f"{str(Path(args.student)).removesuffix('.safetensors')}_{scheme.name}")
    record = {"scheme": scheme.name, "group_size": args.group_size, "layers": layers}
    return save_quantized(student, out, record, overwrite=args.overwrite)


def main(argv: list[str], verbose: bool = False) -> int:
    """Run ``lit-distill quantize``; returns the exit code (errors printed as one line, like every subcommand)."""
    args = parser().parse_args(argv)
    try:
        written = run(args)
    except Exception as err:
        from lit_distill.cli.errors import report

        return report(err, argv, verbose)
    print(f"[lit-distill] {args.scheme} student written to {written}", flush=True)
    return 0
