"""Offline teacher cache: run the teacher once (``lit-distill predict``), distill from disk afterwards.

* :class:`TeacherCacheWriter` (a callback) writes the cache during ``predict``;
* :class:`~lit_distill.data.CachedTeacherDataModule` attaches the stored outputs to every batch, so
  :class:`~lit_distill.DistillationModule` skips the teacher;
* :class:`CachedTeacher` stands in for the teacher model when it should not even be loaded.

Layout and manifest: :mod:`lit_distill.cache.manifest`. Top-k convention: :mod:`lit_distill.losses.topk`.
"""

from lit_distill.cache.reader import CacheReader
from lit_distill.cache.stand_in import CachedTeacher
from lit_distill.cache.writer import TeacherCacheWriter

__all__ = ["TeacherCacheWriter", "CachedTeacher", "CacheReader"]
