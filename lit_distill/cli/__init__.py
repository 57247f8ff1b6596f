"""``lit-distill fit|validate|test|predict --config FILE.yaml``: LightningCLI over DistillationModule.

This module stays light: ``lit-distill --help`` is answered from source files (no torch, no Lightning),
and a subcommand imports :mod:`lit_distill.cli.app` only when it runs. Every error is reported as one
line naming the cause (:mod:`lit_distill.cli.errors`); ``-v`` or ``LIT_DISTILL_TRACEBACK=1`` adds the
traceback.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lit_distill.cli.app import DistillCLI

SUBCOMMANDS = ("fit", "validate", "test", "predict")
__all__ = ["main", "DistillCLI"]


def main(args: list[str] | None = None) -> None:
    """Console entry point (``lit-distill``); ``args`` default to ``sys.argv[1:]``.

    Example:
        >>> main(["fit", "--config", "configs/quickstart.yaml", "--loss.logit_kd.temperature", "2"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if args is None else args)
    verbose = bool(os.environ.get("LIT_DISTILL_TRACEBACK")) or any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    if argv[:1] == ["quantize"]:  # post-training quantization has its own small parser: lit_distill/cli/quantize.py
        from lit_distill.cli.quantize import main as quantize

        sys.exit(quantize(argv[1:], verbose))
    subcommand = next((a for a in argv if a in SUBCOMMANDS), None)
    if not argv or any(a in ("-h", "--help") for a in argv):
        from lit_distill.cli.help import short_help

        print(short_help(subcommand))
        return
    if any(a.startswith("--model.help") for a in argv):
        from lit_distill.cli.class_help import class_help, requested_class

        text = class_help(requested_class(argv) or "", subcommand or "fit")
        if text is not None:  # a class of the package's own; another one is jsonargparse's to describe
            print(text)
            return
    argv = ["--help" if a == "--help-full" else a for a in argv]
    argv = _model_for_argument_help(argv)
    # Before Lightning imports huggingface_hub: its setting is read once, at import.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # save_pretrained's "Writing model shards" bar
    from lit_distill.cli.errors import check_config_files, report

    try:
        check_config_files(argv)
        from lit_distill.cli.app import run

        run(argv)
    except Exception as err:
        keys = sys.modules["lit_distill.cli.app"].VALID_KEYS if "lit_distill.cli.app" in sys.modules else []
        sys.exit(report(err, argv, verbose, keys))
    end_process_group()


def _model_for_argument_help(argv: list[str]) -> list[str]:
    """``--model.losses.help CLASS`` with no recipe and no model named asks about DistillationModule's arguments.

    The CLI takes any LightningModule by ``class_path``; the arguments under ``--model.`` exist only once one is
    chosen, so a question about one of them, asked on its own, is asked of the distillation module.
    """
    asks = any(a.startswith("--model.") and ".help" in a.split("=")[0] for a in argv)
    chosen = any(
        a in ("--config", "--model") or a.startswith(("--config=", "--model=", "--model.class_path")) for a in argv
    )
    if not asks or chosen:
        return argv
    at = next((i + 1 for i, a in enumerate(argv) if a in SUBCOMMANDS), 0)
    return [*argv[:at], "--model=lit_distill.DistillationModule", *argv[at:]]


def end_process_group() -> None:
    """After a successful multi-process run, every rank waits for the others, then the process group is torn down.

    Left to interpreter exit, one rank can tear gloo's threads down while another still talks to them: that rank
    then aborts after its work is done, and Lightning's launcher stops the others with SIGTERM.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def __getattr__(name: str):
    if name == "DistillCLI":
        from lit_distill.cli.app import DistillCLI

        return DistillCLI
    raise AttributeError(f"module 'lit_distill.cli' has no attribute {name!r}")
