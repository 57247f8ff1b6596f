"""The frozen teacher's weights: loaded and frozen at construction, left out of ``state_dict`` unless asked (it is
reloaded from where it came from), put back from the live teacher on ``load_state_dict``, and kept away from DDP's
gradient machinery."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lit_distill.checks import check_not_shared, check_teacher_weights
from lit_distill.sharding.materialize import WeightSource, has_meta_parameters
from lit_distill.teacher import freeze, load_weights, mark_weights, parse_dtype

TEACHER_PREFIX = "teacher."


def load_teacher(
    teacher: nn.Module | None,
    student: nn.Module,
    checkpoint: str | None = None,
    prefix: str | None = None,
    dtype: str | None = None,
) -> WeightSource | None:
    """Load ``teacher``'s weights from ``checkpoint`` (if given), check it shares nothing with the student, cast it
    to ``dtype`` (if given) and freeze it. ``checkpoint`` without a teacher is an error.

    A teacher built without memory (meta parameters, see :mod:`lit_distill.sharding`) is not loaded here: the
    returned source is read later, shard by shard, once the teacher is placed (``configure_model``).

    Example:
        >>> teacher = nn.Linear(2, 1)
        >>> load_teacher(teacher, nn.Linear(2, 1), dtype="bf16")
        >>> teacher.weight.dtype, teacher.weight.requires_grad, teacher.training
        (torch.bfloat16, False, False)
    """
    if checkpoint is not None and teacher is None:
        raise ValueError("teacher_checkpoint is set but no teacher model is given; add `teacher:`.")
    if teacher is None:
        return None
    deferred = None
    if checkpoint is not None and has_meta_parameters(teacher):
        deferred = WeightSource.matching(checkpoint, teacher, prefix)
        mark_weights(teacher, checkpoint)  # read shard by shard once placed; the teacher does come with weights
    elif checkpoint is not None:
        load_weights(teacher, checkpoint, prefix=prefix)
    check_not_shared(student, teacher)
    target = parse_dtype(dtype)
    if target is not None:
        teacher.to(target)
    freeze(teacher)
    return deferred


def load_student(student: nn.Module, checkpoint: str | None) -> WeightSource | None:
    """Load ``checkpoint`` into the student now, or, when it was built without memory, return the source to read
    once it is placed (``configure_model``)."""
    if checkpoint is None:
        return None
    if has_meta_parameters(student):
        return WeightSource.matching(checkpoint, student)
    load_weights(student, checkpoint)
    return None


def ddp_ignore_list(teacher: nn.Module) -> list[str]:
    """Names DDP should neither all-reduce nor broadcast: every rank loads the same teacher itself.

    Example:
        >>> ddp_ignore_list(nn.Linear(2, 1))
        ['teacher.weight', 'teacher.bias']
    """
    return [TEACHER_PREFIX + k for k in teacher.state_dict()]


class TeacherCheckpointing:
    """Mixin (before ``LightningModule``) for a module with a ``teacher`` submodule and a ``save_teacher`` flag: the
    teacher stays in eval mode, is left out of ``state_dict`` unless ``save_teacher``, is put back on
    ``load_state_dict``, must come with trained weights (``allow_untrained_teacher`` opts out), and a student trained
    here is marked as trained (it may teach another module).

    Example:
        >>> from lightning.pytorch import LightningModule
        >>> class Pair(TeacherCheckpointing, LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.student, self.teacher, self.save_teacher = nn.Linear(2, 1), nn.Linear(2, 1), False
        >>> sorted(Pair().state_dict())
        ['student.bias', 'student.weight']
    """

    teacher: nn.Module | None
    student: nn.Module
    save_teacher: bool

    def train(self, mode: bool = True) -> Any:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # Lightning calls .train() on the whole module every epoch
        return self

    def check_teacher_weights(self) -> None:
        """Refuse a teacher with no trained weights unless ``allow_untrained_teacher``; a checkpoint that stores
        the teacher (``save_teacher``) counts once Lightning has loaded it (``ckpt_path``)."""
        check_teacher_weights(self.teacher, getattr(self, "allow_untrained_teacher", False))

    def on_validation_start(self) -> None:
        self.check_teacher_weights()  # after Lightning restored ckpt_path (a save_teacher checkpoint holds it)

    def on_test_start(self) -> None:
        self.check_teacher_weights()

    def on_train_end(self) -> None:
        if self.trainer.global_step > 0:  # a model trained here may serve as the teacher of another module
            mark_weights(self.student, f"training by {type(self).__name__}")

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        if self.save_teacher:
            return state
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        drop = prefix + TEACHER_PREFIX
        for key in [k for k in state if k.startswith(drop)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        has_teacher = any(k.startswith(TEACHER_PREFIX) for k in state_dict)
        if self.teacher is not None and not has_teacher:
            # The checkpoint left the teacher out; it was already reloaded from its own source.
            state_dict = dict(state_dict)
            state_dict.update({TEACHER_PREFIX + k: v for k, v in self.teacher.state_dict().items()})
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if self.teacher is not None and has_teacher:
            mark_weights(self.teacher, "a checkpoint saved with save_teacher")
        return result
