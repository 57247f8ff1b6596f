"""Used by tests/test_cache_ddp.py through ``lit-distill predict`` on 2 processes (its ``class_path``)."""

from lit_distill.cache import TeacherCacheWriter


class PrepareFailsOnRankZero(TeacherCacheWriter):
    """A cache writer whose rank-0-only preparation fails, as a full disk would make it."""

    def _prepare(self, *args, **kwargs):
        raise OSError("no space left on device while preparing the teacher cache (injected)")
