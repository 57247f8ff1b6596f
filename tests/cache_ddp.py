"""Used by tests/test_cache_ddp.py through ``lit-distill predict`` on 2 processes (its ``class_path``)."""

from pathlib import Path

from lit_distill.cache import TeacherCacheWriter


class PrepareFailsOnRankZero(TeacherCacheWriter):
    """A cache writer whose rank-0-only preparation fails, as a full disk would make it. Each rank notes the error
    it stopped with in ``failed-rank<N>.txt`` in the working directory (the CLI prints a shared error once)."""

    def _prepare(self, *args, **kwargs):
        raise OSError("no space left on device while preparing the teacher cache (injected)")

    def on_exception(self, trainer, pl_module, exception):
        Path(f"failed-rank{trainer.global_rank}.txt").write_text(f"{type(exception).__name__}: {exception}")
        super().on_exception(trainer, pl_module, exception)
