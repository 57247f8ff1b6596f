"""``lit-distill fit|validate|test|predict --config FILE.yaml``: LightningCLI over DistillationModule."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

import lit_distill
from lit_distill.module import DistillationModule

_PACKAGE_DIR = str(Path(lit_distill.__file__).parent)


class DistillCLI(LightningCLI):
    """LightningCLI whose model is a :class:`DistillationModule` (or a subclass, by ``class_path``)."""

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would rebuild the model config from the checkpoint's hyperparameters. Ours leave out the
        # modules (student, teacher, losses are objects, not values), so that would drop them from the recipe:
        # the recipe stays the source of truth and the checkpoint supplies weights only.
        return None


def _our_error(err: BaseException) -> BaseException | None:
    """The innermost exception in ``err``'s chain raised by lit-distill code (a user-facing error)."""
    found = None
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        tb = err.__traceback__
        last = None
        while tb is not None:
            last = tb.tb_frame.f_code.co_filename
            tb = tb.tb_next
        if (
            last is not None
            and last.startswith(_PACKAGE_DIR)
            and isinstance(err, (ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError, RuntimeError))
        ):
            found = err
        err = err.__cause__ or err.__context__
    return found


def main(args: list[str] | None = None) -> None:
    """Console entry point. Errors raised by lit-distill's own checks print as one clear line
    (set ``LIT_DISTILL_TRACEBACK=1`` for the full traceback)."""
    try:
        DistillCLI(
            DistillationModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
        )
    except Exception as err:
        ours = _our_error(err)
        if ours is None or os.environ.get("LIT_DISTILL_TRACEBACK"):
            raise
        message = ours.args[0] if isinstance(ours, KeyError) and ours.args else ours
        print(f"lit-distill: error: {type(ours).__name__}: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
